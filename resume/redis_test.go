package resume

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmstream/caddy-llmstream/internal/redistest"
)

// redisOpener starts one redis-server for the suite; each test has its own
// prefix on it, and its two stores have a client each, as two instances.
func redisOpener(t *testing.T) opener {
	srv := redistest.Start(t)
	return func(t *testing.T, opts Options) (Store, Store) {
		prefix := "t" + NewID() + ":"
		// Registered before the stores, this runs after their Close:
		// nothing logs any more. A store of the suite logs only an outage.
		lg := &logs{}
		t.Cleanup(func() {
			for _, line := range lg.lines {
				t.Errorf("logged: %s", line)
			}
		})
		a := openTestRedis(t, srv, prefix, opts, lg)
		b := openTestRedis(t, srv, prefix, opts, lg)
		return a, b
	}
}

// logs records what a store logs.
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logs) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

func newTestClient(t *testing.T, srv *redistest.Server) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newTestRedis(t *testing.T, srv *redistest.Server, prefix string, opts Options) (Store, *logs) {
	t.Helper()
	lg := &logs{}
	return openTestRedis(t, srv, prefix, opts, lg), lg
}

func openTestRedis(t *testing.T, srv *redistest.Server, prefix string, opts Options, lg *logs) Store {
	t.Helper()
	s := NewRedis(newTestClient(t, srv), prefix, opts, lg.logf)
	t.Cleanup(func() { _ = s.Close() }) // before the client's Close: cleanups run last first
	return s
}

// With Redis down, Create fails at once and the outage is logged once;
// when it is back, streams are resumable again and that is logged too.
func TestRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	s, lg := newTestRedis(t, srv, "down:", Options{})
	l, _ := create(t, s)
	_ = l.End(Done)
	srv.Stop()
	for i := range 5 {
		start := time.Now()
		if _, err := s.Create(context.Background(), testMeta()); err == nil {
			t.Fatal("Create succeeded with Redis down")
		}
		// The first waits for Redis at most opTimeout; the next are not
		// held up by it at all.
		limit := opTimeout / 2
		if i == 0 {
			limit = 2 * opTimeout
		}
		if d := time.Since(start); d > limit {
			t.Fatalf("Create %d took %v to fail", i+1, d)
		}
	}
	if n := lg.count("failing"); n != 1 {
		t.Fatalf("%d warnings for one outage, want 1: %q", n, lg.lines)
	}
	srv.Start()
	eventually(t, 10*time.Second, "Create after Redis came back", func() bool {
		l, err := s.Create(context.Background(), testMeta())
		if err == nil {
			_ = l.End(Done)
		}
		return err == nil
	})
	if n := lg.count("answers again"); n != 1 {
		t.Fatalf("%d lines for the recovery, want 1: %q", n, lg.lines)
	}
}

// A stream whose Redis goes away mid-stream goes on for its own
// instance's cursors.
func TestRedisDownMidStream(t *testing.T) {
	srv := redistest.Start(t)
	s, lg := newTestRedis(t, srv, "mid:", Options{})
	l, m := create(t, s)
	c := read(t, s, m.ID, 0)
	appendN(t, l, 1, 2)
	srv.Stop()
	appendN(t, l, 3, 5)
	if err := l.End(Done); err == nil {
		t.Error("End with Redis down did not say so")
	}
	drain(t, c, 1, 5, Done)
	if n := lg.count("failing"); n != 1 {
		t.Fatalf("%d warnings for one outage, want 1: %q", n, lg.lines)
	}
}

// A cursor elsewhere whose stream's keys vanish (its producer died and
// they expired) ends with ErrNotFound instead of waiting for ever.
func TestRedisProducerGone(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newTestRedis(t, srv, "gone:", Options{})
	b, _ := newTestRedis(t, srv, "gone:", Options{})
	l, m := create(t, a)
	defer l.End(Failed)
	appendN(t, l, 1, 1)
	c := read(t, b, m.ID, 0)
	if _, n, err := c.Next(ctxFor(t, wait)); err != nil || n != 1 {
		t.Fatalf("Next = %d, %v", n, err)
	}
	rc := newTestClient(t, srv)
	if err := rc.Del(context.Background(), "gone:"+m.ID+":meta", "gone:"+m.ID+":events").Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Next(ctxFor(t, 3*readBlock)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Next after the keys went: %v, want ErrNotFound", err)
	}
}

// Nothing of a stream is left in Redis TTL after its end but its place in
// the count of streams, which the next Create forgets.
func TestRedisKeysExpire(t *testing.T) {
	srv := redistest.Start(t)
	opts := Options{TTL: 100 * time.Millisecond, Grace: grace}
	a, _ := newTestRedis(t, srv, "exp:", opts)
	b, _ := newTestRedis(t, srv, "exp:", opts)
	l, m := create(t, a)
	c := read(t, b, m.ID, 0)
	appendN(t, l, 1, 3)
	_ = l.End(Done)
	drain(t, c, 1, 3, Done)
	c.Close()
	rc := newTestClient(t, srv)
	eventually(t, 3*time.Second, "keys expired", func() bool {
		keys, err := rc.Keys(context.Background(), "exp:*").Result()
		return err == nil && len(keys) == 1 && keys[0] == "exp:streams"
	})
	l, _ = create(t, a)
	_ = l.End(Done)
	if n, err := rc.ZCard(context.Background(), "exp:streams").Result(); err != nil || n != 1 {
		t.Fatalf("streams counted: %d, %v; want 1", n, err)
	}
}

// A producer that missed the cancel message finds the cancel in the meta
// hash: at its next Append, or when it renews its keys with nothing to
// append.
func TestRedisCancelMissed(t *testing.T) {
	srv := redistest.Start(t)
	saved := liveRefresh
	t.Cleanup(func() { liveRefresh = saved })
	for _, idle := range []bool{false, true} {
		t.Run(fmt.Sprintf("idle=%v", idle), func(t *testing.T) {
			if idle { // before the store starts, which reads it
				liveRefresh = 50 * time.Millisecond
			}
			s, _ := newTestRedis(t, srv, "missed:", Options{})
			l, m := create(t, s)
			c := read(t, s, m.ID, 0)
			rc := newTestClient(t, srv)
			if err := rc.HSet(context.Background(), "missed:"+m.ID+":meta", "cancelled", "1").Err(); err != nil {
				t.Fatal(err)
			}
			if !idle {
				appendN(t, l, 1, 1)
			}
			if !closedWithin(l.Abandoned(), wait) || !errors.Is(l.Cause(), ErrCancelled) {
				t.Fatalf("the cancel was not found: %v", l.Cause())
			}
			_ = l.End(Cancelled)
			c.Close()
		})
	}
}

func TestValidID(t *testing.T) {
	if id := NewID(); !validID(id) {
		t.Errorf("validID(%q) = false for NewID's", id)
	}
	for _, id := range []string{"", "short", "AAAAAAAAAAAAAAAAAAAA:meta", "AAAAAAAAAAAAAAAAAAAA*A", NewID() + "A"} {
		if validID(id) {
			t.Errorf("validID(%q) = true", id)
		}
	}
}

// A hung Redis (it takes connections but answers nothing) fails Create
// within its timeout too, given a client with ContextTimeoutEnabled.
func TestRedisHung(t *testing.T) {
	srv := redistest.Start(t)
	s, lg := newTestRedis(t, srv, "hung:", Options{})
	l, _ := create(t, s) // a pooled connection to hang on
	_ = l.End(Done)
	srv.Signal(syscall.SIGSTOP)
	start := time.Now()
	_, err := s.Create(context.Background(), testMeta())
	d := time.Since(start)
	srv.Signal(syscall.SIGCONT)
	if err == nil {
		t.Fatal("Create succeeded with Redis hung")
	}
	if d > 2*opTimeout {
		t.Fatalf("Create took %v to fail", d)
	}
	if n := lg.count("failing"); n != 1 {
		t.Fatalf("%d warnings, want 1: %q", n, lg.lines)
	}
}
