package ratelimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/ulule/limiter/v3"
	"github.com/ulule/limiter/v3/drivers/store/common"
	"github.com/ulule/limiter/v3/drivers/store/memory"
	redisstore "github.com/ulule/limiter/v3/drivers/store/redis"
)

// memStore is ulule's memory store with a sweeper we can stop. ulule's own
// memory.Store stops its sweeper only from a finalizer, so a Limiter dropped
// at a config reload would leave a goroutine running until some later GC; the
// counting itself is still ulule's Cache.
type memStore struct {
	cache *memory.CacheWrapper
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

var _ limiter.Store = (*memStore)(nil)

// newMemStore sweeps expired counters every interval; 0 never sweeps, which
// only tests want.
func newMemStore(interval time.Duration) *memStore {
	m := &memStore{
		cache: memory.NewCache(0), // 0: no sweeper of ulule's
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	if interval <= 0 {
		close(m.done)
		return m
	}
	go m.sweep(interval)
	return m
}

func (m *memStore) sweep(interval time.Duration) {
	defer close(m.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			m.cache.Clean()
		case <-m.stop:
			return
		}
	}
}

func (m *memStore) close() error {
	m.once.Do(func() { close(m.stop) })
	<-m.done
	return nil
}

// take counts one hit on key and returns the window's count and end.
func (m *memStore) take(key string, period time.Duration) (int64, time.Time) {
	return m.cache.Increment(key, 1, period)
}

func (m *memStore) Get(ctx context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	return m.Increment(ctx, key, 1, rate)
}

func (m *memStore) Increment(_ context.Context, key string, count int64, rate limiter.Rate) (limiter.Context, error) {
	n, expiry := m.cache.Increment(key, count, rate.Period)
	return common.GetContextFromState(time.Now(), rate, expiry, n), nil
}

func (m *memStore) Peek(_ context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	n, expiry := m.cache.Get(key, rate.Period)
	return common.GetContextFromState(time.Now(), rate, expiry, n), nil
}

func (m *memStore) Reset(_ context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	n, expiry := m.cache.Reset(key, rate.Period)
	return common.GetContextFromState(time.Now(), rate, expiry, n), nil
}

// errStoreConnecting is returned while another request is loading the redis
// scripts; queueing behind it would stretch every request's delay.
var errStoreConnecting = errors.New("redis store not connected yet")

// redisStore is ulule's redis store, created on first contact with redis
// rather than at New: ulule's constructor loads its Lua scripts and fails if
// redis is down, and Caddy should be able to start before its redis does.
type redisStore struct {
	client *redis.Client
	bound  boundedClient
	mu     sync.Mutex // held while connecting
	inner  atomic.Pointer[limiter.Store]
}

var _ limiter.Store = (*redisStore)(nil)

// newRedisStore takes ownership of opts.
func newRedisStore(opts *redis.Options, timeout time.Duration) *redisStore {
	// Without this go-redis ignores context deadlines on reads and writes and
	// applies only its own timeouts (5s by default), so StoreTimeout would
	// not bound a call to a hung redis.
	opts.ContextTimeoutEnabled = true
	c := redis.NewClient(opts)
	return &redisStore{client: c, bound: boundedClient{Client: c, timeout: timeout}}
}

// connect creates ulule's store if it is not there yet.
func (r *redisStore) connect() error {
	_, err := r.ready()
	return err
}

func (r *redisStore) ready() (limiter.Store, error) {
	if st := r.inner.Load(); st != nil {
		return *st, nil
	}
	if !r.mu.TryLock() {
		return nil, errStoreConnecting
	}
	defer r.mu.Unlock()
	if st := r.inner.Load(); st != nil {
		return *st, nil
	}
	st, err := redisstore.NewStoreWithOptions(r.bound, limiter.StoreOptions{Prefix: redisKeyPrefix})
	if err != nil {
		return nil, err
	}
	r.inner.Store(&st)
	return st, nil
}

func (r *redisStore) close() error { return r.client.Close() }

func (r *redisStore) Get(ctx context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	st, err := r.ready()
	if err != nil {
		return limiter.Context{}, err
	}
	return st.Get(ctx, key, rate)
}

func (r *redisStore) Increment(ctx context.Context, key string, count int64, rate limiter.Rate) (limiter.Context, error) {
	st, err := r.ready()
	if err != nil {
		return limiter.Context{}, err
	}
	return st.Increment(ctx, key, count, rate)
}

func (r *redisStore) Peek(ctx context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	st, err := r.ready()
	if err != nil {
		return limiter.Context{}, err
	}
	return st.Peek(ctx, key, rate)
}

func (r *redisStore) Reset(ctx context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	st, err := r.ready()
	if err != nil {
		return limiter.Context{}, err
	}
	return st.Reset(ctx, key, rate)
}

// boundedClient bounds ScriptLoad, which ulule's constructor calls with
// context.Background(); every other call arrives with Allow's deadline.
type boundedClient struct {
	*redis.Client
	timeout time.Duration
}

func (b boundedClient) ScriptLoad(ctx context.Context, script string) *redis.StringCmd {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	return b.Client.ScriptLoad(ctx, script)
}
