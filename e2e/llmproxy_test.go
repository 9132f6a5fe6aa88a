package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// upstream is a scripted OpenAI-compatible upstream.
type upstream struct {
	*httptest.Server
	calls atomic.Int32
	last  atomic.Pointer[http.Request]
	body  atomic.Pointer[string]
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		s := string(b)
		u.body.Store(&s)
		r.Body = io.NopCloser(strings.NewReader(s)) // the handler reads its own
		u.last.Store(r)
		h(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func chunkJSON(content string) string {
	b, _ := json.Marshal(content)
	return `{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":` + string(b) + `},"finish_reason":null}]}`
}

const finishJSON = `{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`
const usageJSON = `{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}`

// awkward writes s in pieces of the given sizes, flushing each.
func awkward(w http.ResponseWriter, s string, sizes ...int) {
	f := w.(http.Flusher)
	for i := 0; len(s) > 0; i++ {
		n := sizes[i%len(sizes)]
		if n > len(s) {
			n = len(s)
		}
		io.WriteString(w, s[:n])
		f.Flush()
		time.Sleep(200 * time.Microsecond)
		s = s[n:]
	}
}

func proxyConfig(to string, extra string) string {
	return fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy /v1/chat/completions {
		to %s
		api_key {env.TEST_LLM_KEY}
		model test-model
		%s
	}
	llm_proxy /chat {
		to %s
		api_key {env.TEST_LLM_KEY}
		format sse
		%s
	}
}
`, to, extra, to, extra)
}

const testKey = "sk-test-0123456789-SECRET"

func TestFramingsWithAwkwardSplits(t *testing.T) {
	// CRLF and lone CR line ends, a BOM, a comment, an event split inside
	// a multi-byte character, data without the space, multi-line data.
	stream := "\ufeff: hello\r\n\r\n" +
		"data: " + chunkJSON("Hé") + "\r\n\r\n" +
		"data:" + chunkJSON("llo 流") + "\r\r" +
		"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\ndata: \"choices\":[{\"index\":0,\"delta\":{\"content\":\" wörld\"}}]}\n\n" +
		"data: " + finishJSON + "\n\n" +
		"data: " + usageJSON + "\n\n" +
		"data: [DONE]\n\n"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		awkward(w, stream, 1, 7, 2, 13, 3)
	})
	c := startCaddy(t, proxyConfig(up.URL, ""), withEnv("TEST_LLM_KEY="+testKey))

	tests := []struct {
		name, url, accept, want, ctype string
	}{
		{"sse", "/chat?prompt=hi", "", "id: llmstream\n" +
			"data: {\"content\":\"Hé\"}\n\n" +
			"data: {\"content\":\"llo 流\"}\n\n" +
			"data: {\"content\":\" wörld\"}\n\n" +
			"event: done\ndata: {\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5},\"model\":\"m\"}\n\n",
			"text/event-stream"},
		{"ndjson by query", "/chat?prompt=hi&format=ndjson", "", "{\"content\":\"Hé\"}\n{\"content\":\"llo 流\"}\n{\"content\":\" wörld\"}\n" +
			"{\"done\":true,\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5},\"model\":\"m\"}\n",
			"application/x-ndjson"},
		{"ndjson by accept", "/chat?prompt=hi", "application/x-ndjson", "{\"content\":\"Hé\"}\n{\"content\":\"llo 流\"}\n{\"content\":\" wörld\"}\n" +
			"{\"done\":true,\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5},\"model\":\"m\"}\n",
			"application/x-ndjson"},
		{"text by accept", "/chat?prompt=hi", "text/plain", "Héllo 流 wörld", "text/plain; charset=utf-8"},
		{"openai", "/chat?prompt=hi&format=openai", "", "id: llmstream\ndata: " + chunkJSON("Hé") + "\n\n" +
			"data: " + chunkJSON("llo 流") + "\n\n" +
			"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" wörld\"}}]}\n\n" +
			"data: " + finishJSON + "\n\n" +
			"data: [DONE]\n\n", "text/event-stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, c.URL+tt.url, "Accept", tt.accept)
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != tt.ctype ||
				resp.Header.Get("Cache-Control") != "no-cache" || resp.Header.Get("X-Accel-Buffering") != "no" {
				t.Errorf("status %d headers %v", resp.StatusCode, resp.Header)
			}
			if string(body) != tt.want {
				t.Errorf("got\n%q\nwant\n%q", body, tt.want)
			}
		})
	}

	// The upstream got a streamed request asking for usage, with the
	// server's key and the directive's model.
	var sent map[string]any
	json.Unmarshal([]byte(*up.body.Load()), &sent)
	if sent["stream"] != true || sent["stream_options"].(map[string]any)["include_usage"] != true {
		t.Errorf("upstream request %v", sent)
	}
}

func TestOpenAIPostPassThrough(t *testing.T) {
	stream := "data: " + chunkJSON("a") + "\n\ndata: " + finishJSON + "\n\ndata: " + usageJSON + "\n\ndata: [DONE]\n\n"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept"), "event-stream") {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, stream)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"whole"},"finish_reason":"stop"}]}`)
	})
	c := startCaddy(t, proxyConfig(up.URL, ""), withEnv("TEST_LLM_KEY="+testKey))

	// Without include_usage the client does not see the usage chunk.
	resp := post(t, c.URL+"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0.5,"tools":[{"type":"function","function":{"name":"f"}}]}`,
		"Authorization", "Bearer client-token")
	body, _ := io.ReadAll(resp.Body)
	if want := "id: llmstream\ndata: " + chunkJSON("a") + "\n\ndata: " + finishJSON + "\n\ndata: [DONE]\n\n"; string(body) != want {
		t.Errorf("got %q want %q", body, want)
	}
	var sent map[string]any
	json.Unmarshal([]byte(*up.body.Load()), &sent)
	if sent["temperature"] != 0.5 || sent["tools"] == nil || sent["model"] != "test-model" {
		t.Errorf("fields not forwarded: %v", sent)
	}
	r := up.last.Load()
	if r.Header.Get("Authorization") != "Bearer "+testKey {
		t.Errorf("upstream Authorization %q", r.Header.Get("Authorization"))
	}

	// With include_usage it does.
	resp = post(t, c.URL+"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`)
	body, _ = io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `"usage":{"prompt_tokens":2`) {
		t.Errorf("usage chunk missing: %q", body)
	}

	// Not streamed: the upstream's JSON as it is.
	resp = post(t, c.URL+"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`)
	body, _ = io.ReadAll(resp.Body)
	if resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(body), `"content":"whole"`) {
		t.Errorf("non-streamed: %s %q", resp.Header.Get("Content-Type"), body)
	}
}

// TestFlushPerChunk runs the upstream in lock step with the client: the
// upstream writes chunk i+1 only after the client has received chunk i, so
// any buffering between them deadlocks instead of passing slowly. It runs
// plain and under `encode zstd gzip`, decoding incrementally.
func TestFlushPerChunk(t *testing.T) {
	const n = 8
	acks := make(chan int, n)
	sentAt := make([]time.Time, n)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := 0; i < n; i++ {
			sentAt[i] = time.Now()
			io.WriteString(w, "data: "+chunkJSON(fmt.Sprintf("tok%d ", i))+"\n\n")
			f.Flush()
			select {
			case <-acks:
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Second):
				return // the proxy buffered: the client never got chunk i
			}
		}
		io.WriteString(w, "data: "+finishJSON+"\n\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	encode zstd gzip
	llm_proxy /chat {
		to %s
		format sse
	}
}`, up.URL))

	for _, enc := range []string{"identity", "gzip", "zstd"} {
		t.Run(enc, func(t *testing.T) {
			resp := get(t, c.URL+"/chat?prompt=hi", "Accept-Encoding", enc)
			if got := resp.Header.Get("Content-Encoding"); (enc == "identity") != (got == "") {
				t.Fatalf("Content-Encoding %q for %s", got, enc)
			}
			r, err := decoder(enc, resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(r)
			var worst time.Duration
			for i := 0; i < n; i++ {
				line, err := readEvent(br)
				if err != nil {
					t.Fatalf("chunk %d: %v", i, err)
				}
				if want := fmt.Sprintf(`data: {"content":"tok%d "}`, i); line != want {
					t.Fatalf("chunk %d = %q, want %q", i, line, want)
				}
				if d := time.Since(sentAt[i]); d > worst {
					worst = d
				}
				acks <- i
			}
			t.Logf("%s: slowest chunk took %v from upstream write to client read", enc, worst)
		})
	}
}

// readEvent returns the next non-empty, non-comment, non-id line.
func readEvent(br *bufio.Reader) (string, error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\n")
		if line == "" || strings.HasPrefix(line, ":") || strings.HasPrefix(line, "id:") || strings.HasPrefix(line, "retry:") {
			continue
		}
		return line, nil
	}
}

func TestFailuresBeforeFirstByte(t *testing.T) {
	var status atomic.Int32
	var body atomic.Pointer[string]
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "17")
		w.WriteHeader(int(status.Load()))
		io.WriteString(w, *body.Load())
	})
	stall := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy /v1/chat/completions {
		to %s
		api_key {env.TEST_LLM_KEY}
		max_body 1KB
	}
	llm_proxy /stall {
		to %s
		timeouts {
			first_chunk 300ms
		}
	}
	llm_proxy /dead {
		to %s
	}
}`, up.URL, stall.URL, dead.URL), withEnv("TEST_LLM_KEY="+testKey))

	msg := `{"messages":[{"role":"user","content":"hi"}],"stream":true}`
	tests := []struct {
		name       string
		method     string
		path, body string
		upStatus   int
		upBody     string
		wantStatus int
		wantType   string
		wantMsg    string
		wantRetry  string
		noUpstream bool
	}{
		{name: "malformed json", method: "POST", path: "/v1/chat/completions", body: `{"messages":`, wantStatus: 400, wantType: "invalid_request_error", noUpstream: true},
		{name: "no messages", method: "POST", path: "/v1/chat/completions", body: `{"model":"x"}`, wantStatus: 400, wantType: "invalid_request_error", wantMsg: "neither messages nor prompt", noUpstream: true},
		{name: "no prompt", method: "GET", path: "/v1/chat/completions", wantStatus: 400, wantType: "invalid_request_error", wantMsg: "prompt", noUpstream: true},
		{name: "bad format", method: "GET", path: "/v1/chat/completions?prompt=x&format=xml", wantStatus: 400, wantType: "invalid_request_error", wantMsg: "unknown format", noUpstream: true},
		{name: "too big", method: "POST", path: "/v1/chat/completions", body: `{"messages":[{"role":"user","content":"` + strings.Repeat("x", 2000) + `"}]}`, wantStatus: 413, wantType: "invalid_request_error", noUpstream: true},
		{name: "method", method: "PUT", path: "/v1/chat/completions", body: msg, wantStatus: 405, wantType: "invalid_request_error", noUpstream: true},
		{name: "upstream 400", method: "POST", path: "/v1/chat/completions", body: msg, upStatus: 400, upBody: `{"error":{"message":"temperature too high","type":"invalid_request_error"}}`, wantStatus: 400, wantType: "invalid_request_error", wantMsg: "temperature too high"},
		{name: "upstream 404", method: "POST", path: "/v1/chat/completions", body: msg, upStatus: 404, upBody: `{"error":{"message":"model x not found","type":"invalid_request_error"}}`, wantStatus: 404, wantType: "invalid_request_error", wantMsg: "model x not found"},
		{name: "upstream 422", method: "POST", path: "/v1/chat/completions", body: msg, upStatus: 422, upBody: `{"error":{"message":"unprocessable"}}`, wantStatus: 422, wantMsg: "unprocessable"},
		{name: "upstream 401", method: "POST", path: "/v1/chat/completions", body: msg, upStatus: 401, upBody: `{"error":{"message":"Incorrect API key provided: ` + testKey + `"}}`, wantStatus: 502, wantType: "upstream_error", wantMsg: "credentials"},
		{name: "upstream 403", method: "POST", path: "/v1/chat/completions", body: msg, upStatus: 403, wantStatus: 502, wantType: "upstream_error"},
		{name: "upstream 500", method: "POST", path: "/v1/chat/completions", body: msg, upStatus: 500, upBody: "oops", wantStatus: 502, wantType: "upstream_error"},
		{name: "upstream 503", method: "POST", path: "/v1/chat/completions", body: msg, upStatus: 503, wantStatus: 502, wantType: "upstream_error"},
		{name: "unreachable", method: "GET", path: "/dead?prompt=x", wantStatus: 502, wantType: "upstream_error", wantMsg: "unreachable"},
		{name: "first chunk timeout", method: "GET", path: "/stall?prompt=x", wantStatus: 504, wantType: "timeout_error"},
		// Last: a 429 parks the upstream for its Retry-After.
		{name: "upstream 429", method: "POST", path: "/v1/chat/completions", body: msg, upStatus: 429, upBody: `{"error":{"message":"Rate limit reached","type":"requests"}}`, wantStatus: 429, wantType: "requests", wantMsg: "Rate limit reached", wantRetry: "17"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status.Store(int32(tt.upStatus))
			body.Store(&tt.upBody)
			before := up.calls.Load()
			req, _ := http.NewRequest(tt.method, c.URL+tt.path, strings.NewReader(tt.body))
			resp := do(t, req)
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, b)
			}
			var e struct {
				Error struct{ Message, Type string }
			}
			if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("body %q is not an OpenAI error", b)
			}
			if tt.wantType != "" && e.Error.Type != tt.wantType {
				t.Errorf("type %q, want %q", e.Error.Type, tt.wantType)
			}
			if !strings.Contains(e.Error.Message, tt.wantMsg) {
				t.Errorf("message %q, want it to contain %q", e.Error.Message, tt.wantMsg)
			}
			if resp.Header.Get("Retry-After") != tt.wantRetry {
				t.Errorf("Retry-After %q, want %q", resp.Header.Get("Retry-After"), tt.wantRetry)
			}
			if tt.noUpstream && up.calls.Load() != before {
				t.Error("bad input reached the upstream")
			}
			if strings.Contains(string(b), testKey) {
				t.Error("the key leaked into the response")
			}
		})
	}
	if strings.Contains(c.Log.String(), testKey) {
		t.Error("the key leaked into the log")
	}
}

func TestFailuresAfterFirstByte(t *testing.T) {
	first := "data: " + chunkJSON("partial") + "\n\n"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, first)
		w.(http.Flusher).Flush()
		if r.URL.Query().Get("v") != "1" || !strings.HasSuffix(r.URL.Path, "/chat/completions") {
			panic("base URL not joined: " + r.URL.String())
		}
		switch strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/"), "/chat/completions") {
		case "error-event":
			io.WriteString(w, `data: {"error":{"message":"model overloaded","type":"server_error"}}`+"\n\n")
		case "reset":
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
		case "garbage":
			io.WriteString(w, "data: {not json\n\n")
		case "idle":
			<-r.Context().Done()
		case "truncated":
			io.WriteString(w, `data: {"choices":[{"index":0,"del`)
		}
	})
	cfg := ""
	for _, cs := range []string{"error-event", "reset", "garbage", "idle", "truncated"} {
		cfg += fmt.Sprintf(`
	handle /%s {
		llm_proxy {
			to %s/%s?v=1
			timeouts {
				idle 300ms
			}
		}
	}`, cs, up.URL, cs)
	}
	// The case travels in the base URL's path; its query must survive.
	c := startCaddy(t, "http://127.0.0.1:{PORT} {"+cfg+"\n}")
	_ = c

	for _, cs := range []string{"error-event", "reset", "garbage", "idle", "truncated"} {
		for _, format := range []string{"openai", "sse", "ndjson", "text"} {
			t.Run(cs+"/"+format, func(t *testing.T) {
				resp := get(t, c.URL+"/"+cs+"?prompt=x&format="+format)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
				body, err := io.ReadAll(resp.Body)
				s := string(body)
				if !strings.Contains(s, "partial") {
					t.Errorf("content before the failure lost: %q", s)
				}
				// Text has no error signal: its body must break. The
				// others end cleanly after their error event, as
				// OpenAI's API does, so clients report its message.
				if format == "text" && err == nil {
					t.Errorf("text body ended cleanly after a failure: %q", s)
				}
				if format != "text" && err != nil {
					t.Errorf("body broken after its error signal: %v", err)
				}
				switch format {
				case "openai":
					if !strings.Contains(s, `data: {"error":{`) || strings.Contains(s, "[DONE]") {
						t.Errorf("openai framing: %q", s)
					}
				case "sse":
					if !strings.Contains(s, "event: error\ndata: {\"error\":{") || strings.Contains(s, "event: done") {
						t.Errorf("sse framing: %q", s)
					}
				case "ndjson":
					if !strings.Contains(s, "\n{\"error\":{") || strings.Contains(s, `"done"`) {
						t.Errorf("ndjson framing: %q", s)
					}
				case "text":
					if s != "partial" {
						t.Errorf("text framing: %q", s)
					}
				}
			})
		}
	}
	if strings.Contains(c.Log.String(), "panic") && !strings.Contains(c.Log.String(), "abort") {
		t.Errorf("unexpected panic in log")
	}
}

func TestErrorEventCarriesUpstreamMessage(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("x")+"\n\n"+`data: {"error":{"message":"model overloaded","type":"server_error"}}`+"\n\n")
	})
	c := startCaddy(t, proxyConfig(up.URL, ""))
	resp := get(t, c.URL+"/chat?prompt=x&format=ndjson")
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `{"error":{"message":"model overloaded","type":"server_error"}}`) {
		t.Errorf("got %q", body)
	}
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	gone := make(chan time.Time, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			io.WriteString(w, "data: "+chunkJSON("tok ")+"\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				gone <- time.Now()
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	c := startCaddy(t, proxyConfig(up.URL, ""))
	for _, format := range []string{"openai", "text"} {
		resp := get(t, c.URL+"/chat?prompt=x&format="+format)
		buf := make([]byte, 10)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatal(err)
		}
		left := time.Now()
		resp.Body.Close()
		select {
		case at := <-gone:
			t.Logf("%s: upstream cancelled %v after the client left", format, at.Sub(left))
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the upstream never saw the client leave", format)
		}
	}
}

func TestHeartbeatsAndSecrets(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.(http.Flusher).Flush()
		time.Sleep(400 * time.Millisecond)
		io.WriteString(w, "data: "+chunkJSON("late")+"\n\ndata: "+finishJSON+"\n\ndata: [DONE]\n\n")
	})
	cfg := proxyConfig(up.URL, "heartbeat 50ms")
	c := startCaddy(t, cfg, withEnv("TEST_LLM_KEY="+testKey))
	resp := get(t, c.URL+"/v1/chat/completions?prompt=x", "Authorization", "Bearer client-secret")
	body, _ := io.ReadAll(resp.Body)
	if !strings.HasPrefix(string(body), ": keepalive\n") || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Errorf("got %q", body)
	}
	r := up.last.Load()
	if got := r.Header.Get("Authorization"); got != "Bearer "+testKey {
		t.Errorf("upstream saw Authorization %q", got)
	}

	// The adapted JSON keeps the placeholder, not the key.
	dir := t.TempDir()
	os.WriteFile(dir+"/Caddyfile", []byte(strings.ReplaceAll(cfg, "{PORT}", "9")), 0o600)
	out, err := exec.Command(caddyBin, "adapt", "--config", dir+"/Caddyfile").CombinedOutput()
	if err != nil {
		t.Fatalf("adapt: %v %s", err, out)
	}
	cmd := exec.Command(caddyBin, "adapt", "--config", dir+"/Caddyfile")
	cmd.Env = append(os.Environ(), "TEST_LLM_KEY="+testKey)
	out, _ = cmd.CombinedOutput()
	if strings.Contains(string(out), testKey) || !strings.Contains(string(out), "{env.TEST_LLM_KEY}") {
		t.Errorf("adapted JSON: %s", out)
	}
	if strings.Contains(c.Log.String(), testKey) || strings.Contains(c.Log.String(), "client-secret") {
		t.Error("a secret leaked into the log")
	}
}

func TestEventSourceReconnectGets204(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	c := startCaddy(t, proxyConfig(up.URL, ""))
	resp := get(t, c.URL+"/chat?prompt=x", "Last-Event-ID", "llmstream")
	if resp.StatusCode != http.StatusNoContent || up.calls.Load() != 0 {
		t.Errorf("status %d, upstream calls %d", resp.StatusCode, up.calls.Load())
	}
}

func TestBesideReverseProxyWithoutOrder(t *testing.T) {
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app") })
	llm := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("llm")+"\n\ndata: "+finishJSON+"\n\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	reverse_proxy %s
	llm_proxy /v1/chat/completions {
		to %s
	}
}`, strings.TrimPrefix(app.URL, "http://"), llm.URL))
	b, _ := io.ReadAll(get(t, c.URL+"/anything").Body)
	if string(b) != "app" {
		t.Errorf("app route got %q", b)
	}
	b, _ = io.ReadAll(get(t, c.URL+"/v1/chat/completions?prompt=x&format=text").Body)
	if string(b) != "llm" {
		t.Errorf("llm route got %q", b)
	}
}

func TestHandleErrorsRoutes(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(429)
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
	}
	handle_errors 429 {
		respond "slow down: {err.message}"
	}
}`, up.URL))
	resp := get(t, c.URL+"/?prompt=x")
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 429 || !strings.HasPrefix(string(b), "slow down: ") || resp.Header.Get("Retry-After") != "3" {
		t.Errorf("status %d body %q headers %v", resp.StatusCode, b, resp.Header)
	}
}

// The example as a newcomer runs it: on loopback only, under every loopback
// name, with the public routes rate limited.
func TestExampleCaddyfile(t *testing.T) {
	src, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	// startCaddy writes the one global block: the example's goes into it.
	globals, rest, ok := strings.Cut(string(src), "\n{\n")
	body, site, ok2 := strings.Cut(rest, "\n}\n")
	if !ok || !ok2 || !strings.Contains(body, "default_bind 127.0.0.1 [::1]") {
		t.Fatalf("the example has no global block binding loopback")
	}
	sim := testenv.FreePort(t)
	cf := globals + "\n" + strings.ReplaceAll(site, ":8080", ":{PORT}")
	cf = strings.ReplaceAll(cf, "localhost:8081", fmt.Sprintf("localhost:%d", sim))
	c := startCaddy(t, cf, withGlobals(body))

	// Every listener is on loopback.
	resp := get(t, "http://"+c.Admin+"/config/apps/http/servers")
	var servers map[string]struct{ Listen []string }
	if err := json.NewDecoder(resp.Body).Decode(&servers); err != nil || len(servers) == 0 {
		t.Fatalf("servers: %v", err)
	}
	for name, s := range servers {
		for _, l := range s.Listen {
			if !strings.HasPrefix(l, "127.0.0.1:") && !strings.HasPrefix(l, "[::1]:") {
				t.Errorf("server %s listens on %s, beyond loopback", name, l)
			}
		}
	}

	port := c.URL[strings.LastIndex(c.URL, ":"):]
	for _, host := range []string{"127.0.0.1", "localhost", "[::1]"} {
		req, _ := http.NewRequest(http.MethodGet, c.URL+"/chat?prompt=hello", nil)
		req.Host = host + port
		resp := do(t, req)
		if resp.Header.Get("RateLimit-Policy") == "" {
			t.Errorf("Host %q: /chat has no rate limit", host)
		}
		br := bufio.NewReader(resp.Body)
		var text strings.Builder
		var events int
		for {
			line, err := readEvent(br)
			if err != nil {
				t.Fatalf("Host %q: stream ended without done: %v (got %q)", host, err, text.String())
			}
			if line == "event: done" {
				break
			}
			var d struct{ Content string }
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &d); err != nil {
				t.Fatalf("bad event %q", line)
			}
			text.WriteString(d.Content)
			events++
		}
		if events < 5 || !strings.Contains(text.String(), "hello") {
			t.Errorf("Host %q: %d events: %q", host, events, text.String())
		}
	}
}
