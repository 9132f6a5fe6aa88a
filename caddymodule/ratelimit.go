package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/llmstream/caddy-llmstream/ratelimit"
)

// RateLimit is the rate_limit subdirective shared by llm_proxy and
// desktop_stream: a request rate per client, and optionally a cap on the
// streams a client holds open. Refused requests get 429 with Retry-After;
// every answer carries X-RateLimit-* and the IETF RateLimit headers.
type RateLimit struct {
	// Requests allowed per client and window, as "<limit>-<S|M|H|D>"
	// (10-M: ten a minute). Every request counts, refused ones too.
	// Required.
	Rate string `json:"rate,omitempty"`

	// A placeholder naming the client, such as
	// {http.request.header.X-Api-Key}. A request for which it expands to
	// nothing is keyed on its client IP instead. Default: the client IP:
	// the connection's peer or, behind the server's trusted_proxies, the
	// right-most X-Forwarded-For address that is not a trusted proxy,
	// whatever trusted_proxies_strict says. {http.vars.client_ip} means the
	// same here.
	Key string `json:"key,omitempty"`

	// Where counters live: "memory" (this process only) or a redis://,
	// rediss:// or unix:// URL, shared by every Caddy instance using it.
	// Placeholders such as {env.REDIS_URL} are expanded when the config
	// loads. Default: memory.
	Store string `json:"store,omitempty"`

	// Leading bits of an IPv4 client address that make one client.
	// Default: 32.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`

	// Leading bits of an IPv6 client address that make one client.
	// Default: 64, because one subscriber usually holds a whole /64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	// Streams one client may hold open at a time, counted per Caddy
	// instance even with a redis store. Default: 0, no cap.
	MaxConcurrent int `json:"max_concurrent,omitempty"`

	// What to do when the store fails or times out: "allow" (fail open)
	// or "deny". The start and end of an outage are logged. Default: allow.
	OnStoreError string `json:"on_store_error,omitempty"`

	// A token budget per client and window, as "<limit>-<S|M|H|D>"
	// (200000-H): prompt and completion tokens, as the upstream reports
	// them, in the same store. A request reserves its max_tokens before it
	// goes upstream, is refused 429 once the budget is spent, and is cut
	// mid-stream when it crosses it. llm_proxy only. Default: none.
	Tokens string `json:"tokens,omitempty"`

	// Directives naming the same zone share their counters, which they
	// otherwise never do; their rate_limit settings must be identical.
	Zone string `json:"zone,omitempty"`

	limiter *ratelimit.Limiter
	poolKey string
	// byIP is set when the key is the client IP, the fast path.
	byIP   bool
	v4, v6 int
	log    *zap.Logger
}

// clientIPPlaceholder is what the Caddyfile makes of {client_ip}.
const clientIPPlaceholder = "{http.vars." + caddyhttp.ClientIPVarKey + "}"

// Provision takes the limiter for this directive from a usage pool, so that
// counters survive a config reload. directive and owner (the handler, still
// as configured: its defaults not yet applied) identify the limit (see
// identify). Its own settings, the store URL as expanded, are part of the
// pool key, so a changed rate or store starts afresh.
func (rl *RateLimit) Provision(ctx caddy.Context, directive string, owner any) error {
	rl.log = ctx.Logger()
	cfg := ratelimit.Config{
		Rate:          rl.Rate,
		Store:         caddy.NewReplacer().ReplaceAll(rl.Store, ""),
		IPv4Prefix:    rl.IPv4Prefix,
		IPv6Prefix:    rl.IPv6Prefix,
		MaxConcurrent: rl.MaxConcurrent,
		OnStoreError:  rl.OnStoreError,
		Tokens:        rl.Tokens,
	}
	if rl.Tokens != "" && directive != "llm_proxy" {
		return fmt.Errorf("rate_limit: tokens applies to llm_proxy only, not %s", directive)
	}
	if rl.Store != "" && cfg.Store == "" {
		return fmt.Errorf("rate_limit: store %q expanded to nothing", rl.Store)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("rate_limit: %w", err)
	}
	rl.byIP = rl.Key == "" || rl.Key == clientIPPlaceholder
	rl.v4, rl.v6 = rl.IPv4Prefix, rl.IPv6Prefix

	// The store URL may hold a password: it enters the pool key hashed.
	settings, err := json.Marshal([]any{cfg.Rate, rl.Key, cfg.Store, cfg.IPv4Prefix, cfg.IPv6Prefix,
		cfg.MaxConcurrent, cfg.OnStoreError, rl.Zone, cfg.Tokens})
	if err != nil {
		return fmt.Errorf("rate_limit: %w", err)
	}
	settingsID := shortHash(settings)

	identity, err := identify(ctx, directive, owner, rl.Zone, settingsID)
	if err != nil {
		return err
	}
	// The rate is in the redis keys, so a changed rate does not inherit a
	// running window from other instances still on the old one.
	cfg.Prefix = identity + ":" + cfg.Rate

	key := identity + ":" + settingsID
	val, _, err := limiters.LoadOrNew(key, func() (caddy.Destructor, error) {
		l, err := ratelimit.New(cfg, rl.log.With(zap.String("rate_limit", cfg.Prefix)))
		if err != nil {
			return nil, err
		}
		return pooledLimiter{l}, nil
	})
	if err != nil {
		return fmt.Errorf("rate_limit: %w", err)
	}
	rl.poolKey = key
	rl.limiter = val.(pooledLimiter).Limiter
	return nil
}

// Admit checks one request: it sets the rate-limit headers on w and returns
// a release func to call when the request ends (for max_concurrent), and
// when refused, why, for the handler to tell in its own shape. release is
// never nil.
func (rl *RateLimit) Admit(w http.ResponseWriter, r *http.Request) (release func(), refused *ratelimit.Refusal) {
	key := rl.clientKey(r)
	d := rl.limiter.Allow(r.Context(), key)
	h := w.Header()
	d.SetHeaders(h, time.Now())
	if !d.Allowed {
		return noRelease, rl.refusal(r, h, d, "rate", "rate limit exceeded: "+ratelimit.DescribeRate(d.Limit, d.Window, "request"))
	}
	release, ok := rl.limiter.Acquire(key)
	if !ok {
		rl.logRefused(r, "max_concurrent")
		h.Set("Retry-After", "1")
		return noRelease, &ratelimit.Refusal{Status: http.StatusTooManyRequests, RetryAfter: "1",
			Message: "too many concurrent streams for this client: at most " + strconv.Itoa(rl.MaxConcurrent)}
	}
	return release, nil
}

func noRelease() {}

// Reserve takes what a request may cost from its client's token budget
// (see ratelimit.Limiter.Reserve), once the request is read and before it
// goes upstream, and sets the token headers on w. It returns the request's
// tab, nil without a token budget, and when refused, why.
func (rl *RateLimit) Reserve(w http.ResponseWriter, r *http.Request, c ratelimit.Cost) (*ratelimit.Tab, *ratelimit.Refusal) {
	if rl == nil || !rl.limiter.HasTokens() {
		return nil, nil
	}
	tab, d := rl.limiter.Reserve(r.Context(), rl.clientKey(r), c)
	h := w.Header()
	d.SetTokenHeaders(h, time.Now())
	if !d.Allowed {
		return nil, rl.refusal(r, h, d, "tokens", (&ratelimit.Exceeded{Limit: d.Limit, Window: d.Window}).Limited())
	}
	return tab, nil
}

// refusal words the refused decision d, whose headers are on h: limited
// says which limit, unless the store failed.
func (rl *RateLimit) refusal(r *http.Request, h http.Header, d ratelimit.Decision, reason, limited string) *ratelimit.Refusal {
	retry := h.Get("Retry-After")
	msg := limited
	if d.StoreError != nil {
		msg = "rate limit store unavailable and on_store_error is deny"
		reason = "store_error"
	}
	rl.logRefused(r, reason)
	return &ratelimit.Refusal{Status: http.StatusTooManyRequests, RetryAfter: retry, Message: msg + "; retry in " + retry + "s"}
}

// clientKey is the key the request counts against. Keys from a placeholder
// are hashed and namespaced: an API key then never sits in redis in clear, an
// oversized header cannot bloat the store, and a client cannot send a header
// that names someone else's IP and drain that IP's counter.
func (rl *RateLimit) clientKey(r *http.Request) string {
	if !rl.byIP {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			if v := repl.ReplaceAll(rl.Key, ""); v != "" {
				return "key:" + shortHash([]byte(ratelimit.ClientKey(v, rl.v4, rl.v6)))
			}
		}
	}
	return ratelimit.ClientKey(clientIP(r), rl.v4, rl.v6)
}

// clientIP is the address a request counts against by default: the client
// that clientAddr finds, whom a forged X-Forwarded-For cannot turn into
// someone else. When it is unknown (a trusted proxy forwarded something
// that is not an address), the peer's, so such clients share the proxy's
// counter rather than escape it.
func clientIP(r *http.Request) string {
	if a := clientAddr(r); a.IsValid() {
		return a.String()
	}
	return r.RemoteAddr // ClientKey drops the port
}

func (rl *RateLimit) logRefused(r *http.Request, reason string) {
	if c := rl.log.Check(zapcore.DebugLevel, "rate limited"); c != nil {
		c.Write(zap.String("reason", reason), zap.String("client_ip", clientIP(r)))
	}
}

// Cleanup releases this directive's hold on the pooled limiter. It is safe
// after a failed Provision and when called twice.
func (rl *RateLimit) Cleanup() error {
	if rl.poolKey == "" {
		return nil
	}
	key := rl.poolKey
	rl.poolKey = ""
	_, err := limiters.Delete(key)
	return err
}
