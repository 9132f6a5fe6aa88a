package resume

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Timings of the Redis store.
var (
	// opTimeout bounds every call to Redis but a cursor's blocking read:
	// Create must fail fast when Redis is down, the stream then simply not
	// resumable.
	opTimeout = time.Second
	// liveExpiry is how long a live stream's keys outlive the last sign of
	// its producer; liveRefresh is how often the producer renews them (and
	// looks for a cancel it may have missed).
	liveExpiry  = time.Minute
	liveRefresh = 20 * time.Second
	// readBlock bounds a cursor's XREAD BLOCK, so that Next notices the end
	// of its ctx, or of the stream's keys, at least that often.
	readBlock = time.Second
	// probeEvery is how often, while Redis fails, one call is let through
	// to see whether it is back; the others fail at once with errDown.
	probeEvery = time.Second
)

// errDown fails a call without asking Redis, which failed lately.
var errDown = errors.New("redis failed lately, not asked")

// redisStore shares streams across instances through Redis. The streams
// whose upstream runs here are also kept in mem, so that their own
// instance's cursors (the first client's above all) read them without a
// round trip, and keep reading if Redis goes away mid-stream.
type redisStore struct {
	c      *redis.Client
	prefix string
	opts   Options
	logf   func(string, ...any)
	mem    *memStore

	failing   atomic.Bool  // Redis failed last time; logged once per outage
	nextProbe atomic.Int64 // while failing, when (UnixNano) to ask Redis again
	mu        sync.Mutex   // held to start a goroutine, or to close
	closing   chan struct{}
	wg        sync.WaitGroup
	pubsub    *redis.PubSub
}

// NewRedis returns a Store whose streams live in Redis under prefix, shared
// by every instance with the same prefix. MaxStreams bounds the streams of
// all instances. The store owns client: Close stops the store's goroutines
// and closes it. Give the client ContextTimeoutEnabled, so that a hung
// Redis fails Create within its timeout (a second) too, not only one that
// is down; without it go-redis bounds each read by its ReadTimeout only. logf, if not nil, gets one
// warning when Redis starts failing and one line when it answers again.
func NewRedis(client *redis.Client, prefix string, opts Options, logf func(string, ...any)) Store {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	r := &redisStore{
		c:       client,
		prefix:  prefix,
		opts:    opts.withDefaults(),
		logf:    logf,
		closing: make(chan struct{}),
	}
	// Redis bounds the streams of the fleet; here there are never more
	// than those Redis took.
	memOpts := r.opts
	memOpts.MaxStreams = math.MaxInt
	r.mem = newMemStore(memOpts, r.attachedElsewhere)
	r.subscribe()
	return r
}

// Keys of stream id: its events (a Redis Stream with entry IDs 0-<n>, the
// end as entry last+1 with a field "end"), its meta hash, and the cursors
// of other instances attached to it (a sorted set scored by when each
// cursor's claim lapses).
func (r *redisStore) eventsKey(id string) string   { return r.prefix + id + ":events" }
func (r *redisStore) metaKey(id string) string     { return r.prefix + id + ":meta" }
func (r *redisStore) attachedKey(id string) string { return r.prefix + id + ":attached" }

// streamsKey scores every stream of the prefix by when it expires, to
// count them against MaxStreams.
func (r *redisStore) streamsKey() string { return r.prefix + "streams" }

// cancelChannel carries the IDs of cancelled streams to every instance.
func (r *redisStore) cancelChannel() string { return r.prefix + "cancel" }

// note tells one outage once: a warning when Redis starts failing, a line
// when it answers again. It returns err.
func (r *redisStore) note(err error) error {
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		if r.failing.CompareAndSwap(true, false) {
			r.logf("resume: redis store answers again")
		}
	case errors.Is(err, context.Canceled), errors.Is(err, redis.ErrClosed):
		// The caller left, or the store closed: that says nothing of Redis.
	default:
		r.nextProbe.Store(time.Now().Add(probeEvery).UnixNano())
		if r.failing.CompareAndSwap(false, true) {
			r.logf("resume: redis store failing, new streams are not resumable until it answers: %v", err)
		}
	}
	return err
}

// down tells whether to fail a call without asking Redis: an outage then
// costs a request the timeout once a probeEvery, not each time.
func (r *redisStore) down() bool {
	if !r.failing.Load() {
		return false
	}
	next, now := r.nextProbe.Load(), time.Now().UnixNano()
	return now < next || !r.nextProbe.CompareAndSwap(next, now+int64(probeEvery))
}

// call runs f, a call to Redis bounded by opTimeout, unless Redis is down,
// and notes how it went.
func (r *redisStore) call(ctx context.Context, f func(context.Context) error) error {
	if r.down() {
		return errDown
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return r.note(f(ctx))
}

// pipelined sends what f queues in one round trip, as call does.
func (r *redisStore) pipelined(f func(context.Context, redis.Pipeliner)) error {
	return r.call(context.Background(), func(ctx context.Context) error {
		_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			f(ctx, p)
			return nil
		})
		return err
	})
}

// validID tells an ID NewID could have made from one that is not worth
// asking Redis about: what clients send goes into key names.
func validID(id string) bool {
	if len(id) != 22 {
		return false
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

func nowMS() int64 { return time.Now().UnixMilli() }

func entryID(n int) string { return "0-" + strconv.Itoa(n) }

// createScript counts the live and kept streams of the prefix (forgetting
// those expired) and adds the new one unless MaxStreams are there already.
// It returns 1, or 0 when full, or -1 when the ID is taken.
var createScript = redis.NewScript(`
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
redis.call('HSET', KEYS[2], 'owner', ARGV[5], 'format', ARGV[6], 'model', ARGV[7],
	'first', 1, 'last', 0, 'state', 'live')
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
`)

func (r *redisStore) Create(ctx context.Context, m Meta) (Log, error) {
	if r.closed() {
		return nil, ErrClosed
	}
	if m.ID == "" {
		m.ID = NewID()
	}
	var res int
	err := r.call(ctx, func(ctx context.Context) (err error) {
		res, err = createScript.Run(ctx, r.c,
			[]string{r.streamsKey(), r.metaKey(m.ID)},
			nowMS(), r.opts.MaxStreams, m.ID, ms(liveExpiry), m.Owner, m.Format, m.Model).Int()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("resume: creating stream in redis: %w", err)
	}
	switch res {
	case 0:
		return nil, ErrFull
	case -1:
		return nil, errIDInUse
	}
	s, err := r.mem.create(m)
	if err != nil { // closed meanwhile
		return nil, err
	}
	l := &redisLog{memStream: s, r: r, stop: make(chan struct{})}
	if !r.spawn(l.keepAlive) {
		return nil, ErrClosed
	}
	return l, nil
}

func (r *redisStore) closed() bool {
	select {
	case <-r.closing:
		return true
	default:
		return false
	}
}

// stateNames are the states as the meta hash and the end entry spell them.
var stateNames = [...]string{Live: "live", Done: "done", Failed: "failed", Cancelled: "cancelled"}

func parseState(s string) (State, bool) {
	for st, name := range stateNames {
		if name == s {
			return State(st), true
		}
	}
	return Live, false
}

func (r *redisStore) Read(ctx context.Context, id string, after int) (Cursor, error) {
	if r.closed() {
		return nil, ErrClosed
	}
	if s := r.mem.lookup(id); s != nil {
		return s.open(after)
	}
	if !validID(id) {
		return nil, ErrNotFound
	}
	return r.openRemote(ctx, id, max(after, 0))
}

func (r *redisStore) Meta(ctx context.Context, id string) (Meta, error) {
	if s := r.mem.lookup(id); s != nil {
		return s.meta, nil
	}
	if !validID(id) {
		return Meta{}, ErrNotFound
	}
	rm, err := r.lookup(ctx, id)
	return rm.meta, err
}

// cancelScript marks a live stream cancelled, for a producer that missed
// the message it publishes. It returns 0 when there is no such stream.
var cancelScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') == 'live' then
	redis.call('HSET', KEYS[1], 'cancelled', '1')
	redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return 1
`)

func (r *redisStore) Cancel(ctx context.Context, id string) error {
	if s := r.mem.lookup(id); s != nil {
		s.cancel()
		return nil
	}
	if !validID(id) {
		return ErrNotFound
	}
	var found int
	err := r.call(ctx, func(ctx context.Context) (err error) {
		found, err = cancelScript.Run(ctx, r.c, []string{r.metaKey(id)}, r.cancelChannel(), id).Int()
		return err
	})
	if err != nil {
		return fmt.Errorf("resume: cancelling stream in redis: %w", err)
	}
	if found == 0 {
		return ErrNotFound
	}
	return nil
}

// attachedElsewhere tells whether a cursor of another instance holds a
// claim on stream id that has not lapsed.
func (r *redisStore) attachedElsewhere(id string) bool {
	var n int64
	err := r.call(context.Background(), func(ctx context.Context) (err error) {
		n, err = r.c.ZCount(ctx, r.attachedKey(id), strconv.FormatInt(nowMS(), 10), "+inf").Result()
		return err
	})
	return err == nil && n > 0
}

// spawn runs f in a goroutine Close waits for, unless the store is closed.
func (r *redisStore) spawn(f func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed() {
		return false
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
	return true
}

func (r *redisStore) Close() error {
	r.mu.Lock()
	if r.closed() {
		r.mu.Unlock()
		return nil
	}
	close(r.closing)
	r.mu.Unlock()
	_ = r.pubsub.Close()
	r.wg.Wait()
	_ = r.mem.Close()
	return r.c.Close()
}

// redisLog writes a stream both here (its memStream: local cursors, grace,
// abandonment) and to Redis for the other instances.
type redisLog struct {
	*memStream
	r *redisStore

	mu sync.Mutex // one Append or End at a time, in order
	// broken is set once a write to Redis failed: the stream goes on here,
	// but Redis is not asked again for each event (a down Redis would cost
	// every event the timeout). Cursors elsewhere find the gap and end with
	// ErrBehind.
	broken bool
	stop   chan struct{} // closed at End
}

var _ Log = (*redisLog)(nil)

// Append keeps event here; a failure to copy it to Redis is logged and
// ends only the stream's sharing, never the stream.
func (l *redisLog) Append(event []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.memStream.Append(event); err != nil {
		return err
	}
	if l.broken {
		return nil
	}
	l.memStream.mu.Lock()
	n, first := l.lastLocked(), l.first
	l.memStream.mu.Unlock()
	id := l.meta.ID
	var cancelled *redis.BoolCmd
	err := l.r.pipelined(func(ctx context.Context, p redis.Pipeliner) {
		add := &redis.XAddArgs{Stream: l.r.eventsKey(id), ID: entryID(n), Values: []any{"e", event}}
		if first > 1 {
			add.MinID = entryID(first)
		}
		p.XAdd(ctx, add)
		p.HSet(ctx, l.r.metaKey(id), "first", first, "last", n)
		p.PExpire(ctx, l.r.eventsKey(id), liveExpiry)
		p.PExpire(ctx, l.r.metaKey(id), liveExpiry)
		cancelled = p.HExists(ctx, l.r.metaKey(id), "cancelled")
	})
	if err != nil {
		l.broken = true
		return nil
	}
	if cancelled.Val() {
		l.memStream.cancel()
	}
	return nil
}

func (l *redisLog) End(state State) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.memStream.End(state); err != nil {
		return err
	}
	close(l.stop)
	l.memStream.mu.Lock()
	last := l.lastLocked()
	l.memStream.mu.Unlock()
	// Even a broken stream's end is worth a try: a cursor elsewhere then
	// finds the gap at once instead of waiting for the keys to expire.
	id, ttl := l.meta.ID, l.r.opts.TTL
	err := l.r.pipelined(func(ctx context.Context, p redis.Pipeliner) {
		p.XAdd(ctx, &redis.XAddArgs{Stream: l.r.eventsKey(id), ID: entryID(last + 1), Values: []any{"end", stateNames[state]}})
		p.HSet(ctx, l.r.metaKey(id), "state", stateNames[state])
		p.PExpire(ctx, l.r.eventsKey(id), ttl)
		p.PExpire(ctx, l.r.metaKey(id), ttl)
		p.ZAdd(ctx, l.r.streamsKey(), redis.Z{Score: float64(nowMS() + ms(ttl)), Member: id})
	})
	if err != nil {
		return fmt.Errorf("resume: ending stream in redis: %w", err)
	}
	return nil
}

// Attached counts the cursors of every instance.
func (l *redisLog) Attached() bool {
	return l.memStream.Attached() || l.r.attachedElsewhere(l.meta.ID)
}

// keepAlive renews the live stream's keys while its upstream runs here,
// and looks for a cancel whose message this instance missed.
func (l *redisLog) keepAlive() {
	t := time.NewTicker(liveRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.r.closing:
			return
		case <-t.C:
		}
		id := l.meta.ID
		var cancelled *redis.BoolCmd
		err := l.r.pipelined(func(ctx context.Context, p redis.Pipeliner) {
			p.PExpire(ctx, l.r.eventsKey(id), liveExpiry)
			p.PExpire(ctx, l.r.metaKey(id), liveExpiry)
			p.ZAdd(ctx, l.r.streamsKey(), redis.Z{Score: float64(nowMS() + ms(liveExpiry)), Member: id})
			cancelled = p.HExists(ctx, l.r.metaKey(id), "cancelled")
		})
		if err == nil && cancelled.Val() {
			l.memStream.cancel()
		}
	}
}
