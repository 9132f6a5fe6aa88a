package e2e

import (
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP trace receiver on loopback: what a
// collector would get from Caddy's tracing exporter.
type otlpReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	rc := &otlpReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		body := io.Reader(r.Body)
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		b, err := io.ReadAll(body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &req)
		}
		if err != nil {
			t.Errorf("OTLP export: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				rc.spans = append(rc.spans, ss.GetSpans()...)
			}
		}
		rc.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(rc.Close)
	return rc
}

// waitSpan returns the first exported span that has attribute key, waiting
// for the exporter's batch.
func (rc *otlpReceiver) waitSpan(t *testing.T, key string) *tracepb.Span {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		rc.mu.Lock()
		for _, s := range rc.spans {
			if _, ok := spanAttrs(s)[key]; ok {
				rc.mu.Unlock()
				return s
			}
		}
		n := len(rc.spans)
		rc.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no span with %s exported (%d spans in all)", key, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// spanAttrs gives a span's attributes as text: strings as they are, other
// values as fmt prints them, arrays as [a b].
func spanAttrs(s *tracepb.Span) map[string]string {
	m := map[string]string{}
	for _, kv := range s.GetAttributes() {
		m[kv.GetKey()] = anyText(kv.GetValue())
	}
	return m
}

func anyText(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_ArrayValue:
		var parts []string
		for _, e := range x.ArrayValue.GetValues() {
			parts = append(parts, anyText(e))
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return fmt.Sprint(v.GetValue())
}

// TestGenAITraces runs caddy with its tracing directive exporting to an
// in-test OTLP/HTTP receiver and checks what llm_proxy adds to the
// request's span: the GenAI semantic conventions' attributes and a
// first_token event, and neither the prompt nor the output.
func TestGenAITraces(t *testing.T) {
	const prompt, output = "tell me the PROMPT-5e1d secret", "OUTPUT-a2c4"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		const head = `{"id":"chatcmpl-e2e-42","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18",`
		for _, ev := range []string{
			head + `"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`,
			head + `"choices":[{"index":0,"delta":{"content":"` + output + `"},"finish_reason":null}]}`,
			head + `"choices":[{"index":0,"delta":{"content":" done"},"finish_reason":null}]}`,
			head + `"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}`,
			head + `"choices":[],"usage":{"prompt_tokens":13,"completion_tokens":2,"total_tokens":15}}`,
		} {
			io.WriteString(w, "data: "+ev+"\n\n")
			f.Flush()
			time.Sleep(5 * time.Millisecond)
		}
		io.WriteString(w, "data: [DONE]\n\n")
	})
	rc := newOTLPReceiver(t)
	c := startCaddy(t, `http://127.0.0.1:{PORT} {
	tracing {
		span llm_chat
	}
	llm_proxy /v1/chat/completions {
		to `+up.URL+`/v1
		api_key {env.TEST_LLM_KEY}
	}
}
`, withEnv("TEST_LLM_KEY="+testKey,
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="+rc.URL+"/v1/traces",
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=",
		"OTEL_BSP_SCHEDULE_DELAY=50", // milliseconds; the default waits 5s
		"OTEL_TRACES_SAMPLER=always_on",
		"OTEL_SDK_DISABLED="))

	resp := post(t, c.URL+"/v1/chat/completions",
		`{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"`+prompt+`"}]}`)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), output) || !strings.Contains(string(body), `"prompt_tokens":13`) {
		t.Fatalf("status %d, body:\n%s", resp.StatusCode, body)
	}

	s := rc.waitSpan(t, "gen_ai.operation.name")
	if s.GetName() != "llm_chat" {
		t.Errorf("span %q, want Caddy's llm_chat span", s.GetName())
	}
	got := spanAttrs(s)
	for k, want := range map[string]string{
		"gen_ai.operation.name":          "chat",
		"gen_ai.provider.name":           "127.0.0.1", // not a provider the conventions list: its host
		"gen_ai.request.model":           "gpt-4o-mini",
		"gen_ai.response.model":          "gpt-4o-mini-2024-07-18",
		"gen_ai.response.id":             "chatcmpl-e2e-42",
		"gen_ai.usage.input_tokens":      "13",
		"gen_ai.usage.output_tokens":     "2",
		"gen_ai.response.finish_reasons": "[length]",
	} {
		if v, ok := got[k]; !ok || v != want {
			t.Errorf("%s = %q (set: %v), want %q", k, v, ok, want)
		}
	}
	// Caddy's own attributes are there too, on the same span.
	if got["http.request.method"] != "POST" {
		t.Errorf("http.request.method = %q: not Caddy's server span?", got["http.request.method"])
	}
	if _, ok := got["error.type"]; ok {
		t.Errorf("a completed stream has error.type %q", got["error.type"])
	}

	var first []*tracepb.Span_Event
	for _, e := range s.GetEvents() {
		if e.GetName() == "first_token" {
			first = append(first, e)
		}
	}
	if len(first) != 1 {
		t.Fatalf("%d first_token events, want 1: %v", len(first), s.GetEvents())
	}
	if at := first[0].GetTimeUnixNano(); at < s.GetStartTimeUnixNano() || at > s.GetEndTimeUnixNano() {
		t.Errorf("first_token at %d, outside the span %d..%d", at, s.GetStartTimeUnixNano(), s.GetEndTimeUnixNano())
	}

	// Nothing of the conversation, in any span, attribute or event.
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, sp := range rc.spans {
		for k, v := range spanAttrs(sp) {
			if strings.Contains(v, "PROMPT-5e1d") || strings.Contains(v, output) {
				t.Errorf("span %s attribute %s holds the conversation: %q", sp.GetName(), k, v)
			}
		}
		for _, e := range sp.GetEvents() {
			for _, kv := range e.GetAttributes() {
				if v := anyText(kv.GetValue()); strings.Contains(v, "PROMPT-5e1d") || strings.Contains(v, output) {
					t.Errorf("event %s attribute %s holds the conversation: %q", e.GetName(), kv.GetKey(), v)
				}
			}
		}
	}
}
