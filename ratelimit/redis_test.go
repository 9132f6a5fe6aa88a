package ratelimit

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/llmstream/caddy-llmstream/internal/redistest"
)

func newRedisLimiter(t *testing.T, c Config) (*Limiter, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	l, err := New(c, zap.New(core))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l, logs
}

func countLogs(logs *observer.ObservedLogs, msgPrefix string) int {
	n := 0
	for _, e := range logs.All() {
		if strings.HasPrefix(e.Message, msgPrefix) {
			n++
		}
	}
	return n
}

const (
	failingMsg   = "rate limit store failing"
	recoveredMsg = "rate limit store recovered"
)

// waitRecovered calls Allow until the store answers again.
func waitRecovered(t *testing.T, l *Limiter, key string) Decision {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := l.Allow(context.Background(), key)
		if d.StoreError == nil {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover: %v", d.StoreError)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Two Limiters with one Prefix on one redis, as two Caddy instances would
// be, share one limit; then redis hangs, dies and comes back.
func TestRedisSharedLimitAndOutage(t *testing.T) {
	srv := redistest.Start(t)

	const timeout = 200 * time.Millisecond
	base := Config{Rate: "5-M", Store: srv.URL(), Prefix: "site-a", StoreTimeout: timeout}
	openCfg, closedCfg := base, base
	openCfg.OnStoreError = "allow"
	closedCfg.OnStoreError = "deny"
	a, aLogs := newRedisLimiter(t, openCfg)
	b, bLogs := newRedisLimiter(t, closedCfg)
	otherCfg := base
	otherCfg.Prefix = "site-b"
	other, _ := newRedisLimiter(t, otherCfg)
	ctx := context.Background()

	// Shared: five requests in all, whichever instance serves them.
	for i, l := range []*Limiter{a, b, a, b, a} {
		d := l.Allow(ctx, "client")
		if !d.Allowed || d.Remaining != int64(4-i) || d.StoreError != nil {
			t.Fatalf("request %d: %+v", i+1, d)
		}
		if until := time.Until(d.Reset); until <= 0 || until > time.Minute {
			t.Fatalf("request %d: Reset %v away", i+1, until)
		}
	}
	d := b.Allow(ctx, "client")
	if d.Allowed || d.RetryAfter < 58*time.Second || d.RetryAfter > time.Minute || d.RetryAfter%time.Second != 0 {
		t.Fatalf("sixth request: %+v", d)
	}
	if d := other.Allow(ctx, "client"); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("another prefix shares the count: %+v", d)
	}

	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	keys, err := rc.Keys(ctx, "*").Result()
	_ = rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, " ") != "llmstream_ratelimit:site-a:client llmstream_ratelimit:site-b:client" &&
		strings.Join(keys, " ") != "llmstream_ratelimit:site-b:client llmstream_ratelimit:site-a:client" {
		t.Fatalf("redis keys %q", keys)
	}

	// bounded runs Allow and fails if the store call outlived its bound.
	bounded := func(l *Limiter) (Decision, time.Duration) {
		start := time.Now()
		d := l.Allow(ctx, "client")
		took := time.Since(start)
		if took > timeout+500*time.Millisecond {
			t.Fatalf("Allow took %v with a %v store timeout", took, timeout)
		}
		return d, took
	}
	check := func(phase string) {
		t.Helper()
		for range 5 {
			if d, _ := bounded(a); !d.Allowed || d.StoreError == nil || d.Remaining != -1 {
				t.Fatalf("%s, fail open: %+v", phase, d)
			}
			if d, _ := bounded(b); d.Allowed || d.StoreError == nil || d.RetryAfter != time.Second {
				t.Fatalf("%s, fail closed: %+v", phase, d)
			}
		}
	}

	// Hung: the server accepts but never answers; only the deadline ends
	// the call.
	srv.Signal(syscall.SIGSTOP)
	if _, took := bounded(a); took < timeout/2 {
		t.Fatalf("a hung redis answered in %v", took)
	}
	check("hung")
	srv.Signal(syscall.SIGCONT)
	waitRecovered(t, a, "client")
	waitRecovered(t, b, "client")

	// Dead: refused connections.
	srv.Stop()
	check("dead")
	for name, logs := range map[string]*observer.ObservedLogs{"allow": aLogs, "deny": bLogs} {
		if n := countLogs(logs, failingMsg); n != 2 {
			t.Errorf("%s: %d warnings for two outages of many requests, want 2", name, n)
		}
		if n := countLogs(logs, recoveredMsg); n != 1 {
			t.Errorf("%s: %d recoveries logged, want 1", name, n)
		}
	}

	// Back on the same port, empty: ulule reloads its scripts and counting
	// starts afresh.
	srv.Start()
	if d := waitRecovered(t, a, "client"); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("after restart: %+v", d)
	}
	if d := waitRecovered(t, b, "client"); !d.Allowed || d.Remaining != 3 {
		t.Fatalf("after restart, the other instance: %+v", d)
	}
	for name, logs := range map[string]*observer.ObservedLogs{"allow": aLogs, "deny": bLogs} {
		if n := countLogs(logs, recoveredMsg); n != 2 {
			t.Errorf("%s: %d recoveries logged, want 2", name, n)
		}
		warn := logs.FilterMessageSnippet(failingMsg).All()[0]
		if warn.Level != zapcore.WarnLevel {
			t.Errorf("%s: outage logged at %v", name, warn.Level)
		}
	}
}

// Caddy may start before its redis: New succeeds, requests meet
// on_store_error, and the store is picked up once redis answers. The
// password authenticates but never reaches a log line.
func TestRedisStartsLaterAndPasswordStaysOutOfLogs(t *testing.T) {
	const secret = "s3cret-pw"
	srv := redistest.New(t, "--requirepass", secret)
	url := fmt.Sprintf("redis://:%s@%s/0", secret, srv.Addr())

	l, logs := newRedisLimiter(t, Config{Rate: "2-M", Store: url, StoreTimeout: 100 * time.Millisecond})
	for range 3 {
		if d := l.Allow(context.Background(), "k"); !d.Allowed || d.StoreError == nil {
			t.Fatalf("redis not started yet: %+v", d)
		}
	}
	if n := countLogs(logs, failingMsg); n != 1 {
		t.Fatalf("%d warnings, want 1", n)
	}

	srv.Start()
	if d := waitRecovered(t, l, "k"); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("after redis started: %+v", d)
	}
	if d := l.Allow(context.Background(), "k"); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("second request: %+v", d)
	}
	if d := l.Allow(context.Background(), "k"); d.Allowed || d.StoreError != nil {
		t.Fatalf("third request: %+v", d)
	}

	if n := countLogs(logs, recoveredMsg); n != 1 {
		t.Errorf("%d recoveries logged, want 1", n)
	}
	sawURL := false
	for _, e := range logs.All() {
		text := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(text, secret) {
			t.Errorf("log entry leaks the password: %s", text)
		}
		if strings.Contains(text, "redis://:xxxxx@127.0.0.1") {
			sawURL = true
		}
	}
	if !sawURL {
		t.Errorf("the redacted store url was not logged: %v", logs.All())
	}
}
