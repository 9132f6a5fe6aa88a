package caddymodule

import (
	"testing"
	"time"
)

// fakeProgress is a viewer whose catching up the test decides.
type fakeProgress struct {
	behind bool
	sends  int
}

func (p *fakeProgress) sent()          { p.sends++ }
func (p *fakeProgress) caughtUp() bool { return !p.behind }

func TestStallClock(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := &fakeProgress{}
	c := stallClock{timeout: 10 * time.Second, p: p, since: t0}
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	// Caught up at every frame: the deadline moves with the frames,
	// however long the screen stays still between them.
	for _, d := range []time.Duration{0, 2 * time.Second, 30 * time.Second} {
		if got := c.deadline(at(d)); !got.Equal(at(d + 10*time.Second)) {
			t.Fatalf("caught up at %v: deadline %v", d, got.Sub(t0))
		}
	}
	// Behind: the deadline stays where the viewer last caught up, though
	// frames are still written (into socket buffers).
	p.behind = true
	for _, d := range []time.Duration{32 * time.Second, 38 * time.Second, 41 * time.Second} {
		if got := c.deadline(at(d)); !got.Equal(at(40 * time.Second)) {
			t.Fatalf("behind at %v: deadline %v, want 40s", d, got.Sub(t0))
		}
	}
	// Caught up again: the clock starts over.
	p.behind = false
	if got := c.deadline(at(42 * time.Second)); !got.Equal(at(52 * time.Second)) {
		t.Fatalf("caught up again: deadline %v", got.Sub(t0))
	}
}

// A connection we cannot look into counts a flushed frame as taken: only a
// write that blocks past the timeout drops its viewer.
func TestFlushedProgress(t *testing.T) {
	var p progress = flushed{}
	p.sent()
	if !p.caughtUp() {
		t.Fatal("flushed is never behind")
	}
}
