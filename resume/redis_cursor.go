package resume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisCursor reads a stream whose upstream runs on another instance:
// XREAD from the entry after the last it returned, blocking at most
// readBlock at a time.
type redisCursor struct {
	r       *redisStore
	meta    Meta
	next    int // the number of the event Next returns
	backlog int
	state   State
	buf     []redis.XMessage

	member string        // its claim in the stream's attached set
	stop   chan struct{} // closed by Close: ends the claim's renewal
	done   chan struct{}
	once   sync.Once
}

var _ Cursor = (*redisCursor)(nil)

// remote is what a stream's meta hash says.
type remote struct {
	meta        Meta
	first, last int
	state       State
}

// lookup reads stream id's meta hash: ErrNotFound when it expired (or is
// not a stream of ours).
func (r *redisStore) lookup(ctx context.Context, id string) (remote, error) {
	var vals []any
	err := r.call(ctx, func(ctx context.Context) (err error) {
		vals, err = r.c.HMGet(ctx, r.metaKey(id), "owner", "format", "model", "first", "last", "state").Result()
		return err
	})
	if err != nil {
		return remote{}, fmt.Errorf("resume: reading stream from redis: %w", err)
	}
	str := func(i int) string { s, _ := vals[i].(string); return s }
	state, ok := parseState(str(5))
	if !ok {
		return remote{}, ErrNotFound
	}
	first, _ := strconv.Atoi(str(3))
	last, _ := strconv.Atoi(str(4))
	return remote{Meta{ID: id, Owner: str(0), Format: str(1), Model: str(2)}, first, last, state}, nil
}

func (r *redisStore) openRemote(ctx context.Context, id string, after int) (Cursor, error) {
	rm, err := r.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	first, last, state := rm.first, rm.last, rm.state
	if after < first-1 {
		return nil, ErrDropped
	}
	if state != Live {
		// Where its end entry is found.
		after = min(after, last)
	}
	c := &redisCursor{
		r:       r,
		meta:    rm.meta,
		next:    after + 1,
		backlog: max(last-after, 0),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if state != Live {
		close(c.done)
		return c, nil
	}
	// A live stream's producer must see this cursor as attached.
	c.member = NewID()
	if err := c.claim(); err != nil {
		return nil, fmt.Errorf("resume: attaching to stream in redis: %w", err)
	}
	if !r.spawn(c.renew) {
		return nil, ErrClosed
	}
	return c, nil
}

// claim says in Redis, for Grace, that this cursor is attached.
func (c *redisCursor) claim() error {
	key, grace := c.r.attachedKey(c.meta.ID), c.r.opts.Grace
	return c.r.pipelined(func(ctx context.Context, p redis.Pipeliner) {
		p.ZAdd(ctx, key, redis.Z{Score: float64(nowMS() + ms(grace)), Member: c.member})
		p.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(nowMS(), 10))
		p.PExpire(ctx, key, 2*grace)
	})
}

// renew renews the claim every Grace/3 until Close, then withdraws it.
func (c *redisCursor) renew() {
	defer close(c.done)
	t := time.NewTicker(max(c.r.opts.Grace/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			_ = c.r.call(context.Background(), func(ctx context.Context) error {
				return c.r.c.ZRem(ctx, c.r.attachedKey(c.meta.ID), c.member).Err()
			})
			return
		case <-c.r.closing:
			return
		case <-t.C:
			_ = c.claim()
		}
	}
}

func (c *redisCursor) Meta() Meta   { return c.meta }
func (c *redisCursor) State() State { return c.state }
func (c *redisCursor) Backlog() int { return c.backlog }

func (c *redisCursor) Close() {
	c.once.Do(func() { close(c.stop) })
	<-c.done
}

// Next returns the next event from its buffer, or reads more.
func (c *redisCursor) Next(ctx context.Context) ([]byte, int, error) {
	for {
		for len(c.buf) > 0 {
			m := c.buf[0]
			c.buf = c.buf[1:]
			n, err := entryNumber(m.ID)
			if err != nil {
				return nil, 0, err
			}
			switch {
			case n < c.next: // already returned
				continue
			case n > c.next: // trimmed before we read it, or lost
				return nil, 0, ErrBehind
			}
			if end, ok := m.Values["end"].(string); ok {
				st, ok := parseState(end)
				if !ok || st == Live {
					return nil, 0, fmt.Errorf("resume: stream %s ends in unknown state %q", c.meta.ID, end)
				}
				c.state = st
				return nil, n - 1, io.EOF
			}
			ev, _ := m.Values["e"].(string)
			c.next++
			return []byte(ev), n, nil
		}
		if err := c.read(ctx); err != nil {
			return nil, 0, err
		}
	}
}

// read fills buf with the entries after the last returned, waiting for
// them at most readBlock at a time.
func (c *redisCursor) read(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if c.r.closed() {
			return ErrClosed
		}
		block := readBlock
		if dl, ok := ctx.Deadline(); ok {
			// Nil before the connection's deadline, which is ctx's.
			if block = min(block, time.Until(dl)-5*time.Millisecond); block < time.Millisecond {
				<-ctx.Done()
				return ctx.Err()
			}
		}
		res, err := c.r.c.XRead(ctx, &redis.XReadArgs{
			Streams: []string{c.r.eventsKey(c.meta.ID), entryID(c.next - 1)},
			Count:   256,
			Block:   block,
		}).Result()
		switch {
		case err == nil:
			if len(res) > 0 && len(res[0].Messages) > 0 {
				c.buf = res[0].Messages
				return nil
			}
		case errors.Is(err, redis.Nil):
			if err := c.check(ctx); err != nil {
				return err
			}
		case ctxEnded(ctx) != nil:
			return ctxEnded(ctx)
		case c.r.closed():
			return ErrClosed
		default:
			return fmt.Errorf("resume: following stream in redis: %w", c.r.note(err))
		}
	}
}

// check looks, when nothing new came, whether there is still something to
// wait for: a producer that died leaves its keys to expire, and a stream
// that ended before the cursor's `after` has its end behind it.
func (c *redisCursor) check(ctx context.Context) error {
	vals, err := c.r.c.HMGet(ctx, c.r.metaKey(c.meta.ID), "state", "last").Result()
	switch {
	case ctxEnded(ctx) != nil:
		return ctxEnded(ctx)
	case c.r.closed():
		return ErrClosed
	case err != nil:
		return fmt.Errorf("resume: following stream in redis: %w", c.r.note(err))
	}
	name, _ := vals[0].(string)
	st, ok := parseState(name)
	if !ok {
		return ErrNotFound
	}
	last, _ := vals[1].(string)
	if n, _ := strconv.Atoi(last); st != Live && c.next > n+1 {
		c.state = st
		return io.EOF
	}
	return nil
}

// ctxEnded is ctx's error, or DeadlineExceeded once its deadline is past:
// the connection's deadline, which is ctx's, may fail a call a moment
// before ctx's own timer fires.
func ctxEnded(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// entryNumber is n of a stream entry ID 0-<n>.
func entryNumber(id string) (int, error) {
	seq, ok := strings.CutPrefix(id, "0-")
	n, err := strconv.Atoi(seq)
	if !ok || err != nil {
		return 0, fmt.Errorf("resume: stream entry ID %q is not one of ours", id)
	}
	return n, nil
}
