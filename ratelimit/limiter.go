// Package ratelimit decides whether a request may start an LLM stream, and
// when a stream must stop: a fixed-window request rate per client key
// (counted by ulule/limiter in memory or in redis, so several Caddy
// instances can share one limit), an optional cap on the streams a key
// holds open at once, an optional token budget per key, counted while the
// streams run (see tokens.go), and the response headers that tell clients
// where they stand.
//
// It knows nothing of Caddy: the glue resolves placeholders into a key string,
// calls [Limiter.Allow], [Limiter.Acquire] and [Limiter.Reserve], and turns a
// refusal into a 429.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/ulule/limiter/v3"
	"go.uber.org/zap"
)

const (
	defaultIPv4Prefix   = 32
	defaultIPv6Prefix   = 64
	defaultStoreTimeout = 250 * time.Millisecond

	// cleanupInterval is how often expired counters are swept from a memory
	// store; ulule's default, a trade between memory held by departed clients
	// and time spent holding the map.
	cleanupInterval = limiter.DefaultCleanUpInterval

	// redisKeyPrefix makes our keys recognisable among whatever else lives in
	// a shared redis database; Config.Prefix follows it.
	redisKeyPrefix = "llmstream_ratelimit"
)

// Config is the rate_limit directive, resolved.
type Config struct {
	// Rate is ulule's formatted rate: "<limit>-<S|M|H|D>", e.g. "10-M".
	Rate string
	// Store is "" or "memory" for counters private to this process, or a
	// redis://, rediss:// or unix:// URL to share them across instances.
	Store string
	// IPv4Prefix is how many leading bits of an IPv4 client address make one
	// client; 0 means 32.
	IPv4Prefix int
	// IPv6Prefix is the same for IPv6; 0 means 64, because one subscriber
	// usually owns a whole /64 and can rotate through it at will.
	IPv6Prefix int
	// MaxConcurrent caps the streams one key may hold open; 0 means no cap.
	// It is counted per Caddy instance, even with a redis store.
	MaxConcurrent int
	// OnStoreError is "allow" (the default: an outage of the store must not
	// become an outage of the service) or "deny".
	OnStoreError string
	// StoreTimeout bounds one store call so a hung redis delays a request by
	// at most this much; 0 means 250ms.
	StoreTimeout time.Duration
	// Tokens is the token budget per key, as a rate of tokens ("200000-H"),
	// counted in the same store (see [Limiter.Reserve]); "" for none.
	Tokens string
	// Prefix namespaces the keys in a shared store so two limits never share
	// counters; the glue passes something identifying the directive (and
	// ideally its rate, so a changed rate does not inherit a running window).
	// A memory store belongs to one Limiter and needs none.
	Prefix string
}

// settings is a validated Config with its defaults filled in.
type settings struct {
	Config
	rate   limiter.Rate
	tokens limiter.Rate   // Limit 0: no token budget
	redis  *redis.Options // nil for the memory store
	// redisURL is Store with any password replaced, safe to log.
	redisURL string
	failOpen bool
}

// Validate reports every problem in c, or nil.
func (c Config) Validate() error {
	_, err := c.settings()
	return err
}

func (c Config) settings() (settings, error) {
	s := settings{Config: c}
	var errs []error

	rate, err := parseRate(c.Rate)
	if err != nil {
		errs = append(errs, err)
	}
	s.rate = rate
	if c.Tokens != "" {
		if s.tokens, err = parseRate(c.Tokens); err != nil {
			errs = append(errs, fmt.Errorf("tokens: %w", err))
		}
	}

	switch c.Store {
	case "", "memory":
	default:
		s.redis, s.redisURL, err = parseRedisURL(c.Store)
		if err != nil {
			errs = append(errs, err)
		}
	}

	if c.IPv4Prefix < 0 || c.IPv4Prefix > 32 {
		errs = append(errs, fmt.Errorf("ipv4_prefix %d out of range: want 1 to 32", c.IPv4Prefix))
	}
	if c.IPv6Prefix < 0 || c.IPv6Prefix > 128 {
		errs = append(errs, fmt.Errorf("ipv6_prefix %d out of range: want 1 to 128", c.IPv6Prefix))
	}
	if c.MaxConcurrent < 0 {
		errs = append(errs, fmt.Errorf("max_concurrent %d is negative", c.MaxConcurrent))
	}
	switch c.OnStoreError {
	case "", "allow":
		s.failOpen = true
	case "deny":
	default:
		errs = append(errs, fmt.Errorf("on_store_error %q: want allow or deny", c.OnStoreError))
	}
	if c.StoreTimeout < 0 {
		errs = append(errs, fmt.Errorf("store timeout %v is negative", c.StoreTimeout))
	}

	if c.IPv4Prefix == 0 {
		s.IPv4Prefix = defaultIPv4Prefix
	}
	if c.IPv6Prefix == 0 {
		s.IPv6Prefix = defaultIPv6Prefix
	}
	if c.StoreTimeout == 0 {
		s.StoreTimeout = defaultStoreTimeout
	}
	return s, errors.Join(errs...)
}

func parseRate(formatted string) (limiter.Rate, error) {
	if formatted == "" {
		return limiter.Rate{}, errors.New("missing rate: want <limit>-<S|M|H|D>, e.g. 10-M")
	}
	rate, err := limiter.NewRateFromFormatted(formatted)
	if err != nil {
		return limiter.Rate{}, fmt.Errorf("parsing rate %q: %w (want <limit>-<S|M|H|D>, e.g. 10-M)", formatted, err)
	}
	if rate.Limit < 1 {
		return limiter.Rate{}, fmt.Errorf("parsing rate %q: limit must be at least 1", formatted)
	}
	return rate, nil
}

// parseRedisURL never puts the URL's password in an error: configs end up in
// logs and admin API responses.
func parseRedisURL(raw string) (*redis.Options, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL, password included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, "", fmt.Errorf("parsing store url: %w", err)
	}
	safe := u.Redacted()
	switch u.Scheme {
	case "redis", "rediss", "unix":
	default:
		return nil, "", fmt.Errorf("unknown store %q: want memory or a redis://, rediss:// or unix:// url", safe)
	}
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return nil, "", fmt.Errorf("parsing redis url %q: %w", safe, err)
	}
	return opts, safe, nil
}

// Limiter applies one rate_limit directive. It is safe for concurrent use.
type Limiter struct {
	store limiter.Store
	// mem is store when it is a memory store, called directly because it
	// knows the window's end to the nanosecond while ulule's Context rounds
	// it down to a second, and it never blocks, so needs no deadline.
	mem  *memStore
	rate limiter.Rate
	// ns is prepended to keys; empty when the store is private to this
	// Limiter, which spares the hot path a string concatenation.
	ns string
	// tokens is the token budget, Limit 0 for none; its counters are
	// keyed under tokenNS, which names its rate.
	tokens   limiter.Rate
	tokenNS  string
	timeout  time.Duration
	failOpen bool
	log      *zap.Logger

	// failingSince is the UnixNano time the store started failing, 0 while it
	// works; it makes an outage log once instead of once per request.
	failingSince atomic.Int64

	conc concurrency

	closeOnce sync.Once
	closeFn   func() error
	closeErr  error
}

// New validates c and builds its Limiter. A redis store that cannot be reached
// yet is not an error: requests meet on_store_error until it answers, so Caddy
// can start before its redis does. A nil log discards logs.
func New(c Config, log *zap.Logger) (*Limiter, error) {
	s, err := c.settings()
	if err != nil {
		return nil, err
	}
	if s.redis == nil {
		m := newMemStore(cleanupInterval)
		return build(s, log, m, true, m.close), nil
	}

	rs := newRedisStore(s.redis, s.StoreTimeout)
	l := build(s, log, rs, false, rs.close)
	l.log.Info("rate limit store", zap.String("redis", s.redisURL), zap.String("prefix", s.Prefix))
	if err := rs.connect(); err != nil {
		l.storeFailed(fmt.Errorf("rate limit store: %w", err))
	}
	return l, nil
}

// newWithStore builds a Limiter on a store the caller owns (and closes),
// treated as shared so keys are namespaced: the hook tests use to inject
// failing stores or share one memory store between Limiters.
func newWithStore(c Config, log *zap.Logger, st limiter.Store) (*Limiter, error) {
	s, err := c.settings()
	if err != nil {
		return nil, err
	}
	return build(s, log, st, false, nil), nil
}

func build(s settings, log *zap.Logger, st limiter.Store, private bool, closeFn func() error) *Limiter {
	if log == nil {
		log = zap.NewNop()
	}
	l := &Limiter{
		store:    st,
		rate:     s.rate,
		tokens:   s.tokens,
		timeout:  s.StoreTimeout,
		failOpen: s.failOpen,
		log:      log,
		conc:     concurrency{max: s.MaxConcurrent},
		closeFn:  closeFn,
	}
	l.mem, _ = st.(*memStore)
	if !private && s.Prefix != "" {
		l.ns = s.Prefix + ":"
	}
	l.tokenNS = l.ns + "tokens-" + s.Tokens + ":"
	return l
}

// Close releases the store: it stops a memory store's sweeper or closes the
// redis connections. It is idempotent; the Limiter must not be used after.
func (l *Limiter) Close() error {
	l.closeOnce.Do(func() {
		if l.closeFn != nil {
			l.closeErr = l.closeFn()
		}
	})
	return l.closeErr
}

// Decision is the outcome of [Limiter.Allow].
type Decision struct {
	Allowed bool
	// Limit is the rate's request count per window.
	Limit int64
	// Remaining is what is left of Limit in this window; -1 when unknown
	// because the store failed.
	Remaining int64
	// Reset is when the current window ends; zero when unknown.
	Reset time.Time
	// Window is the rate's period.
	Window time.Duration
	// RetryAfter is how long a refused client should wait, in whole seconds
	// rounded up so that waiting exactly that long gets through; 0 when
	// allowed.
	RetryAfter time.Duration
	// StoreError is the store's failure when on_store_error decided.
	StoreError error
}

// Allow counts one request against key and says whether it may proceed. The
// request is counted even when refused, as ulule does: a client hammering
// through its refusals keeps its window full.
func (l *Limiter) Allow(ctx context.Context, key string) Decision {
	k := key
	if l.ns != "" {
		k = l.ns + key
	}

	if l.mem != nil {
		count, expiry := l.mem.take(k, l.rate.Period)
		return l.decide(count, expiry)
	}

	sctx, cancel := context.WithTimeout(ctx, l.timeout)
	lc, err := l.store.Get(sctx, k, l.rate)
	cancel()
	if err != nil {
		err = fmt.Errorf("rate limit store: %w", err)
		// A request abandoned by its client says nothing about the store.
		if ctx.Err() == nil {
			l.storeFailed(err)
		}
		return l.fallback(err)
	}
	l.storeWorks()
	expiry := windowEnd(lc, l.rate.Period)
	count := l.rate.Limit - lc.Remaining
	if lc.Reached {
		count = l.rate.Limit + 1
	}
	return l.decide(count, expiry)
}

// windowEnd is when the window of lc ends, at the latest. Context.Reset is
// the end truncated to a second, up to a second early; a Retry-After
// computed from it could send the client back while still refused. Round it
// up instead, but never past a full window from now, which the real end
// cannot be.
func windowEnd(lc limiter.Context, period time.Duration) time.Time {
	expiry := time.Unix(lc.Reset+1, 0)
	if limit := time.Now().Add(period); expiry.After(limit) {
		expiry = limit
	}
	return expiry
}

// decide turns the window's count after this request into a Decision.
func (l *Limiter) decide(count int64, expiry time.Time) Decision {
	d := Decision{
		Allowed:   count <= l.rate.Limit,
		Limit:     l.rate.Limit,
		Remaining: max(l.rate.Limit-count, 0),
		Reset:     expiry,
		Window:    l.rate.Period,
	}
	if !d.Allowed {
		// Reading the clock only here keeps it off the allowed path; it
		// costs as much as the counting itself on some virtual machines.
		d.RetryAfter = time.Duration(max(ceilSeconds(time.Until(expiry)), 1)) * time.Second
	}
	return d
}

// storeFailed notes a failure, logging only the start of an outage.
func (l *Limiter) storeFailed(err error) {
	if l.failingSince.CompareAndSwap(0, time.Now().UnixNano()) {
		policy := "deny"
		if l.failOpen {
			policy = "allow"
		}
		l.log.Warn("rate limit store failing; applying on_store_error until it recovers",
			zap.Error(err), zap.String("on_store_error", policy))
	}
}

// fallback is the on_store_error decision.
func (l *Limiter) fallback(err error) Decision {
	d := Decision{
		Allowed:    l.failOpen,
		Limit:      l.rate.Limit,
		Remaining:  -1,
		Window:     l.rate.Period,
		StoreError: err,
	}
	if !d.Allowed {
		d.RetryAfter = time.Second
	}
	return d
}

func (l *Limiter) storeWorks() {
	// The plain load keeps the common case free of a contended write.
	since := l.failingSince.Load()
	if since != 0 && l.failingSince.CompareAndSwap(since, 0) {
		l.log.Info("rate limit store recovered",
			zap.Duration("outage", time.Since(time.Unix(0, since))))
	}
}

// ceilSeconds is d in whole seconds, rounded up: a client told to wait that
// long must find the window over.
func ceilSeconds(d time.Duration) int64 {
	s := d / time.Second
	if d%time.Second > 0 {
		s++
	}
	return int64(s)
}
