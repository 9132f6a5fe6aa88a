package resume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// memStore keeps streams in this process. The Redis store keeps a memStore
// too, for the streams whose upstream runs here.
type memStore struct {
	opts Options
	// elsewhere, when set, tells whether a cursor of another instance is
	// attached to stream id; the grace clock asks it before giving up.
	elsewhere func(id string) bool

	mu      sync.Mutex
	streams map[string]*memStream
	closed  bool
}

// NewMemory returns a Store that keeps its streams in this process. It
// starts no goroutine: a stream's grace and expiry are timers.
func NewMemory(opts Options) Store { return newMemStore(opts, nil) }

func newMemStore(opts Options, elsewhere func(id string) bool) *memStore {
	return &memStore{opts: opts.withDefaults(), elsewhere: elsewhere, streams: make(map[string]*memStream)}
}

var errIDInUse = errors.New("resume: stream id in use")

func (m *memStore) Create(_ context.Context, meta Meta) (Log, error) {
	return m.create(meta)
}

func (m *memStore) create(meta Meta) (*memStream, error) {
	if meta.ID == "" {
		meta.ID = NewID()
	}
	s := &memStream{
		store:     m,
		meta:      meta,
		first:     1,
		wake:      make(chan struct{}),
		abandoned: make(chan struct{}),
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return nil, ErrClosed
	case m.streams[meta.ID] != nil:
		return nil, errIDInUse
	case len(m.streams) >= m.opts.MaxStreams:
		return nil, ErrFull
	}
	m.streams[meta.ID] = s
	s.mu.Lock()
	s.armGraceLocked(m.opts.Grace)
	s.mu.Unlock()
	return s, nil
}

func (m *memStore) lookup(id string) *memStream {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.streams[id]
}

func (m *memStore) Read(_ context.Context, id string, after int) (Cursor, error) {
	s := m.lookup(id)
	if s == nil {
		return nil, ErrNotFound
	}
	return s.open(after)
}

func (m *memStore) Meta(_ context.Context, id string) (Meta, error) {
	s := m.lookup(id)
	if s == nil {
		return Meta{}, ErrNotFound
	}
	return s.meta, nil
}

func (m *memStore) Cancel(_ context.Context, id string) error {
	s := m.lookup(id)
	if s == nil {
		return ErrNotFound
	}
	s.cancel()
	return nil
}

// Close stops every stream's timers and ends the cursors still waiting with
// ErrClosed.
func (m *memStore) Close() error {
	m.mu.Lock()
	streams := m.streams
	m.streams = map[string]*memStream{}
	m.closed = true
	m.mu.Unlock()
	for _, s := range streams {
		s.mu.Lock()
		s.closed = true
		s.stopTimersLocked()
		s.broadcastLocked()
		s.mu.Unlock()
	}
	return nil
}

// remove forgets s, TTL after its end.
func (m *memStore) remove(s *memStream) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.streams[s.meta.ID] == s {
		delete(m.streams, s.meta.ID)
	}
}

// memStream is a stream and its Log.
type memStream struct {
	store *memStore
	meta  Meta

	mu     sync.Mutex
	events [][]byte // kept events; events[0] is number first
	first  int
	bytes  int
	ended  bool
	state  State
	closed bool // the store was closed
	// wake is closed, and replaced, whenever an event or the end arrives:
	// a broadcast that never waits for a reader.
	wake chan struct{}

	cursors int
	// graceGen counts attachments and detachments, so that a grace timer
	// armed before one does nothing.
	graceGen int
	grace    *time.Timer
	seenAt   time.Time // when a cursor of another instance was last seen
	expire   *time.Timer

	abandoned chan struct{}
	cause     error
}

var _ Log = (*memStream)(nil)

// last is the number of the last event appended (0: none yet).
func (s *memStream) lastLocked() int { return s.first + len(s.events) - 1 }

func (s *memStream) broadcastLocked() {
	close(s.wake)
	s.wake = make(chan struct{})
}

func (s *memStream) Append(event []byte) error {
	ev := bytes.Clone(event)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return ErrEnded
	}
	s.events = append(s.events, ev)
	s.bytes += len(ev)
	// The newest event stays even when it alone passes MaxBytes: a stream
	// always has its last event for a reader that is keeping up.
	for s.bytes > s.store.opts.MaxBytes && len(s.events) > 1 {
		s.bytes -= len(s.events[0])
		s.events[0] = nil
		s.events = s.events[1:]
		s.first++
	}
	s.broadcastLocked()
	return nil
}

func (s *memStream) End(state State) error {
	if state == Live {
		return fmt.Errorf("resume: ending stream %s in state Live", s.meta.ID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return ErrEnded
	}
	s.ended, s.state = true, state
	s.stopTimersLocked()
	s.broadcastLocked()
	if !s.closed {
		s.expire = time.AfterFunc(s.store.opts.TTL, func() { s.store.remove(s) })
	}
	return nil
}

func (s *memStream) Abandoned() <-chan struct{} { return s.abandoned }

func (s *memStream) Cause() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cause
}

// Attached tells whether a cursor of this store is open; the Redis store
// adds those of other instances.
func (s *memStream) Attached() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursors > 0
}

func (s *memStream) cancel() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		s.abandonLocked(ErrCancelled)
	}
}

func (s *memStream) abandonLocked(cause error) {
	if s.cause != nil {
		return
	}
	s.cause = cause
	close(s.abandoned)
	if s.grace != nil {
		s.grace.Stop()
	}
}

func (s *memStream) stopTimersLocked() {
	if s.grace != nil {
		s.grace.Stop()
	}
	if s.expire != nil {
		s.expire.Stop()
	}
}

// armGraceLocked starts, or restarts, the clock of a stream nobody reads.
func (s *memStream) armGraceLocked(d time.Duration) {
	if s.ended || s.closed || s.cause != nil {
		return
	}
	if s.grace != nil {
		s.grace.Stop()
	}
	gen := s.graceGen
	s.grace = time.AfterFunc(d, func() { s.graceUp(gen) })
}

// graceUp runs when nobody has been attached here for Grace. Before giving
// up it asks whether a cursor elsewhere is attached; while one is, it looks
// again every Grace/3, and gives up Grace after it last saw one.
func (s *memStream) graceUp(gen int) {
	current := func() bool {
		return gen == s.graceGen && s.cursors == 0 && !s.ended && !s.closed && s.cause == nil
	}
	s.mu.Lock()
	if !current() {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	grace := s.store.opts.Grace
	attached := s.store.elsewhere != nil && s.store.elsewhere(s.meta.ID)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !current() {
		return
	}
	if attached {
		s.seenAt = now
		s.armGraceLocked(grace / 3)
		return
	}
	if left := grace - now.Sub(s.seenAt); !s.seenAt.IsZero() && left > 0 {
		s.armGraceLocked(left)
		return
	}
	s.abandonLocked(ErrUnattended)
}

// open attaches a cursor that yields the events after `after`.
func (s *memStream) open(after int) (*memCursor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	after = max(after, 0)
	if after < s.first-1 {
		return nil, ErrDropped
	}
	s.cursors++
	s.graceGen++
	if s.grace != nil {
		s.grace.Stop()
	}
	return &memCursor{s: s, next: after + 1, backlog: max(s.lastLocked()-after, 0)}, nil
}

func (s *memStream) detach() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cursors--
	s.graceGen++
	if s.cursors == 0 {
		s.seenAt = time.Time{}
		s.armGraceLocked(s.store.opts.Grace)
	}
}

// memCursor reads a memStream. It is used by one goroutine at a time.
type memCursor struct {
	s       *memStream
	next    int // the number of the event Next returns
	backlog int
	state   State
	once    sync.Once
}

var _ Cursor = (*memCursor)(nil)

func (c *memCursor) Meta() Meta   { return c.s.meta }
func (c *memCursor) State() State { return c.state }
func (c *memCursor) Backlog() int { return c.backlog }
func (c *memCursor) Close()       { c.once.Do(c.s.detach) }

// Next returns the stored event itself: the caller must not change it.
func (c *memCursor) Next(ctx context.Context) ([]byte, int, error) {
	s := c.s
	for {
		s.mu.Lock()
		switch last := s.lastLocked(); {
		case s.closed:
			s.mu.Unlock()
			return nil, 0, ErrClosed
		case c.next < s.first:
			s.mu.Unlock()
			return nil, 0, ErrBehind
		case c.next <= last:
			ev, n := s.events[c.next-s.first], c.next
			c.next++
			s.mu.Unlock()
			return ev, n, nil
		case s.ended:
			c.state = s.state
			s.mu.Unlock()
			return nil, last, io.EOF
		}
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}
