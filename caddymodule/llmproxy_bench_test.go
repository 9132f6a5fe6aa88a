package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// BenchmarkRelay streams chunks through the whole handler, upstream and
// client included, and reports the allocations and time per chunk: what a
// stream costs once it is set up. Every framing must stay at zero
// allocations per chunk in steady state.
func BenchmarkRelay(b *testing.B) {
	const chunks = 2000
	up := benchUpstream(b, chunks)
	// The last counts every chunk against a token budget it never spends.
	for _, format := range []string{"openai", "sse", "ndjson", "text", "sse+tokens"} {
		b.Run(format, func(b *testing.B) {
			f, budget, _ := strings.Cut(format, "+")
			if budget != "" {
				budget = "\n\trate_limit 1000000000-D {\n\t\ttokens 1000000000000-D\n\t}"
			}
			h := provisionProxy(b, "llm_proxy "+up.URL+"/v1 {\n\tformat "+f+budget+"\n}")
			h.logger = zap.NewNop() // one line per stream would flood the output
			measureStreams(b, serveProxy(b, h), chunks)
		})
	}
}

// benchUpstream streams chunks content chunks, then the end, to every request.
func benchUpstream(b *testing.B, chunks int) *httptest.Server {
	event := []byte(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{"content":" token"},"logprobs":null,"finish_reason":null}]}` + "\n\n")
	end := []byte(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\ndata: [DONE]\n\n")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for range chunks {
			w.Write(event)
			f.Flush()
		}
		w.Write(end)
	}))
	b.Cleanup(up.Close)
	return up
}

// measureStreams runs streams of chunks chunks through srv and reports
// the time per chunk and the allocations per chunk and per stream.
func measureStreams(b *testing.B, srv *httptest.Server, chunks int) {
	client := srv.Client()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Get(srv.URL + "/?prompt=hi")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	n := float64(b.N) * float64(chunks)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/chunk")
	// A stream's setup (client, server, upstream and proxy together)
	// spread over its chunks; with longer streams this falls in
	// proportion, since no chunk allocates.
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/chunk")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N), "allocs/stream")
	b.ReportMetric(0, "ns/op")
}
