package resume

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/llmstream/caddy-llmstream/internal/redistest"
)

// redisOpener starts one redis-server for the suite; each test has its own
// prefix on it, and its two stores have a client each, as two instances.
func redisOpener(t *testing.T) opener {
	srv := redistest.Start(t)
	return func(t *testing.T, opts Options) (Store, Store) {
		prefix := "t" + NewID() + ":"
		a, _ := newTestRedis(t, srv, prefix, opts)
		b, _ := newTestRedis(t, srv, prefix, opts)
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
	s := NewRedis(newTestClient(t, srv), prefix, opts, lg.logf)
	t.Cleanup(func() { _ = s.Close() }) // before the client's Close: cleanups run last first
	return s, lg
}
