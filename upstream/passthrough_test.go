package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// pass sends p to c and reads the whole answer.
func pass(t *testing.T, c *Client, p *PassRequest) (*Answer, string, error) {
	t.Helper()
	a, err := c.Pass(context.Background(), p)
	if err != nil {
		return nil, "", err
	}
	t.Cleanup(a.Close)
	b, err := io.ReadAll(a)
	return a, string(b), err
}

func TestPassSendsTheServersKeyOnly(t *testing.T) {
	for _, auth := range []string{"", AuthBearer, AuthXAPIKey} {
		t.Run(auth, func(t *testing.T) {
			var got *http.Request
			var body string
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				got = r
				b, _ := io.ReadAll(r.Body)
				body = string(b)
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"object":"list"}`)
			})
			c.Auth = auth
			c.BaseURL += "?api-version=2024"
			c.Header = http.Header{"Openai-Organization": {"org-1"}, "Anthropic-Beta": {"operator-beta"}}
			client := http.Header{
				"Authorization": {"Bearer client-key"}, "X-Api-Key": {"client-key"}, "Cookie": {"session=1"},
				"Content-Type": {"application/json"}, "Idempotency-Key": {"idem-1"},
				"Anthropic-Version": {"2023-06-01"}, "Anthropic-Beta": {"client-beta"}, "X-Other": {"x"},
			}
			_, out, err := pass(t, c, &PassRequest{Method: "POST", Path: "embeddings", RawQuery: "x=1",
				Header: client, Body: []byte(`{"model":"m","input":"hi"}`)})
			if err != nil || out != `{"object":"list"}` {
				t.Fatalf("answer %q, %v", out, err)
			}
			if got.URL.Path != "/v1/embeddings" || got.URL.RawQuery != "api-version=2024&x=1" || body != `{"model":"m","input":"hi"}` {
				t.Errorf("request %s ?%s %s", got.URL.Path, got.URL.RawQuery, body)
			}
			wantAuth, wantKey := "Bearer sk-secret-key", ""
			if auth == AuthXAPIKey {
				wantAuth, wantKey = "", "sk-secret-key"
			}
			h := got.Header
			if h.Get("Authorization") != wantAuth || h.Get("X-Api-Key") != wantKey || h.Get("Cookie") != "" || h.Get("X-Other") != "" {
				t.Errorf("credentials: Authorization %q x-api-key %q Cookie %q X-Other %q", h.Get("Authorization"), h.Get("X-Api-Key"), h.Get("Cookie"), h.Get("X-Other"))
			}
			if h.Get("Idempotency-Key") != "idem-1" || h.Get("Anthropic-Version") != "2023-06-01" ||
				h.Get("Anthropic-Beta") != "operator-beta" || h.Get("Openai-Organization") != "org-1" {
				t.Errorf("headers %v", h)
			}
		})
	}
}

func TestXAPIKeyDefaultsAnthropicVersion(t *testing.T) {
	var version string
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		version = r.Header.Get("Anthropic-Version")
		io.WriteString(w, `{"data":[]}`)
	})
	c.Auth = AuthXAPIKey
	if err := c.Check(context.Background()); err != nil || version != DefaultAnthropicVersion {
		t.Errorf("health check: %v, anthropic-version %q", err, version)
	}
}

func TestPassAnswer(t *testing.T) {
	audio := bytes.Repeat([]byte("ID3 sk-secret-key \x00\xff"), 2000)
	for _, tt := range []struct {
		name, ctype, body string
		want              string
		length            bool // Content-Length passed on
	}{
		{"json is redacted", "application/json", `{"data":"sk-secret-key"}`, `{"data":"[redacted]"}`, false},
		{"event stream is redacted", "text/event-stream", "event: a\ndata: sk-secret-key\n\n", "event: a\ndata: [redacted]\n\n", false},
		{"no content type is redacted", "", "sk-secret-key", "[redacted]", false},
		{"audio passes unchanged", "audio/mpeg", string(audio), string(audio), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header()["Content-Type"] = []string{tt.ctype}
				w.Header().Set("X-Request-Id", "req-sk-secret-key")
				w.Header().Set("Set-Cookie", "upstream=1")
				w.Header().Set("X-Ratelimit-Remaining-Requests", "9")
				w.Header().Set("Content-Length", fmt.Sprint(len(tt.body)))
				io.WriteString(w, tt.body)
			})
			a, out, err := pass(t, c, &PassRequest{Method: "POST", Path: "audio/speech", Body: []byte("{}")})
			if err != nil || out != tt.want {
				t.Fatalf("answer %.80q, %v; want %.80q", out, err, tt.want)
			}
			h := a.Header
			if h.Get("X-Request-Id") != "req-[redacted]" || h.Get("Set-Cookie") != "" || h.Get("X-Ratelimit-Remaining-Requests") != "" {
				t.Errorf("header %v", h)
			}
			if (h.Get("Content-Length") != "") != tt.length {
				t.Errorf("Content-Length %q", h.Get("Content-Length"))
			}
		})
	}
}

func TestPassStatuses(t *testing.T) {
	for _, tt := range []struct {
		status int
		body   string
		want   int
		msg    string
	}{
		{401, `{"error":{"message":"bad key sk-secret-key"}}`, 502, "credentials"},
		{403, `{}`, 502, "credentials"},
		{400, `{"error":{"message":"input is too long","type":"invalid_request_error"}}`, 400, "input is too long"},
		{404, `404 page not found`, 404, "status 404"},
		{429, `{}`, 429, "rate limit"},
		{500, `{}`, 502, "status 500"},
	} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tt.status)
			io.WriteString(w, tt.body)
		})
		_, err := c.Pass(context.Background(), &PassRequest{Method: "POST", Path: "embeddings", Body: []byte("{}")})
		var e *chunk.Error
		if !errors.As(err, &e) || e.Status != tt.want || !strings.Contains(e.Message, tt.msg) || strings.Contains(e.Message, "sk-secret") {
			t.Errorf("upstream %d: %v, want %d saying %q", tt.status, err, tt.want, tt.msg)
		}
	}
}

func TestPassStreamsBody(t *testing.T) {
	var got []byte
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		if r.ContentLength != 5 {
			t.Errorf("Content-Length %d", r.ContentLength)
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"text":"ok"}`)
	})
	_, out, err := pass(t, c, &PassRequest{Method: "POST", Path: "audio/transcriptions",
		BodyReader: strings.NewReader("audio"), ContentLength: 5})
	if err != nil || out != `{"text":"ok"}` || string(got) != "audio" {
		t.Errorf("answer %q %v, upstream read %q", out, err, got)
	}

	// A body over max_body is the client's fault: 413, not a 502.
	c = serve(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
	big := http.MaxBytesReader(nil, io.NopCloser(strings.NewReader(strings.Repeat("x", 1<<20))), 1000)
	_, err = c.Pass(context.Background(), &PassRequest{Method: "POST", Path: "audio/transcriptions", BodyReader: big, ContentLength: -1})
	var e *chunk.Error
	if !errors.As(err, &e) || e.Status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %v, want 413", err)
	}
}

// TestPassFailsOverBeforeTheFirstByte checks that an upstream that fails,
// by status or with a body that breaks before its first byte, hands the
// request to the next, renamed for it; one that answered is kept.
func TestPassFailsOverBeforeTheFirstByte(t *testing.T) {
	p := &Pool{Policy: First, MaxFails: 1, CoolDown: time.Minute}
	var bodies []string
	for i, h := range []http.HandlerFunc{
		func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) },
		func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // headers, then a reset
		},
		func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"ok":true}`) },
	} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			bodies = append(bodies, string(b))
			h(w, r)
		})
		c.Name = string(rune('a' + i))
		m := &Member{Client: c}
		if i == 2 {
			m.Models = map[string]string{"text-embedding-3-small": "nomic-embed"}
		}
		p.Members = append(p.Members, m)
	}
	var heard events
	req := &PassRequest{Method: "POST", Path: "embeddings", Body: []byte(`{"input":"hi","model":"text-embedding-3-small"}`), Model: "text-embedding-3-small"}
	a, err := p.Attempt(time.Now(), req.Model, 0, &heard).Pass(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	out, _ := io.ReadAll(a)
	if string(out) != `{"ok":true}` || strings.Join(heard, ",") != "fail a next=true,fail b next=true,open c" {
		t.Errorf("answer %s, heard %v", out, heard)
	}
	if len(bodies) != 3 || bodies[0] != bodies[1] || bodies[2] != `{"input":"hi","model":"nomic-embed"}` {
		t.Errorf("bodies sent %q", bodies)
	}
}

func TestPassBreakAfterTheFirstBytes(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(50 * time.Millisecond)
	})
	c.Idle = 10 * time.Millisecond
	_, out, err := pass(t, c, &PassRequest{Method: "POST", Path: "completions", Body: []byte("{}")})
	if out != "data: 1\n\n" || !errors.Is(err, ErrIdleTimeout) {
		t.Errorf("answer %q, %v; want the first event, then the idle limit", out, err)
	}
}
