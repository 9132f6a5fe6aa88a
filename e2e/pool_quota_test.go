package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
)

// Upstream quotas are per model: a client asking for a model with no quota
// left on any upstream parks that model only, and every other client's
// requests for another model still reach the upstreams.
func TestQuotaOfOneModelLocksOutNoOther(t *testing.T) {
	var served atomic.Int32
	quota := func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Model string }
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &req)
		if req.Model == "o1-pro" {
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"error":{"message":"quota for o1-pro exceeded","type":"insufficient_quota"}}`)
			return
		}
		served.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("ok")+"\n\ndata: "+finishJSON+"\n\ndata: [DONE]\n\n")
	}
	a, b := newUpstream(t, quota), newUpstream(t, quota)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s %s
	}
}`, a.URL, b.URL))

	ask := func(model string) *http.Response {
		return post(t, c.URL+"/v1/chat/completions", `{"model":"`+model+`","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	}
	for i := 0; i < 2; i++ {
		if resp := ask("o1-pro"); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("o1-pro: status %d Retry-After %q, want 429 with a wait", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	calls := a.calls.Load() + b.calls.Load()
	for i := 0; i < 4; i++ {
		resp := ask("gpt-4o-mini")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("gpt-4o-mini after o1-pro's quota ran out: %d %s", resp.StatusCode, body)
		}
	}
	if served.Load() != 4 || a.calls.Load()+b.calls.Load() != calls+4 {
		t.Errorf("gpt-4o-mini served %d of 4 requests", served.Load())
	}
}
