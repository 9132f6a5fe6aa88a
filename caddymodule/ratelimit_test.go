package caddymodule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/llmstream/caddy-llmstream/ratelimit"
)

// rateLimitBlock is an llm_proxy directive whose rate_limit has the given
// block lines (none: no block).
func rateLimitBlock(rate string, lines ...string) string {
	s := "llm_proxy http://x/v1 {\n\trate_limit " + rate
	if len(lines) > 0 {
		s += " {\n\t\t" + strings.Join(lines, "\n\t\t") + "\n\t}"
	}
	return s + "\n}"
}

func TestRateLimitUnmarshalCaddyfile(t *testing.T) {
	good := []struct {
		name  string
		block string
		want  RateLimit
	}{
		{"shorthand", rateLimitBlock("10-M"), RateLimit{Rate: "10-M"}},
		{"empty block", "llm_proxy http://x/v1 {\n\trate_limit 3-M {\n\t}\n}", RateLimit{Rate: "3-M"}},
		{"full", rateLimitBlock("100-H",
			"key {http.request.header.X-Api-Key}",
			"store redis redis://127.0.0.1:6379/0",
			"ipv4_prefix 24",
			"ipv6_prefix 56",
			"max_concurrent 2",
			"on_store_error deny",
			"zone chat"),
			RateLimit{Rate: "100-H", Key: "{http.request.header.X-Api-Key}", Store: "redis://127.0.0.1:6379/0",
				IPv4Prefix: 24, IPv6Prefix: 56, MaxConcurrent: 2, OnStoreError: "deny", Zone: "chat"}},
		{"store memory", rateLimitBlock("5-S", "store memory"), RateLimit{Rate: "5-S"}},
		{"store placeholder", rateLimitBlock("1-D", "store redis {env.REDIS_URL}"), RateLimit{Rate: "1-D", Store: "{env.REDIS_URL}"}},
		{"rediss and unix", rateLimitBlock("1-D", "store redis unix:///run/redis.sock"), RateLimit{Rate: "1-D", Store: "unix:///run/redis.sock"}},
		{"on_store_error allow", rateLimitBlock("1-S", "on_store_error allow"), RateLimit{Rate: "1-S", OnStoreError: "allow"}},
		{"full-length prefixes", rateLimitBlock("1-S", "ipv4_prefix 32", "ipv6_prefix 128"), RateLimit{Rate: "1-S", IPv4Prefix: 32, IPv6Prefix: 128}},
	}
	for _, tt := range good {
		t.Run(tt.name, func(t *testing.T) {
			h := new(LLMProxy)
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.block)); err != nil {
				t.Fatalf("%s\n%v", tt.block, err)
			}
			if h.RateLimit == nil || !reflect.DeepEqual(*h.RateLimit, tt.want) {
				t.Fatalf("got %+v, want %+v", h.RateLimit, tt.want)
			}
		})
	}

	bad := []struct{ name, block, want string }{
		{"no rate", "llm_proxy http://x/v1 {\n\trate_limit\n}", "wrong argument count"},
		{"two rates", "llm_proxy http://x/v1 {\n\trate_limit 1-M 2-M\n}", "wrong argument count"},
		{"bad rate", rateLimitBlock("10-X"), `parsing rate "10-X"`},
		{"bad rate words", rateLimitBlock("ten"), `parsing rate "ten"`},
		{"zero rate", rateLimitBlock("0-M"), "limit must be at least 1"},
		{"unknown setting", rateLimitBlock("1-M", "burst 3"), "rate_limit: unknown subdirective burst"},
		{"duplicate setting", rateLimitBlock("1-M", "zone a", "zone b"), "rate_limit: duplicate subdirective zone"},
		{"duplicate rate_limit", "llm_proxy http://x/v1 {\n\trate_limit 1-M\n\trate_limit 2-M\n}", "llm_proxy: duplicate subdirective rate_limit"},
		{"key arity", rateLimitBlock("1-M", "key"), "wrong argument count"},
		{"key empty", rateLimitBlock("1-M", `key ""`), `bad key "": want a non-empty value`},
		{"store unknown", rateLimitBlock("1-M", "store memcached"), `bad store "memcached": want memory or redis <url>`},
		{"store redis without url", rateLimitBlock("1-M", "store redis"), "wrong argument count"},
		{"store memory extra", rateLimitBlock("1-M", "store memory x"), "wrong argument count"},
		{"store bad scheme", rateLimitBlock("1-M", "store redis http://x"), `unknown store "http://x"`},
		{"store password stays out", rateLimitBlock("1-M", "store redis redis://:hunter2@host:notaport/0"), "parsing"},
		{"ipv4 too long", rateLimitBlock("1-M", "ipv4_prefix 33"), `bad ipv4_prefix "33": want an integer from 1 to 32`},
		{"ipv4 zero", rateLimitBlock("1-M", "ipv4_prefix 0"), `bad ipv4_prefix "0"`},
		{"ipv6 too long", rateLimitBlock("1-M", "ipv6_prefix 129"), `bad ipv6_prefix "129": want an integer from 1 to 128`},
		{"ipv6 not a number", rateLimitBlock("1-M", "ipv6_prefix /64"), `bad ipv6_prefix "/64"`},
		{"max_concurrent zero", rateLimitBlock("1-M", "max_concurrent 0"), `bad max_concurrent "0"`},
		{"on_store_error", rateLimitBlock("1-M", "on_store_error ignore"), `bad on_store_error "ignore": want allow or deny`},
		{"zone arity", rateLimitBlock("1-M", "zone a b"), "wrong argument count"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			err := new(LLMProxy).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.block))
			if err == nil {
				t.Fatalf("%s\nparsed without error", tt.block)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "Testfile:") {
				t.Errorf("error %q, want it to contain %q and the file and line", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("password in the error: %v", err)
			}
		})
	}
}

// TestRateLimitProvisionValidates covers configs that did not come through
// the Caddyfile, such as JSON.
func TestRateLimitProvisionValidates(t *testing.T) {
	t.Setenv("LLMSTREAM_TEST_EMPTY", "")
	for _, tt := range []struct {
		rl   RateLimit
		want string
	}{
		{RateLimit{}, "missing rate"},
		{RateLimit{Rate: "5/M"}, `parsing rate "5/M"`},
		{RateLimit{Rate: "5-M", IPv4Prefix: 40}, "ipv4_prefix 40 out of range"},
		{RateLimit{Rate: "5-M", IPv6Prefix: -1}, "ipv6_prefix -1 out of range"},
		{RateLimit{Rate: "5-M", MaxConcurrent: -2}, "max_concurrent -2 is negative"},
		{RateLimit{Rate: "5-M", OnStoreError: "maybe"}, `on_store_error "maybe"`},
		{RateLimit{Rate: "5-M", Store: "ftp://x"}, `unknown store "ftp://x"`},
		{RateLimit{Rate: "5-M", Store: "{env.LLMSTREAM_TEST_EMPTY}"}, "expanded to nothing"},
	} {
		rl := tt.rl
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := rl.Provision(ctx, "llm_proxy", struct{}{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: Provision = %v, want %q", tt.rl, err, tt.want)
		}
		if err := rl.Cleanup(); err != nil {
			t.Errorf("Cleanup after failed Provision: %v", err)
		}
		cancel()
	}
}

// clientRequest is a request as Caddy's server hands it to handlers: with
// a replacer and the client_ip var (which trusted_proxies decides).
func clientRequest(clientIP string, header ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/chat?prompt=hi", nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
	caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, clientIP)
	return r
}

// admit runs Admit and returns the headers and the refusal, if any.
func admit(t *testing.T, rl *RateLimit, r *http.Request) (http.Header, *ratelimit.Refusal, func()) {
	t.Helper()
	w := httptest.NewRecorder()
	release, refused := rl.Admit(w, r)
	if release == nil {
		t.Fatal("Admit returned a nil release")
	}
	return w.Header(), refused, release
}

func TestRateLimitAdmitSequence(t *testing.T) {
	h := provisionProxy(t, rateLimitBlock("3-M"))
	for i, remaining := range []string{"2", "1", "0"} {
		hdr, e, _ := admit(t, h.RateLimit, clientRequest("203.0.113.7"))
		if e != nil {
			t.Fatalf("request %d refused: %v", i+1, e)
		}
		reset := hdr.Get("X-RateLimit-Reset")
		if n, err := strconv.Atoi(reset); err != nil || n < 1 || n > 60 {
			t.Errorf("request %d: X-RateLimit-Reset %q, want 1 to 60", i+1, reset)
		}
		want := http.Header{
			"X-Ratelimit-Limit":     {"3"},
			"X-Ratelimit-Remaining": {remaining},
			"X-Ratelimit-Reset":     {reset},
			"Ratelimit-Policy":      {`"default";q=3;w=60`},
			"Ratelimit":             {`"default";r=` + remaining + ";t=" + reset},
		}
		if !reflect.DeepEqual(hdr, want) {
			t.Errorf("request %d: headers\n%v\nwant\n%v", i+1, hdr, want)
		}
	}

	hdr, e, release := admit(t, h.RateLimit, clientRequest("203.0.113.7"))
	release() // a refusal's release is a no-op, safe to call
	if e == nil {
		t.Fatal("fourth request admitted")
	}
	retry := hdr.Get("Retry-After")
	if n, err := strconv.Atoi(retry); err != nil || n < 1 || n > 60 || retry != hdr.Get("X-RateLimit-Reset") {
		t.Errorf("Retry-After %q, X-RateLimit-Reset %q: want equal, 1 to 60", retry, hdr.Get("X-RateLimit-Reset"))
	}
	want := &ratelimit.Refusal{Status: 429, RetryAfter: retry,
		Message: "rate limit exceeded: 3 requests per minute; retry in " + retry + "s"}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("refusal %+v, want %+v", e, want)
	}
	if hdr.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("refusal headers %v", hdr)
	}

	// Another client has its own budget.
	if _, e, _ := admit(t, h.RateLimit, clientRequest("203.0.113.8")); e != nil {
		t.Errorf("another client refused: %v", e)
	}
}

func TestRateLimitDescribeRate(t *testing.T) {
	h := provisionProxy(t, rateLimitBlock("1-H"))
	admit(t, h.RateLimit, clientRequest("192.0.2.1"))
	_, e, _ := admit(t, h.RateLimit, clientRequest("192.0.2.1"))
	if e == nil || !strings.HasPrefix(e.Message, "rate limit exceeded: 1 request per hour; retry in ") {
		t.Errorf("refusal %v", e)
	}
}

func TestRateLimitPrefixes(t *testing.T) {
	h := provisionProxy(t, rateLimitBlock("2-M", "ipv4_prefix 24"))
	steps := []struct {
		ip      string
		allowed bool
	}{
		{"2001:db8::1", true},
		{"2001:db8::ffff", true}, // the same /64
		{"2001:db8::1:2", false}, // the same /64, over
		{"2001:db8:0:1::1", true},
		{"198.51.100.1", true},
		{"198.51.100.200", true}, // the same /24
		{"198.51.100.7", false},
		{"::ffff:198.51.100.9", false}, // IPv4-mapped is the IPv4 address
		{"198.51.101.1", true},
	}
	for _, s := range steps {
		_, e, _ := admit(t, h.RateLimit, clientRequest(s.ip))
		if (e == nil) != s.allowed {
			t.Errorf("%s: allowed %v, want %v", s.ip, e == nil, s.allowed)
		}
	}
}

func TestRateLimitKeyPlaceholder(t *testing.T) {
	h := provisionProxy(t, rateLimitBlock("1-M", "key {http.request.header.X-Api-Key}"))
	steps := []struct {
		name, ip, apiKey string
		allowed          bool
	}{
		{"key a", "192.0.2.1", "a", true},
		{"key a again, from elsewhere", "192.0.2.2", "a", false},
		{"key b", "192.0.2.1", "b", true},
		{"no key: the client IP", "192.0.2.1", "", true},
		{"no key again", "192.0.2.1", "", false},
		{"no key, another IP", "192.0.2.3", "", true},
		// A header naming an IP does not reach that IP's counter.
		{"key naming an IP", "192.0.2.9", "192.0.2.3", true},
	}
	for _, s := range steps {
		var hdr []string
		if s.apiKey != "" {
			hdr = []string{"X-Api-Key", s.apiKey}
		}
		_, e, _ := admit(t, h.RateLimit, clientRequest(s.ip, hdr...))
		if (e == nil) != s.allowed {
			t.Errorf("%s: allowed %v, want %v", s.name, e == nil, s.allowed)
		}
	}
}

func TestRateLimitMaxConcurrent(t *testing.T) {
	h := provisionProxy(t, rateLimitBlock("100-M", "max_concurrent 2"))
	_, e1, release1 := admit(t, h.RateLimit, clientRequest("192.0.2.1"))
	_, e2, release2 := admit(t, h.RateLimit, clientRequest("192.0.2.1"))
	if e1 != nil || e2 != nil {
		t.Fatalf("refused: %v, %v", e1, e2)
	}
	hdr, e, _ := admit(t, h.RateLimit, clientRequest("192.0.2.1"))
	want := &ratelimit.Refusal{Status: 429, RetryAfter: "1",
		Message: "too many concurrent streams for this client: at most 2"}
	if !reflect.DeepEqual(e, want) {
		t.Fatalf("third stream: %+v, want %+v", e, want)
	}
	if hdr.Get("Retry-After") != "1" || hdr.Get("X-RateLimit-Limit") != "100" || hdr.Get("X-RateLimit-Remaining") != "97" {
		t.Errorf("third stream's headers %v", hdr)
	}
	if _, e, release := admit(t, h.RateLimit, clientRequest("192.0.2.2")); e != nil {
		t.Errorf("another client refused: %v", e)
	} else {
		release()
	}
	release1()
	release1() // twice is harmless
	_, e, release3 := admit(t, h.RateLimit, clientRequest("192.0.2.1"))
	if e != nil {
		t.Fatalf("refused after a release: %v", e)
	}
	release2()
	release3()
}

// TestRateLimitStoreErrorDeny uses a redis nobody listens on.
func TestRateLimitStoreErrorDeny(t *testing.T) {
	t.Setenv("LLMSTREAM_TEST_REDIS", "redis://:hunter2@127.0.0.1:1/0")
	h := provisionProxy(t, rateLimitBlock("5-M", "store redis {env.LLMSTREAM_TEST_REDIS}", "on_store_error deny"))
	hdr, e, _ := admit(t, h.RateLimit, clientRequest("192.0.2.1"))
	if e == nil || e.Status != 429 || e.RetryAfter != "1" || !strings.Contains(e.Message, "store unavailable") {
		t.Fatalf("refusal %+v", e)
	}
	if strings.Contains(e.Message, "hunter2") {
		t.Errorf("password in the message: %v", e)
	}
	// Only what is known: the limit, not a guessed remainder.
	if hdr.Get("X-RateLimit-Limit") != "5" || hdr.Get("X-RateLimit-Remaining") != "" || hdr.Get("Retry-After") != "1" {
		t.Errorf("headers %v", hdr)
	}

	h = provisionProxy(t, rateLimitBlock("5-M", "store redis {env.LLMSTREAM_TEST_REDIS}"))
	if _, e, _ := admit(t, h.RateLimit, clientRequest("192.0.2.1")); e != nil {
		t.Errorf("on_store_error allow refused: %v", e)
	}
}

// limiterKeys lists the pool's keys.
func limiterKeys() []string {
	var keys []string
	limiters.Range(func(k, _ any) bool {
		keys = append(keys, k.(string))
		return true
	})
	return keys
}

// provisionIn provisions a handler in a given config load.
func provisionIn(t *testing.T, ctx caddy.Context, block string) (*LLMProxy, error) {
	t.Helper()
	h := new(LLMProxy)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		h.Cleanup()
		return nil, err
	}
	t.Cleanup(func() { h.Cleanup() })
	return h, nil
}

func newLoad(t *testing.T) caddy.Context {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}

// spend admits n requests from one client and returns the remaining count
// the last one was told.
func spend(t *testing.T, rl *RateLimit, n int) string {
	t.Helper()
	var hdr http.Header
	for range n {
		hdr, _, _ = admit(t, rl, clientRequest("192.0.2.1"))
	}
	return hdr.Get("X-RateLimit-Remaining")
}

func TestRateLimitIdentity(t *testing.T) {
	before := len(limiterKeys())
	block := rateLimitBlock("10-M")

	// A reload: the new config is provisioned while the old one runs.
	old, _ := provisionIn(t, newLoad(t), block)
	spend(t, old.RateLimit, 3)
	reloaded, _ := provisionIn(t, newLoad(t), block)
	old.Cleanup()
	if got := spend(t, reloaded.RateLimit, 1); got != "6" {
		t.Errorf("after a reload: remaining %s, want 6 (counters kept)", got)
	}

	// Two identical directives in one config are separate limits.
	load := newLoad(t)
	a, _ := provisionIn(t, load, block)
	b, _ := provisionIn(t, load, block)
	spend(t, a.RateLimit, 3)
	if got := spend(t, b.RateLimit, 1); got != "9" {
		t.Errorf("identical directive: remaining %s, want 9 (own counters)", got)
	}
	// The first of them is the same limit as the first in earlier loads
	// (4 spent there, 3 here).
	if got := spend(t, a.RateLimit, 1); got != "2" {
		t.Errorf("first identical directive: remaining %s, want 2 (the reloaded limit's counters)", got)
	}

	// A different handler config is a separate limit.
	other, _ := provisionIn(t, newLoad(t), "llm_proxy http://y/v1 {\n\trate_limit 10-M\n}")
	if got := spend(t, other.RateLimit, 1); got != "9" {
		t.Errorf("other directive: remaining %s, want 9", got)
	}

	// A changed rate starts afresh.
	changed, _ := provisionIn(t, newLoad(t), rateLimitBlock("20-M"))
	if got := spend(t, changed.RateLimit, 1); got != "19" {
		t.Errorf("changed rate: remaining %s, want 19", got)
	}

	// A zone is shared on purpose, across handlers.
	zl := newLoad(t)
	z1, _ := provisionIn(t, zl, rateLimitBlock("10-M", "zone z"))
	z2, _ := provisionIn(t, zl, "llm_proxy http://other/v1 {\n\tformat sse\n\trate_limit 10-M {\n\t\tzone z\n\t}\n}")
	spend(t, z1.RateLimit, 4)
	if got := spend(t, z2.RateLimit, 1); got != "5" {
		t.Errorf("zone: remaining %s, want 5 (shared)", got)
	}
	// ...but only with identical settings.
	if _, err := provisionIn(t, zl, rateLimitBlock("11-M", "zone z")); err == nil || !strings.Contains(err.Error(), `zone "z" is used with different settings`) {
		t.Errorf("zone with another rate: %v", err)
	}
	// In the next load, a zone may change its settings, starting afresh.
	z3, err := provisionIn(t, newLoad(t), rateLimitBlock("11-M", "zone z"))
	if err != nil {
		t.Fatal(err)
	}
	if got := spend(t, z3.RateLimit, 1); got != "10" {
		t.Errorf("zone with a changed rate: remaining %s, want 10", got)
	}

	// Cleanup lets go of every limiter, and twice is harmless.
	for _, h := range []*LLMProxy{old, reloaded, a, b, other, changed, z1, z2, z3} {
		if err := h.Cleanup(); err != nil {
			t.Fatal(err)
		}
		if err := h.Cleanup(); err != nil {
			t.Fatal(err)
		}
	}
	if after := limiterKeys(); len(after) != before {
		t.Errorf("pool holds %v after cleanup", after)
	}
}

// TestRateLimitIdentityIgnoresSecrets: the store URL's password is not in
// the pool key or the store's key prefix.
func TestRateLimitIdentityIgnoresSecrets(t *testing.T) {
	t.Setenv("LLMSTREAM_TEST_REDIS", "redis://:hunter2@127.0.0.1:1/0")
	h := provisionProxy(t, rateLimitBlock("5-M", "store redis {env.LLMSTREAM_TEST_REDIS}"))
	for _, k := range limiterKeys() {
		if strings.Contains(k, "hunter2") {
			t.Errorf("password in pool key %q", k)
		}
	}
	cfg, _ := json.Marshal(h)
	if strings.Contains(string(cfg), "hunter2") {
		t.Errorf("password in the config: %s", cfg)
	}
}

// TestRateLimitRefusalNeverReachesUpstream goes through llm_proxy's
// ServeHTTP: a refusal is a 429 in the OpenAI error shape and the upstream
// is not called.
func TestRateLimitRefusalNeverReachesUpstream(t *testing.T) {
	var calls atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
	}))
	defer up.Close()
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\tformat sse\n\trate_limit 2-M\n}")
	srv := serveProxy(t, h)

	for i := range 3 {
		resp, err := http.Get(srv.URL + "/?prompt=hi")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if i < 2 {
			if resp.StatusCode != 200 || resp.Header.Get("X-RateLimit-Remaining") != strconv.Itoa(1-i) {
				t.Errorf("request %d: %d %v", i+1, resp.StatusCode, resp.Header)
			}
			continue
		}
		var got struct {
			Error struct{ Message, Type string }
		}
		if resp.StatusCode != 429 || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &got) != nil ||
			got.Error.Type != "rate_limit_exceeded" || !strings.HasPrefix(got.Error.Message, "rate limit exceeded: 2 requests per minute; retry in ") ||
			resp.Header.Get("Retry-After") == "" || resp.Header.Get("Retry-After") != resp.Header.Get("X-RateLimit-Reset") {
			t.Errorf("refusal: %d %v %s", resp.StatusCode, resp.Header, body)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("upstream called %d times, want 2", n)
	}
}
