package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// call sends a request to srv and returns its status and body.
func call(t *testing.T, srv *httptest.Server, method, path, body string, header ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// wantOpenAIError checks an answer in OpenAI's error shape.
func wantOpenAIError(t *testing.T, resp *http.Response, body string, status int, typ string) {
	t.Helper()
	var e struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/json" ||
		json.Unmarshal([]byte(body), &e) != nil || e.Error.Message == "" || e.Error.Type != typ {
		t.Errorf("got %d %s %s, want %d in OpenAI's error shape, type %s", resp.StatusCode, resp.Header.Get("Content-Type"), body, status, typ)
	}
}

func TestPassThrough(t *testing.T) {
	var got *http.Request
	var gotBody string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Set-Cookie", "upstream=1")
		io.WriteString(w, `{"object":"list","data":[{"embedding":[0.5]}],"note":"sk-server-key"}`)
	}))
	defer up.Close()
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\tapi_key sk-server-key\n}")
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	srv := serveProxy(t, h)

	resp, body := call(t, srv, "POST", "/v1/embeddings?x=1", `{"model":"text-embedding-3-small","input":"hi"}`,
		"Content-Type", "application/json", "Authorization", "Bearer client-key", "Cookie", "c=1")
	if resp.StatusCode != 200 || body != `{"object":"list","data":[{"embedding":[0.5]}],"note":"[redacted]"}` || resp.Header.Get("Set-Cookie") != "" {
		t.Fatalf("answer %d %s %v", resp.StatusCode, body, resp.Header)
	}
	if got.URL.Path != "/v1/embeddings" || got.URL.RawQuery != "x=1" || gotBody != `{"model":"text-embedding-3-small","input":"hi"}` ||
		got.Header.Get("Authorization") != "Bearer sk-server-key" || got.Header.Get("Cookie") != "" {
		t.Errorf("upstream got %s ?%s %s %v", got.URL.Path, got.URL.RawQuery, gotBody, got.Header)
	}
	line := logs.FilterMessage("stream finished").All()
	if len(line) != 1 {
		t.Fatalf("%d log lines", len(line))
	}
	f := line[0].ContextMap()
	if f["api"] != "embeddings" || f["outcome"] != outcomeCompleted || f["model"] != "text-embedding-3-small" || f["status"] != int64(200) {
		t.Errorf("log line %v", f)
	}
}

func TestPassThroughRefusals(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"data":[{"id":"m"}]}`)
	}))
	defer up.Close()
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\tmax_body 100\n}"))
	for _, tt := range []struct {
		name, method, path, body string
		header                   []string
		status                   int
		typ, allow               string
	}{
		{"unknown path", "POST", "/v1/files", "{}", nil, 404, "invalid_request_error", ""},
		{"unknown nested path", "GET", "/v1/fine_tuning/jobs", "", nil, 404, "invalid_request_error", ""},
		{"GET embeddings", "GET", "/v1/embeddings", "", nil, 405, "invalid_request_error", "POST"},
		{"DELETE a model", "DELETE", "/v1/models/m", "", nil, 405, "invalid_request_error", "GET, HEAD"},
		{"unknown model", "GET", "/v1/models/gpt-9", "", nil, 404, "invalid_request_error", ""},
		{"body over max_body", "POST", "/v1/embeddings", strings.Repeat("x", 200), nil, 413, "invalid_request_error", ""},
		{"cross-site embeddings", "POST", "/v1/embeddings", "{}", []string{"Origin", "https://evil.example", "Content-Type", "application/json"}, 403, "invalid_request_error", ""},
		{"cross-site models", "GET", "/v1/models", "", []string{"Sec-Fetch-Site", "cross-site"}, 403, "invalid_request_error", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := call(t, srv, tt.method, tt.path, tt.body, tt.header...)
			wantOpenAIError(t, resp, body, tt.status, tt.typ)
			if resp.Header.Get("Allow") != tt.allow {
				t.Errorf("Allow %q, want %q", resp.Header.Get("Allow"), tt.allow)
			}
		})
	}
}

func TestPassThroughRateLimit(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"data":[]}`)
	}))
	defer up.Close()
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\trate_limit 2-M\n}"))
	call(t, srv, "GET", "/v1/models", "")
	call(t, srv, "POST", "/v1/embeddings", "{}")
	resp, body := call(t, srv, "POST", "/v1/moderations", "{}")
	wantOpenAIError(t, resp, body, 429, "rate_limit_exceeded")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
}

func TestModels(t *testing.T) {
	var calls atomic.Int32 // the upstreams are asked at once
	newUp := func(list string) *httptest.Server {
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			io.WriteString(w, list)
		}))
		t.Cleanup(up.Close)
		return up
	}
	a := newUp(`{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"}]}`)
	b := newUp(`{"object":"list","data":[{"id":"deepseek-chat","object":"model","created":2,"owned_by":"deepseek"}]}`)
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+a.URL+"/v1 {\n\tupstream "+b.URL+"/v1 {\n\t\tmodel gpt-4o-mini deepseek-chat\n\t}\n}"))

	resp, body := call(t, srv, "GET", "/v1/models", "")
	want := `{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"},{"id":"gpt-4o-mini","object":"model","created":2,"owned_by":"deepseek"}]}`
	if resp.StatusCode != 200 || body != want || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("models %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/v1/models/gpt-4o-mini", "")
	if resp.StatusCode != 200 || body != `{"id":"gpt-4o-mini","object":"model","created":2,"owned_by":"deepseek"}` {
		t.Errorf("one model %d %s", resp.StatusCode, body)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("%d upstream calls, want 2: the list is kept", n)
	}
}

// TestPassThroughStreamBreaks checks that an event stream that breaks
// between events ends with the API's own error event, cleanly.
func TestPassThroughStreamBreaks(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\"}\n\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	defer up.Close()
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+"/v1"))
	for path, want := range map[string]string{
		"/v1/messages/count_tokens": "event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream stream ended abnormally\"}}\n\n",
		"/v1/completions":           "event: message_start\ndata: {\"type\":\"message_start\"}\n\ndata: {\"error\":{\"message\":\"upstream stream ended abnormally\",\"type\":\"upstream_error\"}}\n\n",
	} {
		resp, body := call(t, srv, "POST", path, `{"stream":true}`)
		if resp.StatusCode != 200 || body != want || resp.Header.Get("Cache-Control") != "no-cache" {
			t.Errorf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
}

// TestModelsAllowlist checks that the models allowlist filters the list
// and holds the pass-through paths to it, as it holds chat.
func TestModelsAllowlist(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"data":[{"id":"gpt-4o"},{"id":"text-embedding-3-small"},{"id":"o3"}]}`)
			return
		}
		io.WriteString(w, `{"data":[]}`)
	}))
	defer up.Close()
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\tmodels gpt-4o text-embedding-3-small\n}"))

	_, body := call(t, srv, "GET", "/v1/models", "")
	if !strings.Contains(body, `"gpt-4o"`) || !strings.Contains(body, "text-embedding-3-small") || strings.Contains(body, "o3") {
		t.Errorf("list %s", body)
	}
	resp, body := call(t, srv, "GET", "/v1/models/o3", "")
	wantOpenAIError(t, resp, body, 404, "invalid_request_error")
	resp, _ = call(t, srv, "POST", "/v1/embeddings", `{"model":"text-embedding-3-small","input":"x"}`, "Content-Type", "application/json")
	if resp.StatusCode != 200 {
		t.Errorf("allowed model: %d", resp.StatusCode)
	}
	resp, body = call(t, srv, "POST", "/v1/embeddings", `{"model":"text-embedding-3-large","input":"x"}`, "Content-Type", "application/json")
	wantOpenAIError(t, resp, body, 404, "invalid_request_error")
	if !strings.Contains(body, "model_not_found") {
		t.Errorf("refusal %s", body)
	}
	resp, body = call(t, srv, "POST", "/v1/moderations", `{"input":"x"}`, "Content-Type", "application/json")
	wantOpenAIError(t, resp, body, 400, "invalid_request_error")
}

// TestPassThroughTokenBudget checks that a client whose token budget is
// spent is refused on these paths too.
func TestPassThroughTokenBudget(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"a b c d e f"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":20}}`+"\n\ndata: [DONE]\n\n")
	}))
	defer up.Close()
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\trate_limit 100-M {\n\t\ttokens 10-M\n\t}\n}"))
	if resp, _ := call(t, srv, "POST", "/v1/embeddings", `{"input":"x"}`); resp.StatusCode != 200 {
		t.Fatalf("before the budget is spent: %d", resp.StatusCode)
	}
	call(t, srv, "GET", "/chat?prompt=hi", "") // spends it: 25 tokens reported
	resp, body := call(t, srv, "POST", "/v1/embeddings", `{"input":"x"}`)
	wantOpenAIError(t, resp, body, 429, "rate_limit_exceeded")
}

// TestPassThroughTrace checks that a pass-through request's span names its
// operation and model.
func TestPassThroughTrace(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"data":[]}`)
	}))
	defer up.Close()
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1")
	srv, spans := traced(t, h)
	resp, err := http.Post(srv.URL+"/v1/embeddings", "application/json", strings.NewReader(`{"model":"text-embedding-3-small","input":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The handler ends its span after the client has read the answer.
	ended := spans.Ended()
	for deadline := time.Now().Add(5 * time.Second); len(ended) == 0 && time.Now().Before(deadline); ended = spans.Ended() {
		time.Sleep(5 * time.Millisecond)
	}
	if len(ended) != 1 {
		t.Fatalf("%d spans", len(ended))
	}
	got := map[string]string{}
	for _, kv := range ended[0].Attributes() {
		got[string(kv.Key)] = kv.Value.Emit()
	}
	if got["gen_ai.operation.name"] != "embeddings" || got["gen_ai.request.model"] != "text-embedding-3-small" {
		t.Errorf("attributes %v", got)
	}
}
