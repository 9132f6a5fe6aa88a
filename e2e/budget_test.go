package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/redistest"
)

// tokenUpstream streams as many one-token deltas as the first message asks
// for ("38"), or its max_tokens if lower, every interval, then the finish
// and OpenAI's usage (2 tokens of prompt). It notes when a stream's client
// hung up and how many tokens it had sent by then.
type tokenUpstream struct {
	*upstream
	sent   atomic.Int64 // tokens, over every stream
	mu     sync.Mutex
	hangUp []time.Time
}

func newTokenUpstream(t *testing.T, interval time.Duration) *tokenUpstream {
	u := &tokenUpstream{}
	u.upstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Messages  []struct{ Content string }
			MaxTokens *int `json:"max_tokens"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Messages) == 0 {
			http.Error(w, "bad request", 400)
			return
		}
		n, _ := strconv.Atoi(req.Messages[0].Content)
		if req.MaxTokens != nil && *req.MaxTokens < n {
			n = *req.MaxTokens
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range n {
			if _, err := io.WriteString(w, "data: "+chunkJSON(fmt.Sprint(" t", i))+"\n\n"); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			u.sent.Add(1)
			select {
			case <-r.Context().Done():
				u.mu.Lock()
				u.hangUp = append(u.hangUp, time.Now())
				u.mu.Unlock()
				return
			case <-time.After(interval):
			}
		}
		fmt.Fprintf(w, "data: %s\n\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],"+
			"\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\ndata: [DONE]\n\n", finishJSON, n, n+2)
	})
	return u
}

// lastHangUp is when a client last hung up on u, zero if none did.
func (u *tokenUpstream) lastHangUp() time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.hangUp) == 0 {
		return time.Time{}
	}
	return u.hangUp[len(u.hangUp)-1]
}

// sseStream reads an sse-framed answer to the end: its content events, and
// its last event's type, data and arrival.
type sseStream struct {
	status   int
	header   http.Header
	contents int
	last     string // "done", "error", or "" for a body that just ended
	data     string
	at       time.Time
}

func readSSE(t *testing.T, url string, header ...string) sseStream {
	t.Helper()
	resp := get(t, url, header...)
	s := sseStream{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		s.data = string(b)
		return s
	}
	sc := bufio.NewScanner(resp.Body)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if event == "" {
				s.contents++
				continue
			}
			s.last, s.data, s.at = event, strings.TrimPrefix(line, "data: "), time.Now()
		case line == "":
			event = ""
		}
	}
	return s
}

const budgetConfig = `http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		format sse
		rate_limit 100-M {
			tokens 50-M
			%s
		}
	}
}`

// The example, 50 tokens a minute: the first stream (40 tokens)
// passes, the second is cut mid-stream about ten tokens later and its
// upstream hung up on at once, the third is refused before the upstream
// with the wait until the window ends.
func TestTokenBudgetCutsTheStream(t *testing.T) {
	up := newTokenUpstream(t, 10*time.Millisecond)
	c := startCaddy(t, fmt.Sprintf(budgetConfig, up.URL, ""))
	start := time.Now()
	tokenBudgetScenario(t, up, func(int) *caddy { return c }, start)
}

// tokenBudgetScenario runs the example against the instances that on(i)
// names for the i-th request.
func tokenBudgetScenario(t *testing.T, up *tokenUpstream, on func(i int) *caddy, start time.Time) {
	t.Helper()
	first := readSSE(t, on(0).URL+"/?prompt=38")
	if first.status != 200 || first.contents != 38 || first.last != "done" || !strings.Contains(first.data, `"total_tokens":40`) {
		t.Fatalf("first stream: %+v", first)
	}
	if h := first.header; h.Get("X-Ratelimit-Limit-Tokens") != "50" || h.Get("X-Ratelimit-Remaining-Tokens") != "0" {
		t.Errorf("first stream's token headers: %v", h)
	}

	second := readSSE(t, on(1).URL+"/?prompt=1000")
	if second.status != 200 || second.last != "error" || second.contents < 5 || second.contents > 12 {
		t.Fatalf("second stream: %d tokens, then %q %s; want about 10 and an error event", second.contents, second.last, second.data)
	}
	var ev struct {
		Error struct{ Message, Type string }
	}
	if err := json.Unmarshal([]byte(second.data), &ev); err != nil || ev.Error.Type != "rate_limit_exceeded" ||
		!strings.HasPrefix(ev.Error.Message, "token budget exceeded: 50 tokens per minute; retry in ") {
		t.Errorf("error event %s", second.data)
	}
	deadline := time.Now().Add(time.Second)
	for up.lastHangUp().IsZero() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	hung := up.lastHangUp()
	t.Logf("second stream: %d tokens, then the error event; the upstream saw the hang-up %v after it", second.contents, hung.Sub(second.at))
	if hung.IsZero() || hung.Sub(second.at) > time.Second {
		t.Errorf("the upstream saw the hang-up %v after the error event, want at once", hung.Sub(second.at))
	}
	if sent := up.sent.Load(); sent > 38+12 {
		t.Errorf("the upstream sent %d tokens, %d after the cut", sent, sent-38-int64(second.contents))
	}

	calls := up.calls.Load()
	status, body, h := limited(t, on(2).URL+"/?prompt=38")
	retry := wantRefusal(t, "third request", status, body, h, "token budget exceeded: 50 tokens per minute; retry in {retry}s")
	wait := 60 - time.Since(start).Seconds()
	if float64(retry) < wait-1 || float64(retry) > wait+1 || h.Get("X-Ratelimit-Reset-Tokens") != (time.Duration(retry)*time.Second).String() ||
		h.Get("X-Ratelimit-Remaining-Tokens") != "0" {
		t.Errorf("third request: Retry-After %d, want the %.1fs left of the window; headers %v", retry, wait, h)
	}
	if up.calls.Load() != calls {
		t.Error("the refused request reached the upstream")
	}
}

// Two Caddy instances on one redis share one budget.
func TestTokenBudgetRedis(t *testing.T) {
	rs := redistest.Start(t)
	up := newTokenUpstream(t, 10*time.Millisecond)
	cfg := fmt.Sprintf(budgetConfig, up.URL, "store redis {env.TEST_REDIS_URL}\n\t\t\tzone budget")
	env := withEnv("TEST_REDIS_URL=" + rs.URL())
	a, b := startCaddy(t, cfg, env), startCaddy(t, cfg, env)
	start := time.Now()
	tokenBudgetScenario(t, up, func(i int) *caddy { return []*caddy{a, b}[i%2] }, start)
}

// Requests of one client in parallel overdraw the budget by one request's
// reservation at most: each reserves its max_tokens before it starts.
func TestTokenBudgetParallel(t *testing.T) {
	up := newTokenUpstream(t, 5*time.Millisecond)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		format sse
		max_tokens 20 clamp
		rate_limit 1000-M {
			tokens 100-M
		}
	}
}`, up.URL))
	var delivered, admitted atomic.Int64
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			s := readSSE(t, c.URL+"/?prompt=1000")
			if s.status == 200 {
				admitted.Add(1)
				delivered.Add(int64(s.contents))
			}
		})
	}
	wg.Wait()
	// Each reserves 21 (20 and 1 of prompt); each finished stream is
	// charged 22 (2 of prompt, as the upstream reports it).
	t.Logf("%d streams admitted, %d tokens delivered, %d sent", admitted.Load(), delivered.Load(), up.sent.Load())
	if d := delivered.Load(); d > 100+21 || d < 50 {
		t.Errorf("%d tokens delivered of a budget of 100, want no more than one reservation (21) over", d)
	}
	if s := up.sent.Load(); s > 100+21+admitted.Load() {
		t.Errorf("the upstream generated %d tokens", s)
	}
}

// The token headers count down from one request to the next, in OpenAI's
// form and as the IETF fields' second item.
func TestTokenBudgetHeaders(t *testing.T) {
	up := newTokenUpstream(t, 0)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		format sse
		max_tokens 100 clamp
		rate_limit 10-M {
			tokens 1000-M
		}
	}
}`, up.URL))
	// Each reserves 101 (100 and 1 of prompt) and is charged 40.
	for i, want := range []int{899, 859, 819, 779} {
		s := readSSE(t, c.URL+"/?prompt=38")
		h := s.header
		d, err := time.ParseDuration(h.Get("X-Ratelimit-Reset-Tokens")) // OpenAI's form: 1m0s, 42s
		reset := strconv.Itoa(int(d.Seconds()))
		if s.status != 200 || err != nil || d%time.Second != 0 || d < time.Second || d > time.Minute ||
			h.Get("X-Ratelimit-Limit-Tokens") != "1000" || h.Get("X-Ratelimit-Remaining-Tokens") != strconv.Itoa(want) ||
			h.Get("RateLimit-Policy") != `"default";q=10;w=60, "tokens";q=1000;w=60` ||
			h.Get("RateLimit") != fmt.Sprintf(`"default";r=%d;t=%s, "tokens";r=%d;t=%s`, 9-i, h.Get("X-RateLimit-Reset"), want, reset) {
			t.Errorf("request %d: %d, want %d tokens remaining: %v", i+1, s.status, want, h)
		}
	}
}
