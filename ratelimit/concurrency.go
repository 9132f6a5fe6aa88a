package ratelimit

import (
	"sync"
	"sync/atomic"
)

// concurrency counts the streams each key holds open. It lives in the
// process, not the store: even with redis, max_concurrent is per Caddy
// instance, because a count kept in redis would stay inflated forever by
// every instance that died with streams open.
type concurrency struct {
	max  int
	mu   sync.Mutex
	open map[string]int // keys with at least one open stream only
}

func noop() {}

// Acquire reserves one of key's max_concurrent stream slots. When ok, the
// caller must call release once the stream ends; calling it again is harmless.
// When refused, release is a no-op, so it can be deferred either way. With no
// max_concurrent every Acquire succeeds.
//
// The count is per Limiter, so per Caddy instance even when the rate is
// shared through redis.
func (l *Limiter) Acquire(key string) (release func(), ok bool) {
	c := &l.conc
	if c.max <= 0 {
		return noop, true
	}
	c.mu.Lock()
	n := c.open[key]
	if n >= c.max {
		c.mu.Unlock()
		return noop, false
	}
	if c.open == nil {
		c.open = make(map[string]int)
	}
	c.open[key] = n + 1
	c.mu.Unlock()

	var released atomic.Bool
	return func() {
		if released.Swap(true) {
			return
		}
		c.mu.Lock()
		// Deleting at zero keeps the map as small as the set of clients
		// streaming right now, however many have come and gone.
		if n := c.open[key] - 1; n > 0 {
			c.open[key] = n
		} else {
			delete(c.open, key)
		}
		c.mu.Unlock()
	}, true
}
