package capture

import (
	"context"
	"errors"
	"image"
	"image/color"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	red  = color.RGBA{255, 0, 0, 255}
	blue = color.RGBA{0, 0, 255, 255}
)

// gated lets a test release a Grabber's grabs one by one.
type gated struct {
	g    Grabber
	gate chan struct{}
}

func (g gated) Grab() (*image.RGBA, error) {
	<-g.gate
	return g.g.Grab()
}

func newHub(t *testing.T, g Grabber, o Options) *Hub {
	t.Helper()
	h := NewHub(g, o)
	t.Cleanup(h.Close)
	return h
}

func join(t *testing.T, h *Hub) *Viewer {
	t.Helper()
	v, err := h.Join()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Leave)
	return v
}

func next(t *testing.T, v *Viewer) *Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := v.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return f
}

// eventually polls cond for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHubSharesOneGrabPerTick(t *testing.T) {
	c := &counter{}
	g := gated{c, make(chan struct{})}
	h := newHub(t, g, Options{FPS: 100})
	t.Cleanup(func() { close(g.gate) }) // runs before h.Close, so the loop can end

	viewers := make([]*Viewer, 20)
	for i := range viewers {
		viewers[i] = join(t, h)
	}
	for tick := 1; tick <= 5; tick++ {
		g.gate <- struct{}{}
		var first *Frame
		for i, v := range viewers {
			f := next(t, v)
			if first == nil {
				first = f
			}
			if f != first {
				t.Fatalf("tick %d: viewer %d got another frame than viewer 0", tick, i)
			}
		}
	}
	if n := c.n.Load(); n != 5 {
		t.Errorf("20 viewers over 5 ticks: %d grabs, want 5", n)
	}
	if s := h.Stats(); s.Encodes != 5 || s.Viewers != 20 {
		t.Errorf("stats = %+v, want 5 encodes and 20 viewers", s)
	}
}

func TestNewViewerGetsLatestFrameAtOnce(t *testing.T) {
	g := gated{&counter{}, make(chan struct{})}
	h := newHub(t, g, Options{FPS: 100})
	t.Cleanup(func() { close(g.gate) })

	v1 := join(t, h)
	g.gate <- struct{}{}
	f1 := next(t, v1)

	// No grab is released: v2 must be served from what the hub has.
	v2 := join(t, h)
	if f := next(t, v2); f != f1 {
		t.Fatal("a new viewer did not get the latest frame")
	}
}

func TestSlowViewerSkipsToLatestFrame(t *testing.T) {
	g := gated{&counter{}, make(chan struct{})}
	h := newHub(t, g, Options{FPS: 100})
	t.Cleanup(func() { close(g.gate) })

	fast, slow := join(t, h), join(t, h)
	g.gate <- struct{}{}
	next(t, fast)
	next(t, slow)

	// The slow viewer reads nothing while four frames go by; the loop and the
	// fast viewer do not wait for it.
	var last *Frame
	for range 4 {
		g.gate <- struct{}{}
		last = next(t, fast)
	}
	if f := next(t, slow); f != last {
		t.Fatal("the slow viewer did not skip to the latest frame")
	}
}

func TestNewPictureIsRepeatedOnceAtNextTick(t *testing.T) {
	s := newFakeScreen(32, 18, red)
	h := newHub(t, s, Options{FPS: 100, Keepalive: time.Hour})
	v := join(t, h)

	f1 := next(t, v)
	if f := next(t, v); f != f1 {
		t.Fatal("the part after a new picture is not the same frame")
	}
	// Then nothing until the screen changes.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if f, err := v.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unchanged screen: Next = %v, %v; want it to wait", f, err)
	}
}

func TestUnchangedScreenIsNotEncodedAgain(t *testing.T) {
	s := newFakeScreen(32, 18, red)
	h := newHub(t, s, Options{FPS: 200, Keepalive: time.Hour})
	v := join(t, h)

	f1 := next(t, v)
	next(t, v) // the repeat
	eventually(t, "10 grabs", func() bool { return s.grabs.Load() >= 10 })
	if n := h.Stats().Encodes; n != 1 {
		t.Fatalf("%d grabs of an unchanged screen: %d encodings, want 1", s.grabs.Load(), n)
	}

	s.paint(blue)
	f2 := next(t, v)
	if f2 == f1 || h.Stats().Encodes != 2 {
		t.Fatalf("changed screen: got the old frame or encodings = %d", h.Stats().Encodes)
	}
}

func TestKeepaliveRepeatsLastFrame(t *testing.T) {
	s := newFakeScreen(32, 18, red)
	const keepalive = 30 * time.Millisecond
	h := newHub(t, s, Options{FPS: 200, Keepalive: keepalive})
	v := join(t, h)

	f1 := next(t, v)
	next(t, v) // the repeat at the next tick
	start := time.Now()
	for range 3 {
		if f := next(t, v); f != f1 {
			t.Fatal("a keepalive is not the last frame")
		}
	}
	// Three keepalives take at least two full periods.
	if d := time.Since(start); d < 2*keepalive {
		t.Errorf("3 keepalives in %v, want them %v apart", d, keepalive)
	}
	if n := h.Stats().Encodes; n != 1 {
		t.Errorf("keepalives re-encoded: %d encodings", n)
	}
}

func TestLoopStopsAfterLastViewerLeaves(t *testing.T) {
	c := &counter{}
	h := newHub(t, c, Options{FPS: 100, Linger: 30 * time.Millisecond})

	v, _ := h.Join()
	f1 := next(t, v)
	v2, _ := h.Join()
	next(t, v2)
	v.Leave()
	v.Leave() // twice is harmless
	time.Sleep(60 * time.Millisecond)
	if !h.Stats().Running {
		t.Fatal("the loop stopped while a viewer remained")
	}
	v2.Leave()
	eventually(t, "the loop to stop", func() bool { return !h.Stats().Running })
	n := c.n.Load()
	time.Sleep(50 * time.Millisecond)
	if c.n.Load() != n {
		t.Fatal("still grabbing after the loop stopped")
	}

	// The next viewer starts it again and gets a fresh frame.
	v3 := join(t, h)
	if f := next(t, v3); f == f1 || !h.Stats().Running {
		t.Fatal("the loop did not restart with a fresh frame")
	}
}

func TestFailureReportedOncePerOutage(t *testing.T) {
	s := newFakeScreen(32, 18, red)
	var failures, recoveries atomic.Int32
	h := newHub(t, s, Options{
		FPS:        200,
		Linger:     10 * time.Millisecond,
		OnFailure:  func(error) { failures.Add(1) },
		OnRecovery: func() { recoveries.Add(1) },
	})
	boom := errors.New("no X display: test")
	s.fail(boom)

	// Viewers keep retrying, across restarts of the loop.
	for range 3 {
		v := join(t, h)
		if _, err := v.Next(context.Background()); !errors.Is(err, boom) {
			t.Fatalf("Next = %v, want the grab error", err)
		}
		v.Leave()
		eventually(t, "the loop to stop", func() bool { return !h.Stats().Running })
	}
	if n := failures.Load(); n != 1 {
		t.Fatalf("one outage reported %d times", n)
	}

	s.fail(nil)
	v := join(t, h)
	next(t, v)
	if recoveries.Load() != 1 {
		t.Fatal("recovery not reported")
	}
	s.fail(boom)
	eventually(t, "the second outage", func() bool { return failures.Load() == 2 })
}

func TestCloseEndsViewers(t *testing.T) {
	s := newFakeScreen(32, 18, red)
	h := NewHub(s, Options{FPS: 100, Keepalive: time.Hour})
	v, _ := h.Join()
	next(t, v)
	next(t, v)

	var wg sync.WaitGroup
	wg.Add(1)
	var err error
	go func() {
		defer wg.Done()
		_, err = v.Next(context.Background())
	}()
	time.Sleep(20 * time.Millisecond)
	h.Close()
	wg.Wait()
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close = %v, want ErrClosed", err)
	}
	if _, err := h.Join(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Join after Close = %v, want ErrClosed", err)
	}
	h.Close() // twice is harmless
}

func TestNextReturnsContextCause(t *testing.T) {
	s := newFakeScreen(32, 18, red)
	h := newHub(t, s, Options{Keepalive: time.Hour})
	v := join(t, h)
	next(t, v)
	ctx, cancel := context.WithCancelCause(context.Background())
	stopping := errors.New("stopping")
	cancel(stopping)
	for { // the repeat may come first
		if _, err := v.Next(ctx); err != nil {
			if !errors.Is(err, stopping) {
				t.Fatalf("Next = %v, want the cause", err)
			}
			break
		}
	}
}
