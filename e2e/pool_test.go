package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// behaving is an upstream whose behaviour can be switched while it runs.
type behaving struct {
	*upstream
	mode atomic.Pointer[string]
}

func newBehaving(t *testing.T, name string) *behaving {
	b := &behaving{}
	ok := "ok"
	b.mode.Store(&ok)
	b.upstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch *b.mode.Load() {
		case "500":
			w.WriteHeader(500)
		case "429":
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(429)
			io.WriteString(w, `{"error":{"message":"`+name+` is busy","type":"requests"}}`)
		case "stall":
			w.Header().Set("Content-Type", "text/event-stream")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: "+chunkJSON(name)+"\n\ndata: "+finishJSON+"\n\ndata: "+usageJSON+"\n\ndata: [DONE]\n\n")
		}
	})
	return b
}

func (b *behaving) set(mode string) { b.mode.Store(&mode) }

func text(t *testing.T, url string) (int, string) {
	t.Helper()
	resp := get(t, url)
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestPoolPolicies(t *testing.T) {
	a, b, c := newBehaving(t, "A"), newBehaving(t, "B"), newBehaving(t, "C")
	cfg := fmt.Sprintf(`http://127.0.0.1:{PORT} {
	handle /rr {
		llm_proxy %[1]s %[2]s %[3]s {
			format text
		}
	}
	handle /first {
		llm_proxy %[1]s %[2]s %[3]s {
			format text
			lb_policy first
		}
	}
	handle /weighted {
		llm_proxy {
			format text
			lb_policy weighted
			upstream %[1]s {
				weight 2
			}
			upstream %[2]s {
				model gpt-4o renamed-for-b
			}
		}
	}
}`, a.URL, b.URL, c.URL)
	cd := startCaddy(t, cfg)
	var got string
	for i := 0; i < 6; i++ {
		_, s := text(t, cd.URL+"/rr?prompt=x")
		got += s
	}
	if got != "ABCABC" {
		t.Errorf("round_robin served %s", got)
	}
	got = ""
	for i := 0; i < 3; i++ {
		_, s := text(t, cd.URL+"/first?prompt=x")
		got += s
	}
	if got != "AAA" {
		t.Errorf("first served %s", got)
	}
	got = ""
	for i := 0; i < 6; i++ {
		_, s := text(t, cd.URL+"/weighted?prompt=x&model=gpt-4o")
		got += s
	}
	if got != "ABAABA" {
		t.Errorf("weighted served %s, want ABA ABA", got)
	}
	var sent map[string]any
	json.Unmarshal([]byte(*b.body.Load()), &sent)
	if sent["model"] != "renamed-for-b" {
		t.Errorf("B was asked for %v, want its rename", sent["model"])
	}
}

func TestPoolFailover(t *testing.T) {
	a, b := newBehaving(t, "A"), newBehaving(t, "B")
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	cd := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	handle /ab {
		llm_proxy %[1]s %[2]s {
			lb_policy first
			format sse
			heartbeat 50ms
			timeouts {
				first_chunk 400ms
			}
		}
	}
	handle /dead {
		llm_proxy %[3]s %[2]s {
			lb_policy first
			format text
		}
	}
	handle /metrics {
		metrics
	}
}`, a.URL, b.URL, dead.URL))

	// A connect error moves on to the next upstream.
	if code, s := text(t, cd.URL+"/dead?prompt=x"); code != 200 || s != "B" {
		t.Errorf("after a connect error: %d %q", code, s)
	}

	// 429 last: it parks A for its Retry-After.
	for _, mode := range []string{"500", "stall", "429"} {
		t.Run(mode, func(t *testing.T) {
			a.set(mode)
			defer a.set("ok")
			before := b.calls.Load()
			resp := get(t, cd.URL+"/ab?prompt=x")
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), `data: {"content":"B"}`) ||
				!strings.Contains(string(body), "event: done") {
				t.Fatalf("%s: %d %v %q", mode, resp.StatusCode, err, body)
			}
			if mode == "stall" && !strings.Contains(string(body), ": keepalive") {
				t.Errorf("stall: expected heartbeats before the failover: %q", body)
			}
			if b.calls.Load() != before+1 {
				t.Errorf("B called %d times", b.calls.Load()-before)
			}
		})
	}

	// A is parked after its 429 (Retry-After 30): the next request goes
	// straight to B without asking A.
	aCalls := a.calls.Load()
	if code, body := text(t, cd.URL+"/ab?prompt=x&format=text"); code != 200 || body != "B" || a.calls.Load() != aCalls {
		t.Errorf("parked upstream asked again: %d %q, A calls +%d", code, body, a.calls.Load()-aCalls)
	}

	// Every upstream rate limited: 429 at once with the shortest wait.
	b.set("429")
	code, body := text(t, cd.URL+"/ab?prompt=x&format=text")
	if code != 429 || !strings.Contains(body, "busy") {
		t.Errorf("all rate limited: %d %q", code, body)
	}
	start := time.Now()
	resp := get(t, cd.URL+"/ab?prompt=x&format=text")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || time.Since(start) > 2*time.Second {
		t.Errorf("all down: status %d Retry-After %q after %v", resp.StatusCode, resp.Header.Get("Retry-After"), time.Since(start))
	}

	// Content reached the client: no failover, the error signal instead.
	m := scrape(t, cd.URL+"/metrics")
	for _, want := range []string{
		`caddy_llm_failovers_total{upstream="` + a.URL + `"}`,
		`caddy_llm_requests_total{outcome="completed",status="200",upstream="` + b.URL + `"}`,
		`caddy_llm_requests_total{outcome="rejected",status="429",upstream=`,
		`caddy_llm_time_to_first_token_seconds_count{upstream="` + b.URL + `"}`,
		`caddy_llm_tokens_total{kind="completion",upstream="` + b.URL + `"}`,
		`caddy_llm_proxy_added_seconds_count`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// One log line per stream with its fields.
	var line map[string]any
	for _, l := range strings.Split(cd.Log.String(), "\n") {
		if strings.Contains(l, `"stream finished"`) && strings.Contains(l, `"completed"`) {
			json.Unmarshal([]byte(l), &line)
		}
	}
	for _, f := range []string{"upstream", "model", "format", "status", "outcome", "ttft", "duration", "chunks", "bytes", "prompt_tokens", "completion_tokens", "client_ip"} {
		if _, ok := line[f]; !ok {
			t.Errorf("log line lacks %q: %v", f, line)
		}
	}
}

// scrape returns the metrics page.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp := get(t, url)
	var sb strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		sb.WriteString(sc.Text() + "\n")
	}
	return sb.String()
}

func TestNoFailoverAfterContent(t *testing.T) {
	b := newBehaving(t, "B")
	a := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("A-partial")+"\n\n")
		w.(http.Flusher).Flush()
		conn, _, _ := http.NewResponseController(w).Hijack()
		conn.Close()
	})
	cd := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s %s {
		lb_policy first
		format ndjson
	}
}`, a.URL, b.URL))
	resp := get(t, cd.URL+"/?prompt=x")
	body, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(body), "A-partial") || strings.Contains(string(body), `"B"`) ||
		!strings.Contains(string(body), `{"error":`) || b.calls.Load() != 0 {
		t.Errorf("err %v body %q B calls %d", err, body, b.calls.Load())
	}
}

func TestHealthCheck(t *testing.T) {
	a, b := newBehaving(t, "A"), newBehaving(t, "B")
	a.set("500")
	cd := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s %s {
		lb_policy first
		format text
		health_check 100ms
	}
}`, a.URL, b.URL))
	// A fails its checks and is skipped without being asked to chat.
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.calls.Store(0)
		if _, s := text(t, cd.URL+"/?prompt=x"); s == "B" && a.calls.Load() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a failing upstream was never skipped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Back in service once it passes.
	a.set("ok")
	for {
		if _, s := text(t, cd.URL+"/?prompt=x"); s == "A" {
			break
		}
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("a recovered upstream never came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(cd.Log.String(), "upstream failed its health check") || !strings.Contains(cd.Log.String(), "passed its health check again") {
		t.Error("health transitions not logged")
	}
}

func TestPoolStateSurvivesReload(t *testing.T) {
	a, b := newBehaving(t, "A"), newBehaving(t, "B")
	cd := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s %s {
		lb_policy first
		format text
	}
}`, a.URL, b.URL))
	a.set("429") // parks A for 30s
	if _, s := text(t, cd.URL+"/?prompt=x"); s != "B" {
		t.Fatalf("failover: %q", s)
	}
	a.set("ok")
	path := cd.dir + "/Caddyfile"
	if out, err := exec.Command(caddyBin, "reload", "--force", "--config", path, "--address", cd.Admin).CombinedOutput(); err != nil {
		t.Fatalf("reload: %v %s", err, out)
	}
	calls := a.calls.Load()
	if _, s := text(t, cd.URL+"/?prompt=x"); s != "B" || a.calls.Load() != calls {
		t.Errorf("after a reload the parked upstream was asked again: %q", s)
	}
}

// TestOccasionalFailuresDoNotPark: failures count only in a row; an
// upstream that answers between them stays in service.
func TestOccasionalFailuresDoNotPark(t *testing.T) {
	a, b := newBehaving(t, "A"), newBehaving(t, "B")
	cd := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s %s {
		lb_policy first
		format text
	}
}`, a.URL, b.URL))
	for i := 0; i < 5; i++ {
		a.set("500")
		if _, s := text(t, cd.URL+"/?prompt=x"); s != "B" {
			t.Fatalf("failover %d: %q", i, s)
		}
		a.set("ok")
		if _, s := text(t, cd.URL+"/?prompt=x"); s != "A" {
			t.Fatalf("after %d single failures, each followed by an answer, A was parked: %q", i+1, s)
		}
	}
}
