package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// passUsageUpstream answers embeddings with a JSON body reporting 7 tokens
// (500 while fail is set), and legacy completions with a stream of events
// (events of them, then a usage chunk of 3+5 tokens when usage is set).
func passUsageUpstream(t *testing.T, events int, usage bool, fail *atomic.Bool) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail != nil && fail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, `{"error":{"message":"down","type":"server_error"}}`)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/embeddings") {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"object":"list","data":[{"embedding":[`+strings.Repeat("0.5,", 10000)+`0.5]}],"usage":{"prompt_tokens":7,"total_tokens":7}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := range events {
			fmt.Fprintf(w, `data: {"object":"text_completion","choices":[{"text":"w%d ","index":0,"finish_reason":null}]}`+"\n\n", i)
			f.Flush()
		}
		io.WriteString(w, `data: {"object":"text_completion","choices":[{"text":"","index":0,"finish_reason":"stop"}]}`+"\n\n")
		if usage {
			io.WriteString(w, `data: {"object":"text_completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}`+"\n\n")
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(up.Close)
	return up
}

// remainingTokens is what a request sees of its budget after its own
// reservation, from the header Reserve sets.
func remainingTokens(resp *http.Response) string {
	return resp.Header.Get("X-Ratelimit-Remaining-Tokens")
}

// Embeddings spend what their answer reports, and a client that spent its
// budget is refused before the upstream is asked.
func TestPassUsageEmbeddings(t *testing.T) {
	var fail atomic.Bool
	up := passUsageUpstream(t, 0, false, &fail)
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\trate_limit 100-M {\n\t\ttokens 14-M\n\t}\n}"))
	body := `{"model":"e","input":"abcdefgh"}` // 2 tokens of input, and 1 reserved

	// An upstream that fails generated nothing: the reservation is refunded.
	fail.Store(true)
	if resp, _ := call(t, srv, "POST", "/v1/embeddings", body, "Content-Type", "application/json"); resp.StatusCode != 502 || remainingTokens(resp) != "11" {
		t.Fatalf("failed upstream: %d, remaining %s", resp.StatusCode, remainingTokens(resp))
	}
	fail.Store(false)
	for i, want := range []string{"11", "4"} { // 14-3; 14-7 (the first's usage)-3
		resp, b := call(t, srv, "POST", "/v1/embeddings", body, "Content-Type", "application/json")
		if resp.StatusCode != 200 || remainingTokens(resp) != want || !strings.HasSuffix(b, `"total_tokens":7}}`) {
			t.Fatalf("request %d: %d, remaining %s, want %s", i+1, resp.StatusCode, remainingTokens(resp), want)
		}
	}
	resp, b := call(t, srv, "POST", "/v1/embeddings", body, "Content-Type", "application/json")
	wantOpenAIError(t, resp, b, http.StatusTooManyRequests, "rate_limit_exceeded")
	if !strings.Contains(b, "token budget exceeded: 14 tokens per minute") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("refusal %v %s", resp.Header, b)
	}
}

// A streamed completion is counted as it passes: its usage chunk is the
// upstream's count; without one, each event is a token.
func TestPassUsageCompletionsStream(t *testing.T) {
	for _, tt := range []struct {
		name  string
		usage bool
		want  string // remaining for the next request, after its 1+1 reserved
	}{
		{"usage reported", true, fmt.Sprint(100 - 8 - 2)},
		{"no usage", false, fmt.Sprint(100 - (1 + 6) - 2)}, // the prompt, 5 texts and the finish
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := passUsageUpstream(t, 5, tt.usage, nil)
			srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\trate_limit 100-M {\n\t\ttokens 100-M\n\t}\n}"))
			req := `{"model":"c","prompt":"abcd","max_tokens":1,"stream":true}`
			resp, b := call(t, srv, "POST", "/v1/completions", req, "Content-Type", "application/json")
			if resp.StatusCode != 200 || !strings.HasSuffix(b, "data: [DONE]\n\n") {
				t.Fatalf("%d %q", resp.StatusCode, b)
			}
			resp, _ = call(t, srv, "POST", "/v1/completions", req, "Content-Type", "application/json")
			if remainingTokens(resp) != tt.want {
				t.Errorf("remaining %s, want %s", remainingTokens(resp), tt.want)
			}
		})
	}
}

// A streamed completion that spends its client's budget ends after the
// event that did, with an error event in OpenAI's shape and no [DONE].
func TestPassUsageCompletionsCut(t *testing.T) {
	up := passUsageUpstream(t, 100, false, nil)
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\trate_limit 100-M {\n\t\ttokens 20-M\n\t}\n}"))
	resp, b := call(t, srv, "POST", "/v1/completions", `{"model":"c","prompt":"abcd","max_tokens":5,"stream":true}`, "Content-Type", "application/json")
	if resp.StatusCode != 200 || strings.Contains(b, "[DONE]") {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}
	// 1 token of prompt and 19 events fit; the 20th crossed the budget.
	events := strings.Split(strings.TrimSuffix(b, "\n\n"), "\n\n")
	last := events[len(events)-1]
	if len(events) != 21 || !strings.HasPrefix(last, `data: {"error":{"message":"token budget exceeded: 20 tokens per minute; retry in `) ||
		!strings.Contains(last, `"type":"rate_limit_exceeded"`) {
		t.Errorf("%d events, the last %q", len(events), last)
	}
	resp, b = call(t, srv, "POST", "/v1/completions", `{"model":"c","prompt":"abcd","max_tokens":5,"stream":true}`, "Content-Type", "application/json")
	wantOpenAIError(t, resp, b, http.StatusTooManyRequests, "rate_limit_exceeded")
}
