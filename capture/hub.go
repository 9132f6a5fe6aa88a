package capture

import (
	"context"
	"errors"
	"hash/maphash"
	"image"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned to viewers of a Hub that was closed.
var ErrClosed = errors.New("capture stopped")

// Options configure a Hub. Zero values take the defaults.
type Options struct {
	// FPS is how many times a second the screen is grabbed. Default: 10.
	FPS int
	// Quality is the JPEG quality, 1-100. Default: 70.
	Quality int
	// MaxWidth scales wider screens down to this width, keeping the aspect
	// ratio. Default: 0, the native size.
	MaxWidth int
	// Keepalive is how often an unchanged screen's frame is sent again.
	// Default: 2s.
	Keepalive time.Duration
	// Linger is how long the loop keeps grabbing after the last viewer
	// left, so a reconnecting viewer finds it running. Default: 1s.
	Linger time.Duration
	// OnFailure is called when grabbing starts failing: once per outage,
	// however many viewers retry. OnRecovery is called when it works again.
	// They are called from the loop and must not block.
	OnFailure  func(error)
	OnRecovery func()
}

// Frame is one encoded picture. Viewers share it: it must not be modified.
type Frame struct {
	JPEG          []byte
	Width, Height int
	Captured      time.Time

	id uint64 // the same for a frame and its repeats
}

// Stats counts a Hub's work.
type Stats struct {
	Captures uint64 // grabs, failed ones included
	Encodes  uint64 // JPEG encodings; an unchanged screen is not encoded
	Viewers  int
	Running  bool
}

// Hub runs one capture-and-encode loop for any number of viewers. The loop
// starts with the first viewer and stops Linger after the last one leaves.
// Each tick it grabs the screen; when the pixels changed it scales and
// encodes them once and publishes the frame, else it publishes nothing but
// the tick, and every Keepalive a repeat of the last frame. Viewers never
// hold the loop back: they read the latest frame when they are ready (see
// Viewer.Next), so a slow one skips frames.
type Hub struct {
	grab Grabber
	opts Options
	seed maphash.Seed

	mu      sync.Mutex
	viewers int
	left    time.Time // when the viewer count last fell to 0
	running bool
	closed  bool
	frame   *Frame // latest; nil until the first grab, after a failure, or when stopped
	err     error  // the last grab's failure, until one works
	pub     uint64 // publications: new frames and repeats
	tick    uint64 // loop iterations
	failing bool   // between OnFailure and OnRecovery
	wake    chan struct{}

	stop chan struct{}
	wg   sync.WaitGroup

	captures atomic.Uint64
	encodes  atomic.Uint64
}

// NewHub returns a Hub grabbing from g. Nothing runs until a viewer joins.
// If g is an io.Closer, the loop closes it whenever it stops; g must then
// reopen what it needs on the next Grab, as Screen does.
func NewHub(g Grabber, o Options) *Hub {
	if o.FPS <= 0 {
		o.FPS = 10
	}
	if o.Quality <= 0 {
		o.Quality = 70
	}
	if o.Keepalive <= 0 {
		o.Keepalive = 2 * time.Second
	}
	if o.Linger <= 0 {
		o.Linger = time.Second
	}
	return &Hub{
		grab: g,
		opts: o,
		seed: maphash.MakeSeed(),
		wake: make(chan struct{}),
		stop: make(chan struct{}),
	}
}

// Join adds a viewer, starting the loop if it is not running.
func (h *Hub) Join() (*Viewer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	h.viewers++
	if !h.running {
		h.running = true
		h.wg.Add(1)
		go h.run()
	}
	return &Viewer{h: h}, nil
}

// Close stops the loop for good, ends every viewer's Next with ErrClosed and
// waits for the loop to return.
func (h *Hub) Close() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.stop)
		h.broadcast()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// Destruct closes h; it makes a Hub a caddy.Destructor.
func (h *Hub) Destruct() error {
	h.Close()
	return nil
}

// Stats returns h's counters.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Stats{
		Captures: h.captures.Load(),
		Encodes:  h.encodes.Load(),
		Viewers:  h.viewers,
		Running:  h.running,
	}
}

// broadcast wakes every waiting viewer. h.mu must be held.
func (h *Hub) broadcast() {
	close(h.wake)
	h.wake = make(chan struct{})
}

// loop is the state that lives as long as one run of the loop.
type loop struct {
	have   bool // sum and size describe the published frame
	sum    uint64
	size   image.Point
	sent   time.Time // last publication
	scaled *image.RGBA
	jpeg   int // size of the last encoding
}

func (h *Hub) run() {
	defer h.wg.Done()
	if c, ok := h.grab.(io.Closer); ok {
		// An idle display needs no open connection.
		defer c.Close()
	}
	t := time.NewTicker(time.Second / time.Duration(h.opts.FPS))
	defer t.Stop()
	var l loop
	for {
		h.step(&l)
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		if h.idle() {
			return
		}
	}
}

// step grabs once and publishes what changed.
func (h *Hub) step(l *loop) {
	img, err := h.grab.Grab()
	h.captures.Add(1)
	if err != nil {
		l.have = false
		h.publish(nil, err, false)
		return
	}
	now := time.Now()
	// Hashing 8 MB of pixels costs well under a millisecond, the encoding
	// it saves tens of milliseconds.
	sum := maphash.Bytes(h.seed, img.Pix)
	if l.have && sum == l.sum && img.Rect.Size() == l.size {
		repeat := now.Sub(l.sent) >= h.opts.Keepalive
		if repeat {
			l.sent = now
		}
		h.publish(nil, nil, repeat)
		return
	}
	l.scaled = Scale(l.scaled, img, h.opts.MaxWidth)
	data, err := Encode(l.scaled, h.opts.Quality, l.jpeg)
	if err != nil {
		l.have = false
		h.publish(nil, err, false)
		return
	}
	h.encodes.Add(1)
	*l = loop{have: true, sum: sum, size: img.Rect.Size(), sent: now, scaled: l.scaled, jpeg: len(data)}
	b := l.scaled.Rect
	h.publish(&Frame{JPEG: data, Width: b.Dx(), Height: b.Dy(), Captured: now}, nil, false)
}

// publish records one tick: a new frame, a failure, a repeat of the last
// frame, or none of them.
func (h *Hub) publish(f *Frame, err error, repeat bool) {
	var failed, recovered bool
	h.mu.Lock()
	h.tick++
	switch {
	case err != nil:
		h.frame, h.err = nil, err
		failed = !h.failing
		h.failing = true
	case f != nil:
		h.pub++
		f.id = h.pub
		h.frame, h.err = f, nil
		recovered = h.failing
		h.failing = false
	case repeat && h.frame != nil:
		h.pub++
	}
	h.broadcast()
	h.mu.Unlock()

	if failed && h.opts.OnFailure != nil {
		h.opts.OnFailure(err)
	}
	if recovered && h.opts.OnRecovery != nil {
		h.opts.OnRecovery()
	}
}

// idle stops the loop when no viewer came back within Linger.
func (h *Hub) idle() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.viewers > 0 || time.Since(h.left) < h.opts.Linger {
		return false
	}
	h.running = false
	// The next viewer must not get a frame from before the pause.
	h.frame, h.err = nil, nil
	return true
}

// Viewer is one consumer of a Hub's frames. It is not safe for concurrent
// use.
type Viewer struct {
	h        *Hub
	pub      uint64 // last publication returned
	id       uint64 // last frame returned
	tick     uint64 // the tick at which it was returned
	unsealed bool   // a new picture was returned and not yet followed by another part
	left     bool
}

// Next waits for the next frame to send and returns it: the latest frame if
// it was published since the last call (frames published meanwhile are
// skipped), else the same frame again one tick after a new picture, else a
// keepalive repeat. The first call returns the latest frame at once, or
// waits for the first grab.
//
// The repeat exists for browsers: Chromium paints a part of a
// multipart/x-mixed-replace response only when the headers of the next part
// arrive, and a part's headers cannot be sent before its length is known, so
// a new picture is followed within one tick by the next frame, or by
// itself when the screen did not change.
//
// Next returns the capture error while grabbing fails, ErrClosed once the
// Hub is closed, and ctx's cause when ctx is done.
func (v *Viewer) Next(ctx context.Context) (*Frame, error) {
	h := v.h
	for {
		h.mu.Lock()
		f, pub, tick, err, closed, wake := h.frame, h.pub, h.tick, h.err, h.closed, h.wake
		h.mu.Unlock()
		switch {
		case closed:
			return nil, ErrClosed
		case err != nil:
			return nil, err
		case f != nil && pub != v.pub:
			v.pub, v.tick = pub, tick
			v.unsealed = f.id != v.id
			v.id = f.id
			return f, nil
		case f != nil && v.unsealed && tick > v.tick:
			v.unsealed = false
			return f, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// Leave removes the viewer from its Hub. Calling it again does nothing.
func (v *Viewer) Leave() {
	if v.left {
		return
	}
	v.left = true
	h := v.h
	h.mu.Lock()
	h.viewers--
	if h.viewers == 0 {
		h.left = time.Now()
	}
	h.mu.Unlock()
}
