package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// serve starts a test upstream whose /chat/completions runs h.
func serve(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tr := NewTransport(time.Second)
	t.Cleanup(tr.CloseIdleConnections)
	return &Client{HTTP: NewHTTPClient(tr), BaseURL: srv.URL + "/v1", APIKey: "sk-secret-key"}
}

// open opens the stream of a one-prompt request on c, closed when the test ends.
func open(t *testing.T, c *Client) *Stream {
	t.Helper()
	req, _ := FromPrompt("hi", "m")
	s, err := c.Open(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// wantBadGateway checks that opening a one-prompt request on c fails with a
// 502 whose message holds want.
func wantBadGateway(t *testing.T, c *Client, want string) {
	t.Helper()
	req, _ := FromPrompt("hi", "m")
	_, err := c.Open(context.Background(), req)
	var e *chunk.Error
	if !errors.As(err, &e) || e.Status != http.StatusBadGateway || !strings.Contains(e.Message, want) {
		t.Fatalf("Open = %v, want a 502 saying %q", err, want)
	}
}

func TestOpenSendsRequest(t *testing.T) {
	var got *http.Request
	var body string
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got = r
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: [DONE]\n\n")
	})
	c.Header = http.Header{"Openai-Organization": {"org-1"}}
	req, _ := FromPrompt("hi", "m")
	s, err := c.Open(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ch chunk.Chunk
	if err := s.Next(&ch); err != io.EOF {
		t.Fatalf("Next = %v, want EOF at [DONE]", err)
	}
	if got.URL.Path != "/v1/chat/completions" || got.Method != http.MethodPost {
		t.Errorf("request %s %s", got.Method, got.URL.Path)
	}
	if got.Header.Get("Authorization") != "Bearer sk-secret-key" || got.Header.Get("OpenAI-Organization") != "org-1" ||
		got.Header.Get("Accept") != "text/event-stream" || got.Header.Get("Accept-Encoding") != "" {
		t.Errorf("headers %v", got.Header)
	}
	if body != string(req.Body) {
		t.Errorf("body %s", body)
	}
}

func TestOpenStatusMapping(t *testing.T) {
	tests := []struct {
		status     int
		body       string
		wantStatus int
		wantType   string
		wantMsg    string
	}{
		{400, `{"error":{"message":"bad temperature","type":"invalid_request_error"}}`, 400, "invalid_request_error", "bad temperature"},
		{404, `{"error":{"message":"model nope does not exist","type":"invalid_request_error","code":"model_not_found"}}`, 404, "invalid_request_error", "model nope does not exist"},
		{422, `not json`, 422, "invalid_request_error", "upstream refused the request (status 422)"},
		{429, `{"error":{"message":"slow down","type":"requests"}}`, 429, "requests", "slow down"},
		{429, ``, 429, "rate_limit_exceeded", "upstream rate limit reached"},
		{401, `{"error":{"message":"Incorrect API key provided: sk-secret-key"}}`, 502, "upstream_error", "upstream rejected the server's credentials (status 401)"},
		{403, ``, 502, "upstream_error", "upstream rejected the server's credentials (status 403)"},
		{500, `{"error":{"message":"internal"}}`, 502, "upstream_error", "upstream failed (status 500)"},
		{503, ``, 502, "upstream_error", "upstream failed (status 503)"},
		{400, `{"error":{"message":"your key sk-secret-key is odd"}}`, 400, "invalid_request_error", "your key [redacted] is odd"},
	}
	for _, tt := range tests {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(tt.status)
			io.WriteString(w, tt.body)
		})
		req, _ := FromPrompt("hi", "")
		_, err := c.Open(context.Background(), req)
		var e *chunk.Error
		if !errors.As(err, &e) {
			t.Fatalf("%d: err %v", tt.status, err)
		}
		if e.Status != tt.wantStatus || e.Type != tt.wantType || e.Message != tt.wantMsg {
			t.Errorf("%d %s: got %d %q %q", tt.status, tt.body, e.Status, e.Type, e.Message)
		}
		if (tt.status == 429) != (e.RetryAfter == "7") {
			t.Errorf("%d: Retry-After %q", tt.status, e.RetryAfter)
		}
		if strings.Contains(string(e.MarshalBody()), "sk-secret-key") {
			t.Errorf("%d: key leaked: %s", tt.status, e.MarshalBody())
		}
	}
}

func TestOpenUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c := &Client{HTTP: http.DefaultClient, BaseURL: url}
	req, _ := FromPrompt("hi", "")
	_, err := c.Open(context.Background(), req)
	var e *chunk.Error
	if !errors.As(err, &e) || e.Status != http.StatusBadGateway || strings.Contains(e.Message, "127.0.0.1") {
		t.Errorf("got %v (status %d)", err, e.Status)
	}
}

func TestFirstChunkTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	c.FirstChunk = 50 * time.Millisecond
	req, _ := FromPrompt("hi", "")
	_, err := c.Open(context.Background(), req)
	var e *chunk.Error
	if !errors.As(err, &e) || e.Status != http.StatusGatewayTimeout || e.Type != chunk.TypeTimeout {
		t.Fatalf("headers never came: got %v", err)
	}

	// Headers but no chunk: the timer still runs and ends the stream.
	c2 := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		io.WriteString(w, ": comments do not count\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	c2.FirstChunk = 50 * time.Millisecond
	s, err := c2.Open(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ch chunk.Chunk
	if err := s.Next(&ch); !errors.Is(err, ErrFirstChunkTimeout) {
		t.Fatalf("got %v, want ErrFirstChunkTimeout", err)
	}
}

func TestIdleTimeoutResetByActivity(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"a"}}]}`+"\n\n")
		f.Flush()
		// Keepalive comments every 20ms for 150ms keep an idle limit of
		// 80ms from firing; then silence.
		for i := 0; i < 7; i++ {
			time.Sleep(20 * time.Millisecond)
			io.WriteString(w, ": ping\n\n")
			f.Flush()
		}
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"b"}}]}`+"\n\n")
		f.Flush()
		<-r.Context().Done()
	})
	c.Idle = 80 * time.Millisecond
	req, _ := FromPrompt("hi", "")
	s, err := c.Open(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ch chunk.Chunk
	for _, want := range []string{`"a"`, `"b"`} {
		if err := s.Next(&ch); err != nil || string(ch.Content) != want {
			t.Fatalf("Next = %v %s, want %s", err, ch.Content, want)
		}
	}
	if err := s.Next(&ch); !errors.Is(err, ErrIdleTimeout) {
		t.Fatalf("got %v, want ErrIdleTimeout", err)
	}
}

func TestStreamEnds(t *testing.T) {
	const a = `data: {"choices":[{"index":0,"delta":{"content":"a"}}]}` + "\n\n"
	const fin = `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n"
	tests := []struct {
		name, ct, body string
		want           []string // contents, then the final error text ("EOF" for a proper end)
	}{
		{"done", "text/event-stream", a + fin + "data: [DONE]\n\n", []string{`"a"`, ``, "EOF"}},
		{"finish without done", "text/event-stream", a + fin, []string{`"a"`, ``, "EOF"}},
		{"cut short", "text/event-stream", a, []string{`"a"`, "unexpected EOF"}},
		{"cut mid event", "text/event-stream", a + `data: {"cho`, []string{`"a"`, "unexpected EOF"}},
		{"error event", "text/event-stream", a + `data: {"error":{"message":"overloaded","type":"server_error"}}` + "\n\n", []string{`"a"`, "server_error: overloaded"}},
		{"garbage", "text/event-stream", a + "data: {not json\n\n", []string{`"a"`, "decoding upstream chunk"}},
		{"plain json", "application/json; charset=utf-8", `{"choices":[{"index":0,"message":{"content":"whole"},"finish_reason":"stop"}]}`, []string{`"whole"`, "EOF"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ct)
				io.WriteString(w, tt.body)
			})
			req, _ := FromPrompt("hi", "")
			s, err := c.Open(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var ch chunk.Chunk
			for i, want := range tt.want {
				err := s.Next(&ch)
				if i == len(tt.want)-1 {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("end = %v, want %q", err, want)
					}
					if (want == "EOF") != (err == io.EOF) {
						t.Fatalf("end = %v: proper end and failure confused", err)
					}
					return
				}
				if err != nil || string(ch.Content) != want {
					t.Fatalf("chunk %d = %v %s, want %s", i, err, ch.Content, want)
				}
			}
		})
	}
}

func TestClientLeavingCancelsUpstream(t *testing.T) {
	gone := make(chan struct{})
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(gone)
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := FromPrompt("hi", "")
	s, err := c.Open(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cancel()
	var ch chunk.Chunk
	if err := s.Next(&ch); err == nil || err == io.EOF {
		t.Fatalf("Next after cancel = %v", err)
	}
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("upstream never saw the client leave")
	}
}

// TestOpenRefusesWrongAnswers checks the answers that come with a 200 but
// are no stream: a web page, and a JSON error body. Both get a status of
// their own before the client has been sent anything, the key redacted.
func TestOpenRefusesWrongAnswers(t *testing.T) {
	tests := []struct {
		name, ctype, body, want string
	}{
		{"web page", "text/html; charset=utf-8", "<!doctype html><title>My app</title>", "web page (text/html)"},
		{"error body", "application/json", `{"error":{"message":"bad key sk-secret-key","type":"auth"}}`, "bad key [redacted]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ctype)
				io.WriteString(w, tt.body)
			})
			wantBadGateway(t, c, tt.want)
		})
	}

	// A whole JSON reply to a stream request is still read as one chunk.
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"choices":[{"index":0,"message":{"content":"whole"},"finish_reason":"stop"}]}`)
	})
	s := open(t, c)
	var ch chunk.Chunk
	if err := s.Next(&ch); err != nil || string(ch.Content) != `"whole"` {
		t.Fatalf("Next = %v, content %s", err, ch.Content)
	}
	if err := s.Next(&ch); err != io.EOF {
		t.Fatalf("second Next = %v, want EOF", err)
	}
}

// TestStreamErrorRedactsKey checks that an error event quoting the server's
// key does not carry it on.
func TestStreamErrorRedactsKey(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"error":{"message":"key sk-secret-key is over quota"}}`+"\n\n")
	})
	s := open(t, c)
	var ch chunk.Chunk
	var e *chunk.Error
	if err := s.Next(&ch); !errors.As(err, &e) || strings.Contains(e.Message, "sk-secret") || !strings.Contains(e.Message, "[redacted]") {
		t.Fatalf("Next = %v, want the error with the key redacted", err)
	}
}

// TestRedirectIsNotFollowed checks that an upstream's redirect sends
// neither the request nor the key anywhere else, and tells the client the
// base URL is wrong.
func TestRedirectIsNotFollowed(t *testing.T) {
	hit := make(chan string, 1)
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hit <- r.Header.Get("Authorization")
	}))
	defer elsewhere.Close()
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/v1/chat/completions", http.StatusTemporaryRedirect)
	})
	wantBadGateway(t, c, "redirect")
	select {
	case auth := <-hit:
		t.Fatalf("the redirect was followed (Authorization %q)", auth)
	default:
	}
}

// TestErrorTypedEvent checks that an event of type "error" fails the stream
// whatever its data holds, instead of passing as an empty chunk.
func TestErrorTypedEvent(t *testing.T) {
	for data, want := range map[string]string{
		`{"message":"overloaded"}`:                         "overloaded",
		`{"type":"error","error":{"message":"slow down"}}`: "slow down",
		`not json`: "upstream reported an error",
	} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"a"}}]}`+"\n\n")
			io.WriteString(w, "event: error\ndata: "+data+"\n\n")
		})
		s := open(t, c)
		var ch chunk.Chunk
		if err := s.Next(&ch); err != nil {
			t.Fatal(err)
		}
		var e *chunk.Error
		if err := s.Next(&ch); !errors.As(err, &e) || e.Message != want {
			t.Errorf("data %s: Next = %v, want an error %q", data, err, want)
		}
	}
}

// The health check and Open build their requests in one place: header_up
// never replaces the key, and a failure keeps its cause without the URL's
// query.
func TestCheckSendsTheSameHeaders(t *testing.T) {
	var got http.Header
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.Header
		if r.URL.Path != "/v1/models" {
			w.WriteHeader(http.StatusNotFound)
		}
	})
	c.Header = http.Header{"Authorization": {"Bearer not-the-key"}, "Openai-Organization": {"org-1"}}
	if err := c.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got.Get("Authorization") != "Bearer sk-secret-key" || got.Get("OpenAI-Organization") != "org-1" {
		t.Errorf("health check headers %v", got)
	}

	down := &Client{HTTP: NewHTTPClient(NewTransport(time.Second)), BaseURL: "http://127.0.0.1:1/v1?key=gw-token"}
	err := down.Check(context.Background())
	var ue *url.Error
	if !errors.As(err, &ue) || strings.Contains(err.Error(), "gw-token") {
		t.Errorf("Check of an unreachable upstream = %v, want its *url.Error without the query", err)
	}
}

// A whole answer that takes longer than the first-chunk limit to arrive is
// read to its end: once its first bytes came, only the idle limit applies.
func TestSlowWholeAnswerOutlastsFirstChunkLimit(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		body := `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"slow"},"finish_reason":"stop"}]}`
		for i := 0; i < len(body); i += 20 {
			io.WriteString(w, body[i:min(i+20, len(body))])
			w.(http.Flusher).Flush()
			time.Sleep(40 * time.Millisecond)
		}
	})
	c.FirstChunk, c.Idle = 100*time.Millisecond, time.Second
	req, err := FromJSON([]byte(`{"messages":[{"role":"user","content":"hi"}],"stream":false}`), false, "m")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(context.Background(), req)
	if err != nil {
		t.Fatalf("Open = %v, want the whole slow answer", err)
	}
	defer s.Close()
	if !strings.Contains(string(s.Whole()), `"slow"`) {
		t.Errorf("Whole = %s", s.Whole())
	}
}
