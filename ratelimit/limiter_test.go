package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ulule/limiter/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := findLeaks(3 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// findLeaks gives goroutines longer to wind down than goleak's own retries
// (about half a second): go-redis's redial loop, started while redis was
// down, sleeps a second between probes and only notices Close when it wakes.
func findLeaks(patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for {
		err := goleak.Find()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func newTest(t testing.TB, c Config) *Limiter {
	t.Helper()
	l, err := New(c, zap.NewNop())
	if err != nil {
		t.Fatalf("New(%+v): %v", c, err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestAllowSequence(t *testing.T) {
	l := newTest(t, Config{Rate: "3-S"})
	ctx := context.Background()
	start := time.Now()
	want := []struct {
		allowed   bool
		remaining int64
	}{{true, 2}, {true, 1}, {true, 0}, {false, 0}}
	var last Decision
	for i, w := range want {
		d := l.Allow(ctx, "203.0.113.7")
		if d.Allowed != w.allowed || d.Limit != 3 || d.Remaining != w.remaining || d.Window != time.Second || d.StoreError != nil {
			t.Fatalf("request %d: got %+v, want allowed=%v limit=3 remaining=%d", i+1, d, w.allowed, w.remaining)
		}
		if w.allowed && d.RetryAfter != 0 {
			t.Errorf("request %d: allowed with RetryAfter %v", i+1, d.RetryAfter)
		}
		last = d
	}
	if time.Since(start) > 900*time.Millisecond {
		t.Skip("too slow to keep four requests in one 1s window")
	}
	if last.RetryAfter != time.Second {
		t.Fatalf("RetryAfter = %v, want 1s (time to reset, rounded up)", last.RetryAfter)
	}
	if until := time.Until(last.Reset); until <= 0 || until > time.Second {
		t.Fatalf("Reset is %v away, want within the 1s window", until)
	}
	// Another key has its own budget.
	if d := l.Allow(ctx, "203.0.113.8"); !d.Allowed || d.Remaining != 2 {
		t.Fatalf("other key: %+v", d)
	}
	// Waiting out RetryAfter must be enough.
	time.Sleep(last.RetryAfter)
	if d := l.Allow(ctx, "203.0.113.7"); !d.Allowed || d.Remaining != 2 {
		t.Fatalf("after waiting RetryAfter: %+v", d)
	}
}

func TestRetryAfterRoundsUp(t *testing.T) {
	l := newTest(t, Config{Rate: "2-M"})
	ctx := context.Background()
	l.Allow(ctx, "k")
	time.Sleep(20 * time.Millisecond)
	l.Allow(ctx, "k")
	d := l.Allow(ctx, "k")
	if d.Allowed {
		t.Fatal("third request in a 2-M window allowed")
	}
	// About 59.98s remain: rounded up, not down to 59 nor to the nearest.
	if d.RetryAfter != time.Minute {
		t.Fatalf("RetryAfter = %v, want 1m0s", d.RetryAfter)
	}
	if until := time.Until(d.Reset); until > time.Minute || until < 59*time.Second {
		t.Fatalf("Reset in %v, want just under a minute", until)
	}
}

func TestPrefixNamespacesSharedStore(t *testing.T) {
	shared := newMemStore(0)
	t.Cleanup(func() { _ = shared.close() })
	mk := func(prefix string) *Limiter {
		l, err := newWithStore(Config{Rate: "2-M", Prefix: prefix}, zap.NewNop(), shared)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a1, a2, b := mk("site-a"), mk("site-a"), mk("site-b")
	ctx := context.Background()

	a1.Allow(ctx, "k")
	if d := a2.Allow(ctx, "k"); d.Remaining != 0 {
		t.Fatalf("same prefix should share the count: %+v", d)
	}
	if d := b.Allow(ctx, "k"); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("different prefix should not share the count: %+v", d)
	}
	for _, k := range []string{"site-a:k", "site-b:k"} {
		if n, _ := shared.cache.Get(k, time.Minute); n == 0 {
			t.Errorf("no counter under %q", k)
		}
	}
	if n, _ := shared.cache.Get("k", time.Minute); n != 0 {
		t.Errorf("counter under the bare key: %d", n)
	}
}

// A Limiter's own memory store cannot be shared, so it skips the prefix.
func TestPrivateMemoryStoreSkipsPrefix(t *testing.T) {
	l := newTest(t, Config{Rate: "2-M", Prefix: "site-a"})
	l.Allow(context.Background(), "k")
	if n, _ := l.mem.cache.Get("k", time.Minute); n != 1 {
		t.Fatalf("count under bare key = %d, want 1", n)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		want string // substring of the error; "" for valid
	}{
		{"minimal", Config{Rate: "10-M"}, ""},
		{"lower-case period", Config{Rate: "100-h"}, ""},
		{"everything", Config{Rate: "1000-D", Store: "rediss://user:pw@redis.example:6380/2", IPv4Prefix: 24, IPv6Prefix: 48, MaxConcurrent: 2, OnStoreError: "deny", StoreTimeout: time.Second, Prefix: "x"}, ""},
		{"memory", Config{Rate: "5-S", Store: "memory", OnStoreError: "allow"}, ""},
		{"prefix extremes", Config{Rate: "5-S", IPv4Prefix: 1, IPv6Prefix: 128}, ""},
		{"missing rate", Config{}, "missing rate"},
		{"rate without period", Config{Rate: "10"}, `parsing rate "10"`},
		{"rate bad period", Config{Rate: "10-W"}, `parsing rate "10-W"`},
		{"rate bad limit", Config{Rate: "ten-M"}, `parsing rate "ten-M"`},
		{"rate zero", Config{Rate: "0-M"}, "limit must be at least 1"},
		{"ipv4 too wide", Config{Rate: "1-S", IPv4Prefix: 33}, "ipv4_prefix 33 out of range"},
		{"ipv4 negative", Config{Rate: "1-S", IPv4Prefix: -1}, "ipv4_prefix -1 out of range"},
		{"ipv6 too wide", Config{Rate: "1-S", IPv6Prefix: 129}, "ipv6_prefix 129 out of range"},
		{"negative max_concurrent", Config{Rate: "1-S", MaxConcurrent: -1}, "max_concurrent -1 is negative"},
		{"bad on_store_error", Config{Rate: "1-S", OnStoreError: "ignore"}, `on_store_error "ignore"`},
		{"negative timeout", Config{Rate: "1-S", StoreTimeout: -time.Second}, "store timeout -1s is negative"},
		{"unknown store", Config{Rate: "1-S", Store: "memcached://host"}, `unknown store "memcached://host"`},
		{"bare word store", Config{Rate: "1-S", Store: "redis"}, `unknown store "redis"`},
		{"bad redis db", Config{Rate: "1-S", Store: "redis://:s3cret@host:6379/notanumber"}, `parsing redis url "redis://:xxxxx@host:6379/notanumber"`},
		{"unparsable url", Config{Rate: "1-S", Store: "redis://:s3cret@host:port/0"}, "parsing store url: invalid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error leaks the password: %v", err)
			}
			if _, err := New(tc.c, nil); err == nil {
				t.Fatal("New accepted what Validate refused")
			}
		})
	}
	// Every problem is reported at once.
	err := Config{Rate: "x", IPv4Prefix: 40, OnStoreError: "maybe"}.Validate()
	for _, want := range []string{"parsing rate", "ipv4_prefix", "on_store_error"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("joined error %v lacks %q", err, want)
		}
	}
}

// flakyStore fails every call while fail is set, and hangs until the
// deadline while hang is set.
type flakyStore struct {
	limiter.Store
	fail, hang atomic.Bool
}

var errDown = errors.New("connection refused")

func (f *flakyStore) Get(ctx context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	if f.hang.Load() {
		<-ctx.Done()
		return limiter.Context{}, ctx.Err()
	}
	if f.fail.Load() {
		return limiter.Context{}, errDown
	}
	return f.Store.Get(ctx, key, rate)
}

func newFlaky(t *testing.T, c Config) (*Limiter, *flakyStore, *observer.ObservedLogs) {
	t.Helper()
	mem := newMemStore(0)
	t.Cleanup(func() { _ = mem.close() })
	fs := &flakyStore{Store: mem}
	core, logs := observer.New(zapcore.InfoLevel)
	l, err := newWithStore(c, zap.New(core), fs)
	if err != nil {
		t.Fatal(err)
	}
	return l, fs, logs
}

func TestStoreErrorAllow(t *testing.T) {
	l, fs, logs := newFlaky(t, Config{Rate: "5-M"})
	ctx := context.Background()
	if d := l.Allow(ctx, "k"); !d.Allowed || d.Remaining != 4 || d.StoreError != nil {
		t.Fatalf("healthy: %+v", d)
	}

	fs.fail.Store(true)
	for range 10 {
		d := l.Allow(ctx, "k")
		if !d.Allowed || d.Limit != 5 || d.Remaining != -1 || !d.Reset.IsZero() || d.RetryAfter != 0 || !errors.Is(d.StoreError, errDown) {
			t.Fatalf("failing, fail open: %+v", d)
		}
	}
	fs.fail.Store(false)
	for range 10 {
		if d := l.Allow(ctx, "k"); d.StoreError != nil {
			t.Fatalf("recovered: %+v", d)
		}
	}
	fs.fail.Store(true)
	l.Allow(ctx, "k")
	l.Allow(ctx, "k")

	var got []string
	for _, e := range logs.All() {
		got = append(got, e.Level.String()+" "+e.Message)
	}
	want := []string{
		"warn rate limit store failing; applying on_store_error until it recovers",
		"info rate limit store recovered",
		"warn rate limit store failing; applying on_store_error until it recovers",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("logs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	warn := logs.All()[0].ContextMap()
	if warn["on_store_error"] != "allow" || !strings.Contains(fmt.Sprint(warn["error"]), "connection refused") {
		t.Errorf("warning fields: %v", warn)
	}
}

func TestStoreErrorDeny(t *testing.T) {
	l, fs, logs := newFlaky(t, Config{Rate: "5-M", OnStoreError: "deny"})
	fs.fail.Store(true)
	for range 5 {
		d := l.Allow(context.Background(), "k")
		if d.Allowed || d.RetryAfter != time.Second || d.Remaining != -1 || d.StoreError == nil {
			t.Fatalf("failing, fail closed: %+v", d)
		}
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
		t.Fatalf("%d warnings for one outage, want 1", n)
	}
}

func TestStoreTimeoutBoundsCall(t *testing.T) {
	l, fs, _ := newFlaky(t, Config{Rate: "5-M", StoreTimeout: 50 * time.Millisecond})
	fs.hang.Store(true)
	start := time.Now()
	d := l.Allow(context.Background(), "k")
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Allow took %v with a 50ms store timeout", took)
	}
	if !d.Allowed || !errors.Is(d.StoreError, context.DeadlineExceeded) {
		t.Fatalf("hung store: %+v", d)
	}
}

// A client hanging up mid-call is not a store outage.
func TestCanceledRequestIsNotAnOutage(t *testing.T) {
	l, fs, logs := newFlaky(t, Config{Rate: "5-M", OnStoreError: "deny"})
	fs.hang.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	d := l.Allow(ctx, "k")
	if d.Allowed || !errors.Is(d.StoreError, context.Canceled) {
		t.Fatalf("canceled request: %+v", d)
	}
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d log entries for a canceled request: %v", n, logs.All())
	}
}

// The outage must be reported once however many requests race into it.
func TestStoreErrorLogsOnceUnderConcurrency(t *testing.T) {
	l, fs, logs := newFlaky(t, Config{Rate: "5-M"})
	fs.fail.Store(true)
	done := make(chan struct{})
	for range 16 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 100 {
				l.Allow(context.Background(), "k")
			}
		}()
	}
	for range 16 {
		<-done
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d log entries, want 1", n)
	}
}

func TestCloseIdempotent(t *testing.T) {
	l, err := New(Config{Rate: "1-S"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAllowMemory(b *testing.B) {
	ctx := context.Background()
	b.Run("hot key", func(b *testing.B) {
		l := newTest(b, Config{Rate: "1000000000-D"})
		b.ReportAllocs()
		for b.Loop() {
			l.Allow(ctx, "203.0.113.7")
		}
	})
	b.Run("hot key parallel", func(b *testing.B) {
		l := newTest(b, Config{Rate: "1000000000-D"})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Allow(ctx, "203.0.113.7")
			}
		})
	})
	// Distinct keys cycling through a fixed set: the counters exist after the
	// first lap, as they do for returning clients.
	b.Run("many keys", func(b *testing.B) {
		l := newTest(b, Config{Rate: "1000000000-D"})
		keys := make([]string, 1<<16)
		for i := range keys {
			keys[i] = "10.0." + strconv.Itoa(i>>8) + "." + strconv.Itoa(i&255)
		}
		for _, k := range keys {
			l.Allow(ctx, k)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			l.Allow(ctx, keys[i&(len(keys)-1)])
			i++
		}
	})
	// Every request from a client never seen: the cost of creating a counter.
	b.Run("new keys", func(b *testing.B) {
		l := newTest(b, Config{Rate: "1000000000-D"})
		keys := make([]string, b.N)
		for i := range keys {
			keys[i] = strconv.Itoa(i)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			l.Allow(ctx, keys[i])
		}
	})
	// With a namespace, as on a shared store.
	b.Run("hot key prefixed", func(b *testing.B) {
		mem := newMemStore(0)
		defer mem.close()
		l, err := newWithStore(Config{Rate: "1000000000-D", Prefix: "site-a"}, zap.NewNop(), mem)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			l.Allow(ctx, "203.0.113.7")
		}
	})
}
