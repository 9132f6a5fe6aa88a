package caddymodule

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/zap"
)

func TestGenAIProvider(t *testing.T) {
	for base, want := range map[string]string{
		"https://api.openai.com/v1":                                   "openai",
		"https://API.OpenAI.com./v1":                                  "openai",
		"https://api.deepseek.com/v1":                                 "deepseek",
		"https://api.deepseek.com":                                    "deepseek",
		"https://generativelanguage.googleapis.com/v1beta/openai":     "gcp.gemini",
		"https://us-central1-aiplatform.googleapis.com/v1/projects/p": "gcp.vertex_ai",
		"https://my-res.openai.azure.com/openai/v1":                   "azure.ai.openai",
		"https://my-res.services.ai.azure.com/models":                 "azure.ai.inference",
		"https://api.mistral.ai/v1":                                   "mistral_ai",
		"https://api.groq.com/openai/v1":                              "groq",
		"https://api.x.ai/v1":                                         "x_ai",
		"https://bedrock-runtime.us-east-1.amazonaws.com/openai/v1":   "aws.bedrock",
		"https://us-south.ml.cloud.ibm.com/ml/v1":                     "ibm.watsonx.ai",
		"https://openrouter.ai/api/v1":                                "openrouter.ai",
		"http://127.0.0.1:11434/v1":                                   "127.0.0.1",
		// A look-alike is not the provider.
		"https://api.openai.com.example.net/v1": "api.openai.com.example.net",
		"https://notapi.openai.com/v1":          "notapi.openai.com",
	} {
		if got := genAIProvider(base); got != want {
			t.Errorf("genAIProvider(%q) = %q, want %q", base, got, want)
		}
	}
}

// traced serves h under a recording span, as Caddy's tracing directive
// would, and returns what the span recorded.
func traced(t testing.TB, h *LLMProxy) (*httptest.Server, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tracer := tp.Tracer("test")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, span := tracer.Start(r.Context(), "handler")
		defer span.End()
		if err := h.ServeHTTP(w, r.WithContext(ctx), nil); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, rec
}

func TestGenAITraceAttributes(t *testing.T) {
	const secretPrompt, secretOutput = "PROMPT-7f3a", "OUTPUT-9c1e"
	// The first upstream opens its stream with the role chunk and breaks
	// before any content: the answer, and its id, are the second one's.
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"id":"chatcmpl-broken","model":"gpt-4o-2024","choices":[{"index":0,"delta":{"role":"assistant"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	defer broken.Close()
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"id":"chatcmpl-good","model":"deepseek-chat-v3","choices":[{"index":0,"delta":{"role":"assistant"}}]}`+"\n\n"+
			`data: {"id":"chatcmpl-good","model":"deepseek-chat-v3","choices":[{"index":0,"delta":{"content":"`+secretOutput+`"}}]}`+"\n\n"+
			`data: {"id":"chatcmpl-good","model":"deepseek-chat-v3","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\n"+
			`data: {"id":"chatcmpl-good","model":"deepseek-chat-v3","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}`+"\n\n"+
			"data: [DONE]\n\n")
	}))
	defer good.Close()

	h := provisionProxy(t, `llm_proxy {
		lb_policy first
		upstream `+broken.URL+`/v1
		upstream `+good.URL+`/v1 {
			model gpt-4o deepseek-chat
		}
	}`)
	h.logger = zap.NewNop()
	srv, spans := traced(t, h)
	resp, err := http.Post(srv.URL, "application/json",
		strings.NewReader(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"`+secretPrompt+`"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), secretOutput) {
		t.Fatalf("the answer did not come through:\n%s", body)
	}

	ended := spans.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans ended, want 1", len(ended))
	}
	s := ended[0]
	got := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		got[kv.Key] = kv.Value
		if v := kv.Value.Emit(); strings.Contains(v, secretPrompt) || strings.Contains(v, secretOutput) {
			t.Errorf("attribute %s holds the conversation: %s", kv.Key, v)
		}
	}
	for k, want := range map[attribute.Key]string{
		"gen_ai.operation.name":          "chat",
		"gen_ai.provider.name":           "127.0.0.1",
		"gen_ai.request.model":           "deepseek-chat", // as the answering upstream was asked
		"gen_ai.response.model":          "deepseek-chat-v3",
		"gen_ai.response.id":             "chatcmpl-good",
		"gen_ai.usage.input_tokens":      "11",
		"gen_ai.usage.output_tokens":     "7",
		"gen_ai.response.finish_reasons": `["stop"]`,
	} {
		if v, ok := got[k]; !ok || v.Emit() != want {
			t.Errorf("%s = %q, want %q", k, v.Emit(), want)
		}
	}
	if _, ok := got["error.type"]; ok || s.Status().Code == codes.Error {
		t.Errorf("a completed stream is marked failed: %v %v", got["error.type"].Emit(), s.Status())
	}
	var first int
	for _, e := range s.Events() {
		if e.Name == "first_token" {
			first++
			if e.Time.Before(s.StartTime()) || e.Time.After(s.EndTime()) {
				t.Errorf("first_token at %v, outside the span %v..%v", e.Time, s.StartTime(), s.EndTime())
			}
		}
	}
	if first != 1 {
		t.Errorf("%d first_token events, want 1: %v", first, s.Events())
	}
}

func TestGenAITraceOfBrokenStream(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"x"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	defer up.Close()
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1")
	h.logger = zap.NewNop()
	srv, spans := traced(t, h)
	resp, err := http.Get(srv.URL + "/?prompt=hi")
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	srv.Close() // waits for the handler, which aborts after its error signal
	ended := spans.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans ended, want 1", len(ended))
	}
	s := ended[0]
	if s.Status().Code != codes.Error {
		t.Errorf("status %v, want an error", s.Status())
	}
	for _, kv := range s.Attributes() {
		if kv.Key == "error.type" && kv.Value.AsString() == outcomeUpstreamError {
			return
		}
	}
	t.Errorf("no error.type %q in %v", outcomeUpstreamError, s.Attributes())
}

// BenchmarkRelayTraced is BenchmarkRelay's openai case under a recording
// span: tracing adds to a stream's setup and end, never to its chunks, so
// allocs/stream must stay flat as chunks/stream grows.
func BenchmarkRelayTraced(b *testing.B) {
	for _, chunks := range []int{200, 2000} {
		up := benchUpstream(b, chunks)
		b.Run(map[int]string{200: "chunks=200", 2000: "chunks=2000"}[chunks], func(b *testing.B) {
			h := provisionProxy(b, "llm_proxy "+up.URL+"/v1")
			h.logger = zap.NewNop()
			srv, _ := traced(b, h)
			measureStreams(b, srv, chunks)
		})
	}
}
