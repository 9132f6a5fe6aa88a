package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/redistest"
)

// trustLoopback makes caddy take the client's address from
// X-Forwarded-For when the request comes from loopback, as the test's does.
var trustLoopback = withGlobals("\tservers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}")

// completeStream answers every request with a short finished stream.
func completeStream(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	io.WriteString(w, "data: "+chunkJSON("ok")+"\n\ndata: "+finishJSON+"\n\ndata: [DONE]\n\n")
}

// limited sends one request and reads it whole: its status, its body and
// its headers.
func limited(t *testing.T, url string, header ...string) (int, string, http.Header) {
	t.Helper()
	resp := get(t, url, header...)
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// wantRefusal checks a 429 in llm_proxy's error shape and returns its
// Retry-After.
func wantRefusal(t *testing.T, what string, status int, body string, h http.Header, message string) int {
	t.Helper()
	retry, err := strconv.Atoi(h.Get("Retry-After"))
	if status != 429 || err != nil || retry < 1 || retry > 60 {
		t.Fatalf("%s: status %d, Retry-After %q, want 429 and 1 to 60\n%s", what, status, h.Get("Retry-After"), body)
	}
	want := fmt.Sprintf(`{"error":{"message":%q,"type":"rate_limit_exceeded"}}`, strings.ReplaceAll(message, "{retry}", strconv.Itoa(retry)))
	if body != want || h.Get("Content-Type") != "application/json" {
		t.Errorf("%s: body %s (%s), want %s", what, body, h.Get("Content-Type"), want)
	}
	return retry
}

func TestRateLimitHeaders(t *testing.T) {
	up := newUpstream(t, completeStream)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s {
		format text
		rate_limit 3-M
	}
}`, up.URL))

	lastReset := 61
	for i, remaining := range []string{"2", "1", "0"} {
		status, body, h := limited(t, c.URL+"/?prompt=hi")
		if status != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i+1, status, body)
		}
		reset, err := strconv.Atoi(h.Get("X-RateLimit-Reset"))
		if err != nil || reset < 1 || reset > lastReset {
			t.Errorf("request %d: X-RateLimit-Reset %q, want 1 to %d", i+1, h.Get("X-RateLimit-Reset"), lastReset)
		}
		lastReset = reset
		for name, want := range map[string]string{
			"X-RateLimit-Limit":     "3",
			"X-RateLimit-Remaining": remaining,
			"RateLimit-Policy":      `"default";q=3;w=60`,
			"RateLimit":             fmt.Sprintf(`"default";r=%s;t=%d`, remaining, reset),
			"Retry-After":           "",
		} {
			if got := h.Get(name); got != want {
				t.Errorf("request %d: %s %q, want %q", i+1, name, got, want)
			}
		}
	}
	if n := up.calls.Load(); n != 3 {
		t.Fatalf("upstream called %d times, want 3", n)
	}

	// Refused, by GET and by POST (one client, one budget).
	for i, send := range []func() *http.Response{
		func() *http.Response { return get(t, c.URL+"/?prompt=hi") },
		func() *http.Response {
			return post(t, c.URL+"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"stream":true}`)
		},
	} {
		resp := send()
		b, _ := io.ReadAll(resp.Body)
		retry := wantRefusal(t, fmt.Sprintf("refusal %d", i+1), resp.StatusCode, string(b), resp.Header,
			"rate limit exceeded: 3 requests per minute; retry in {retry}s")
		h := resp.Header
		if retry > lastReset || h.Get("X-RateLimit-Reset") != strconv.Itoa(retry) ||
			h.Get("X-RateLimit-Limit") != "3" || h.Get("X-RateLimit-Remaining") != "0" ||
			h.Get("RateLimit-Policy") != `"default";q=3;w=60` || h.Get("RateLimit") != fmt.Sprintf(`"default";r=0;t=%d`, retry) {
			t.Errorf("refusal %d: headers %v (last reset %d)", i+1, h, lastReset)
		}
	}
	if n := up.calls.Load(); n != 3 {
		t.Errorf("upstream called %d times after refusals, want 3", n)
	}
}

func TestRateLimitTrustedProxies(t *testing.T) {
	up := newUpstream(t, completeStream)
	cfg := fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s {
		format text
		rate_limit 2-M
	}
}`, up.URL)

	// Not trusted: a client cannot escape its limit by naming other
	// addresses.
	c := startCaddy(t, cfg)
	for i, xff := range []string{"198.51.100.1", "198.51.100.2", "198.51.100.3, 198.51.100.4"} {
		status, _, _ := limited(t, c.URL+"/?prompt=hi", "X-Forwarded-For", xff)
		if want := map[bool]int{true: 200, false: 429}[i < 2]; status != want {
			t.Errorf("untrusted, X-Forwarded-For %s: status %d, want %d", xff, status, want)
		}
	}

	// Trusted: the forwarded address is the client.
	c = startCaddy(t, cfg, trustLoopback)
	steps := []struct {
		xff       string
		status    int
		remaining string
	}{
		{"198.51.100.1", 200, "1"},
		{"198.51.100.2", 200, "1"},
		{"198.51.100.1", 200, "0"},
		{"198.51.100.1", 429, "0"},
		{"198.51.100.2", 200, "0"},
		{"", 200, "1"}, // the proxy itself
		{"198.51.100.3", 200, "1"},
	}
	for _, s := range steps {
		var hdr []string
		if s.xff != "" {
			hdr = []string{"X-Forwarded-For", s.xff}
		}
		status, _, h := limited(t, c.URL+"/?prompt=hi", hdr...)
		if status != s.status || h.Get("X-RateLimit-Remaining") != s.remaining {
			t.Errorf("trusted, X-Forwarded-For %q: status %d remaining %q, want %d %q", s.xff, status, h.Get("X-RateLimit-Remaining"), s.status, s.remaining)
		}
	}
}

func TestRateLimitIPv6Prefix(t *testing.T) {
	up := newUpstream(t, completeStream)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy /net/* {
		to %[1]s
		format text
		rate_limit 2-M
	}
	llm_proxy /host/* {
		to %[1]s
		format text
		rate_limit 1-M {
			ipv6_prefix 128
		}
	}
}`, up.URL), trustLoopback)
	steps := []struct {
		path, ip  string
		status    int
		remaining string
	}{
		{"/net/", "2001:db8::1", 200, "1"},
		{"/net/", "2001:db8::ffff", 200, "0"}, // the same /64
		{"/net/", "2001:db8::1:0:0:7", 429, "0"},
		{"/net/", "2001:db8:0:1::1", 200, "1"}, // the next /64
		{"/host/", "2001:db8::1", 200, "0"},
		{"/host/", "2001:db8::ffff", 200, "0"}, // its own /128
		{"/host/", "2001:db8::1", 429, "0"},
	}
	for _, s := range steps {
		status, _, h := limited(t, c.URL+s.path+"?prompt=hi", "X-Forwarded-For", s.ip)
		if status != s.status || h.Get("X-RateLimit-Remaining") != s.remaining {
			t.Errorf("%s from %s: status %d remaining %q, want %d %q", s.path, s.ip, status, h.Get("X-RateLimit-Remaining"), s.status, s.remaining)
		}
	}
}

// holdingUpstream streams one chunk, then holds each stream open until the
// test finishes it by its prompt, or the proxy gives up on it.
type holdingUpstream struct {
	*httptest.Server
	calls  atomic.Int32
	mu     sync.Mutex
	finish map[string]chan struct{}
}

func newHoldingUpstream(t *testing.T) *holdingUpstream {
	u := &holdingUpstream{finish: map[string]chan struct{}{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		var req struct {
			Messages []struct{ Content string }
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Messages) == 0 {
			http.Error(w, "bad request", 400)
			return
		}
		done := u.done(req.Messages[0].Content)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("hold")+"\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-done:
			io.WriteString(w, "data: "+finishJSON+"\n\ndata: [DONE]\n\n")
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() {
		u.mu.Lock()
		for _, ch := range u.finish {
			select {
			case <-ch:
			default:
				close(ch)
			}
		}
		u.mu.Unlock()
		u.Close()
	})
	return u
}

func (u *holdingUpstream) done(prompt string) chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	ch := u.finish[prompt]
	if ch == nil {
		ch = make(chan struct{})
		u.finish[prompt] = ch
	}
	return ch
}

// openStream starts a stream as client ip and, when admitted, reads its
// first event.
func openStream(t *testing.T, ctx context.Context, c *caddy, ip, prompt string) (*http.Response, *bufio.Reader) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/?prompt="+prompt, nil)
	req.Header.Set("X-Forwarded-For", ip)
	resp := do(t, req)
	br := bufio.NewReader(resp.Body)
	if resp.StatusCode == 200 {
		if line, err := br.ReadString('\n'); err != nil || line != `{"content":"hold"}`+"\n" {
			t.Fatalf("stream %s: first line %q, %v", prompt, line, err)
		}
	}
	return resp, br
}

func TestRateLimitMaxConcurrent(t *testing.T) {
	up := newHoldingUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s {
		format ndjson
		heartbeat 0
		rate_limit 100-M {
			max_concurrent 2
		}
	}
}`, up.URL), trustLoopback)
	const alice, bob = "198.51.100.1", "198.51.100.2"
	bg := context.Background()

	a1, a1r := openStream(t, bg, c, alice, "a1")
	ctx2, leave2 := context.WithCancel(bg)
	defer leave2()
	a2, _ := openStream(t, ctx2, c, alice, "a2")
	if a1.StatusCode != 200 || a2.StatusCode != 200 {
		t.Fatalf("first two streams: %d %d", a1.StatusCode, a2.StatusCode)
	}

	a3, _ := openStream(t, bg, c, alice, "a3")
	b, _ := io.ReadAll(a3.Body)
	if a3.StatusCode != 429 || a3.Header.Get("Retry-After") != "1" || a3.Header.Get("X-RateLimit-Limit") != "100" ||
		string(b) != `{"error":{"message":"too many concurrent streams for this client: at most 2","type":"rate_limit_exceeded"}}` {
		t.Fatalf("third stream: %d %v %s", a3.StatusCode, a3.Header, b)
	}
	if n := up.calls.Load(); n != 2 {
		t.Fatalf("upstream called %d times, want 2", n)
	}

	// The cap is per client.
	if b1, _ := openStream(t, bg, c, bob, "b1"); b1.StatusCode != 200 {
		t.Fatalf("another client: %d", b1.StatusCode)
	}

	// A stream that ends frees its slot by the time its client has read
	// the end.
	close(up.done("a1"))
	rest, err := io.ReadAll(a1r)
	if err != nil || !strings.Contains(string(rest), `"done":true`) {
		t.Fatalf("a1's end: %q %v", rest, err)
	}
	if a4, _ := openStream(t, bg, c, alice, "a4"); a4.StatusCode != 200 {
		t.Fatalf("after a stream ended: %d", a4.StatusCode)
	}

	// So does a client that leaves (a2), once the proxy noticed.
	if a5, _ := openStream(t, bg, c, alice, "a5"); a5.StatusCode != 429 {
		t.Fatalf("at the cap again: %d", a5.StatusCode)
	}
	leave2()
	a2.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for i := 6; ; i++ {
		s, _ := openStream(t, bg, c, alice, "a"+strconv.Itoa(i))
		if s.StatusCode == 200 {
			break
		}
		s.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("the slot of a client that left was not freed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reload reloads c from its Caddyfile, after edit (if not nil) changed it.
func reload(t *testing.T, c *caddy, edit func(string) string) {
	t.Helper()
	path := filepath.Join(c.dir, "Caddyfile")
	if edit != nil {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(edit(string(b))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	before := strings.Count(c.Log.String(), `"msg":"autosaved config`)
	out, err := exec.Command(caddyBin, "reload", "--force", "--config", path, "--adapter", "caddyfile", "--address", c.Admin).CombinedOutput()
	if err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	// The reload command returns once the new config runs; its log line
	// may take a moment to reach us.
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(c.Log.String(), `"msg":"autosaved config`) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("no new config loaded after the reload:\n%s", c.Log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRateLimitSurvivesReload(t *testing.T) {
	up := newUpstream(t, completeStream)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s {
		format text
		rate_limit 3-M
	}
}`, up.URL))
	remaining := func() string {
		t.Helper()
		_, _, h := limited(t, c.URL+"/?prompt=hi")
		return h.Get("X-RateLimit-Remaining")
	}
	if r1, r2 := remaining(), remaining(); r1 != "2" || r2 != "1" {
		t.Fatalf("remaining %s, %s", r1, r2)
	}

	reload(t, c, nil)
	if r := remaining(); r != "0" {
		t.Errorf("after reloading the same config: remaining %s, want 0 (counters kept)", r)
	}
	if status, _, _ := limited(t, c.URL+"/?prompt=hi"); status != 429 {
		t.Errorf("after reloading the same config: status %d, want 429", status)
	}

	// Another config for the directive (here its framing) is another limit.
	reload(t, c, func(s string) string { return strings.Replace(s, "format text", "format ndjson", 1) })
	if r := remaining(); r != "2" {
		t.Errorf("after changing the directive: remaining %s, want 2 (a new limit)", r)
	}
	// A changed rate starts afresh too.
	reload(t, c, func(s string) string { return strings.Replace(s, "3-M", "5-M", 1) })
	if r := remaining(); r != "4" {
		t.Errorf("after changing the rate: remaining %s, want 4", r)
	}
}

func TestRateLimitKeyPlaceholder(t *testing.T) {
	up := newUpstream(t, completeStream)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s {
		format text
		rate_limit 1-M {
			key {http.request.header.X-Api-Key}
		}
	}
}`, up.URL))
	steps := []struct {
		name, key string
		status    int
	}{
		{"key a", "a", 200},
		{"key a again", "a", 429},
		{"key b", "b", 200},
		{"no key: keyed on the client IP", "", 200},
		{"no key again", "", 429},
		{"a key that names the client IP has its own counter", "127.0.0.1", 200},
		{"key b again", "b", 429},
	}
	for _, s := range steps {
		var hdr []string
		if s.key != "" {
			hdr = []string{"X-Api-Key", s.key}
		}
		if status, _, _ := limited(t, c.URL+"/?prompt=hi", hdr...); status != s.status {
			t.Errorf("%s: status %d, want %d", s.name, status, s.status)
		}
	}
	if n := up.calls.Load(); n != 4 {
		t.Errorf("upstream called %d times, want 4", n)
	}
}

func TestRateLimitHandleErrors(t *testing.T) {
	up := newUpstream(t, completeStream)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		format text
		rate_limit 1-M
	}
	handle_errors 429 {
		respond "limited: {err.message}"
	}
}`, up.URL))
	if status, _, _ := limited(t, c.URL+"/?prompt=hi"); status != 200 {
		t.Fatalf("first request: %d", status)
	}
	status, body, h := limited(t, c.URL+"/?prompt=hi")
	if status != 429 || !strings.HasPrefix(body, "limited: ") || !strings.Contains(body, "rate limit exceeded: 1 request per minute; retry in "+h.Get("Retry-After")+"s") {
		t.Errorf("status %d body %q", status, body)
	}
	if h.Get("Retry-After") == "" || h.Get("Retry-After") != h.Get("X-RateLimit-Reset") || h.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("headers %v", h)
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("upstream called %d times, want 1", n)
	}
}

// TestRateLimitRedis runs two Caddy instances on one redis: one shared limit,
// on_store_error during an outage, and limiting again once redis is back.
func TestRateLimitRedis(t *testing.T) {
	const password = "s3cret-redis-pw"
	rs := redistest.Start(t, "--requirepass", password)
	up := newUpstream(t, completeStream)
	cfg := fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy /allow {
		to %[1]s
		format text
		rate_limit 4-M {
			store redis {env.TEST_REDIS_URL}
			zone shared-allow
		}
	}
	llm_proxy /deny {
		to %[1]s
		format text
		rate_limit 4-M {
			store redis {env.TEST_REDIS_URL}
			on_store_error deny
			zone shared-deny
		}
	}
}`, up.URL)
	env := withEnv(fmt.Sprintf("TEST_REDIS_URL=redis://:%s@%s/0", password, rs.Addr()))
	a, b := startCaddy(t, cfg, env), startCaddy(t, cfg, env)

	// One limit across both instances.
	for _, path := range []string{"/allow", "/deny"} {
		for i, want := range []string{"3", "2", "1", "0", "refused", "refused"} {
			c := []*caddy{a, b}[i%2]
			status, body, h := limited(t, c.URL+path+"?prompt=hi")
			if want == "refused" {
				wantRefusal(t, fmt.Sprintf("%s request %d", path, i+1), status, body, h,
					"rate limit exceeded: 4 requests per minute; retry in {retry}s")
				continue
			}
			if status != 200 || h.Get("X-RateLimit-Remaining") != want {
				t.Fatalf("%s request %d (instance %d): status %d remaining %q, want 200 %s", path, i+1, i%2, status, h.Get("X-RateLimit-Remaining"), want)
			}
		}
	}
	calls := up.calls.Load()

	// Redis goes away: /allow lets requests through, /deny refuses them,
	// promptly, and each limit of each instance warns once.
	rs.Stop()
	for _, c := range []*caddy{a, b} {
		for range 3 {
			start := time.Now()
			status, body, h := limited(t, c.URL+"/allow?prompt=hi")
			if status != 200 || h.Get("X-RateLimit-Limit") != "4" || h.Get("X-RateLimit-Remaining") != "" {
				t.Errorf("/allow in the outage: %d %v %s", status, h, body)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("/allow in the outage took %v", d)
			}
			start = time.Now()
			status, body, h = limited(t, c.URL+"/deny?prompt=hi")
			if status != 429 || h.Get("Retry-After") != "1" ||
				body != `{"error":{"message":"rate limit store unavailable and on_store_error is deny; retry in 1s","type":"rate_limit_exceeded"}}` {
				t.Errorf("/deny in the outage: %d %v %s", status, h, body)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("/deny in the outage took %v", d)
			}
		}
	}
	if n := up.calls.Load() - calls; n != 6 {
		t.Errorf("upstream called %d times in the outage, want 6 (the /allow requests)", n)
	}
	const failing, recovered = `"msg":"rate limit store failing`, `"msg":"rate limit store recovered"`
	waitLog := func(c *caddy, what string, n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for strings.Count(c.Log.String(), what) < n && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i, c := range []*caddy{a, b} {
		waitLog(c, failing, 2)
		log := c.Log.String()
		if n := strings.Count(log, failing); n != 2 || !strings.Contains(log, `"on_store_error":"allow"`) || !strings.Contains(log, `"on_store_error":"deny"`) {
			t.Errorf("instance %d: %d store warnings, want one per limit (2)", i, n)
		}
	}

	// Redis is back (empty): each instance sees it at its next request, and
	// one limit applies again.
	rs.Start()
	resume := func(c *caddy, path string) int {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			status, _, h := limited(t, c.URL+path+"?prompt=hi")
			if r, err := strconv.Atoi(h.Get("X-RateLimit-Remaining")); status == 200 && err == nil {
				return r
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: limiting did not resume after redis came back", path)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, path := range []string{"/allow", "/deny"} {
		// 3 then 2, unless a call that redis counted timed out on the way
		// back (a loaded machine), which only lowers them.
		ra, rb := resume(a, path), resume(b, path)
		if ra > 3 || rb >= ra {
			t.Errorf("%s after the outage: remaining %d then %d, want 3 then 2", path, ra, rb)
		}
		for i, last := 0, rb; last > 0; i++ {
			status, _, h := limited(t, []*caddy{a, b}[i%2].URL+path+"?prompt=hi")
			r, err := strconv.Atoi(h.Get("X-RateLimit-Remaining"))
			if status != 200 || err != nil || r >= last {
				t.Fatalf("%s after the outage: status %d remaining %q after %d", path, status, h.Get("X-RateLimit-Remaining"), last)
			}
			last = r
		}
		for i, c := range []*caddy{a, b} {
			if status, _, _ := limited(t, c.URL+path+"?prompt=hi"); status != 429 {
				t.Errorf("%s after the outage, limit spent: instance %d answered %d, want 429", path, i, status)
			}
		}
	}
	for i, c := range []*caddy{a, b} {
		waitLog(c, recovered, 2)
		log := c.Log.String()
		if n, m := strings.Count(log, failing), strings.Count(log, recovered); n != 2 || m != 2 {
			t.Errorf("instance %d: %d store warnings and %d recoveries, want 2 and 2", i, n, m)
		}
		if strings.Contains(log, password) {
			t.Errorf("instance %d logged the redis password", i)
		}
		if !strings.Contains(log, `"msg":"rate limit store"`) {
			t.Errorf("instance %d did not log its store", i)
		}
	}
}
