package resume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// An opener opens two stores that share their streams, as two instances
// would: a writes, b (and a) read. The memory store is its own pair.
type opener func(t *testing.T, opts Options) (a, b Store)

func memoryOpener(*testing.T) opener {
	return func(t *testing.T, opts Options) (Store, Store) {
		s := NewMemory(opts)
		t.Cleanup(func() { _ = s.Close() })
		return s, s
	}
}

// TestConformance holds every store to the same contract.
func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name string
		open func(*testing.T) opener
	}{{"memory", memoryOpener}, {"redis", redisOpener}} {
		t.Run(c.name, func(t *testing.T) {
			open := c.open(t)
			for _, tc := range conformance {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, open) })
			}
		})
	}
}

var conformance = []struct {
	name string
	run  func(*testing.T, opener)
}{
	{"OrderFromAnyAfter", testOrderFromAnyAfter},
	{"FollowLive", testFollowLive},
	{"EndStates", testEndStates},
	{"Unknown", testUnknown},
	{"TTL", testTTL},
	{"MaxBytes", testMaxBytes},
	{"Behind", testBehind},
	{"MaxStreams", testMaxStreams},
	{"Grace", testGrace},
	{"GraceAttached", testGraceAttached},
	{"Cancel", testCancel},
	{"NextHonoursCtx", testNextHonoursCtx},
	{"Concurrent", testConcurrent},
	{"AppendAfterEnd", testAppendAfterEnd},
	{"AfterPastTheEnd", testAfterPastTheEnd},
	{"CloseEndsCursors", testCloseEndsCursors},
}

const wait = 2 * time.Second // a generous bound on anything that should be prompt

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func testMeta() Meta {
	return Meta{ID: NewID(), Owner: "203.0.113.7", Format: "openai", Model: "gpt-test"}
}

func create(t *testing.T, s Store) (Log, Meta) {
	t.Helper()
	m := testMeta()
	l, err := s.Create(ctxFor(t, wait), m)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return l, m
}

func event(n int) []byte { return fmt.Appendf(nil, "id: x.%d\ndata: {\"n\":%d}\n\n", n, n) }

func appendN(t *testing.T, l Log, from, to int) {
	t.Helper()
	for n := from; n <= to; n++ {
		if err := l.Append(event(n)); err != nil {
			t.Fatalf("Append %d: %v", n, err)
		}
	}
}

func read(t *testing.T, s Store, id string, after int) Cursor {
	t.Helper()
	c, err := s.Read(ctxFor(t, wait), id, after)
	if err != nil {
		t.Fatalf("Read(%d): %v", after, err)
	}
	t.Cleanup(c.Close)
	return c
}

// drain reads c to its end and checks that it yields events from..to in
// order, then the end in state want.
func drain(t *testing.T, c Cursor, from, to int, want State) {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	for n := from; n <= to; n++ {
		ev, got, err := c.Next(ctx)
		if err != nil {
			t.Fatalf("Next, wanting event %d: %v", n, err)
		}
		if got != n || string(ev) != string(event(n)) {
			t.Fatalf("Next = %d %q, want %d %q", got, ev, n, event(n))
		}
	}
	if _, _, err := c.Next(ctx); err != io.EOF {
		t.Fatalf("Next after event %d: %v, want io.EOF", to, err)
	}
	if c.State() != want {
		t.Fatalf("State = %v, want %v", c.State(), want)
	}
}

func testOrderFromAnyAfter(t *testing.T, open opener) {
	a, b := open(t, Options{})
	l, m := create(t, a)
	appendN(t, l, 1, 5)
	if err := l.End(Done); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Store{a, b} {
		if got, err := s.Meta(ctxFor(t, wait), m.ID); err != nil || got != m {
			t.Fatalf("Meta = %+v, %v; want %+v", got, err, m)
		}
		for after := 0; after <= 7; after++ {
			c := read(t, s, m.ID, after)
			if got := c.Meta(); got != m {
				t.Fatalf("Meta = %+v, want %+v", got, m)
			}
			if want := max(5-after, 0); c.Backlog() != want {
				t.Errorf("after %d: Backlog = %d, want %d", after, c.Backlog(), want)
			}
			drain(t, c, after+1, 5, Done)
			c.Close()
		}
	}
}

func testFollowLive(t *testing.T, open opener) {
	a, b := open(t, Options{})
	l, m := create(t, a)
	var wg sync.WaitGroup
	for _, s := range []Store{a, b} {
		c := read(t, s, m.ID, 0)
		wg.Go(func() { drain(t, c, 1, 50, Failed) })
	}
	for n := 1; n <= 50; n++ {
		appendN(t, l, n, n)
		if n%10 == 0 {
			time.Sleep(5 * time.Millisecond) // let the readers catch up and wait
		}
	}
	if err := l.End(Failed); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// A stream replays its own end, and one that failed never ends in Done;
// a resume at its last event gets the end at once.
func testEndStates(t *testing.T, open opener) {
	a, b := open(t, Options{})
	for _, st := range []State{Done, Failed, Cancelled} {
		l, m := create(t, a)
		appendN(t, l, 1, 2)
		if err := l.End(st); err != nil {
			t.Fatal(err)
		}
		for _, s := range []Store{a, b} {
			drain(t, read(t, s, m.ID, 0), 1, 2, st)
			c := read(t, s, m.ID, 2)
			start := time.Now()
			if _, _, err := c.Next(ctxFor(t, wait)); err != io.EOF || c.State() != st {
				t.Fatalf("Next at the last event: %v in %v, want io.EOF in %v", err, c.State(), st)
			}
			if d := time.Since(start); d > wait/2 {
				t.Errorf("the end took %v", d)
			}
		}
	}
	// An empty stream too.
	l, m := create(t, a)
	if err := l.End(Failed); err != nil {
		t.Fatal(err)
	}
	drain(t, read(t, b, m.ID, 0), 1, 0, Failed)
}

func testUnknown(t *testing.T, open opener) {
	a, b := open(t, Options{})
	for _, s := range []Store{a, b} {
		if _, err := s.Read(ctxFor(t, wait), NewID(), 0); !errors.Is(err, ErrNotFound) {
			t.Errorf("Read of an unknown stream: %v, want ErrNotFound", err)
		}
		if err := s.Cancel(ctxFor(t, wait), NewID()); !errors.Is(err, ErrNotFound) {
			t.Errorf("Cancel of an unknown stream: %v, want ErrNotFound", err)
		}
		if _, err := s.Meta(ctxFor(t, wait), NewID()); !errors.Is(err, ErrNotFound) {
			t.Errorf("Meta of an unknown stream: %v, want ErrNotFound", err)
		}
	}
}

// eventually polls cond until it holds, failing t after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testTTL(t *testing.T, open opener) {
	a, b := open(t, Options{TTL: 100 * time.Millisecond})
	l, m := create(t, a)
	appendN(t, l, 1, 3)
	if err := l.End(Done); err != nil {
		t.Fatal(err)
	}
	drain(t, read(t, b, m.ID, 0), 1, 3, Done) // still there right after the end
	for _, s := range []Store{a, b} {
		eventually(t, 3*time.Second, "stream expired", func() bool {
			c, err := s.Read(ctxFor(t, wait), m.ID, 0)
			if err == nil {
				c.Close()
			}
			return errors.Is(err, ErrNotFound)
		})
	}
}

// eventSize is the size of the events the tests append.
var eventSize = len(event(10))

func testMaxBytes(t *testing.T, open opener) {
	a, b := open(t, Options{MaxBytes: 3 * eventSize})
	l, m := create(t, a)
	appendN(t, l, 10, 19) // events 1..10 of eventSize bytes, numbered by appendN's n
	for _, s := range []Store{a, b} {
		// Its meta is there for the owner check of a refused resume.
		if got, err := s.Meta(ctxFor(t, wait), m.ID); err != nil || got != m {
			t.Fatalf("Meta = %+v, %v; want %+v", got, err, m)
		}
		for _, after := range []int{0, 1, 6} {
			if c, err := s.Read(ctxFor(t, wait), m.ID, after); !errors.Is(err, ErrDropped) {
				if err == nil {
					c.Close()
				}
				t.Fatalf("Read(%d) past max_bytes: %v, want ErrDropped", after, err)
			}
		}
	}
	if err := l.End(Done); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Store{a, b} {
		c := read(t, s, m.ID, 7)
		for n := 8; n <= 10; n++ {
			ev, got, err := c.Next(ctxFor(t, wait))
			if err != nil || got != n || string(ev) != string(event(n+9)) {
				t.Fatalf("Next = %d %q %v, want %d %q", got, ev, err, n, event(n+9))
			}
		}
		if _, _, err := c.Next(ctxFor(t, wait)); err != io.EOF {
			t.Fatalf("Next at the end: %v", err)
		}
	}
}

// A live cursor whose next event is dropped before it reads it ends with
// ErrBehind.
func testBehind(t *testing.T, open opener) {
	a, b := open(t, Options{MaxBytes: 3 * eventSize})
	for _, s := range []Store{a, b} {
		l, m := create(t, a)
		c := read(t, s, m.ID, 0)
		appendN(t, l, 1, 1)
		if _, n, err := c.Next(ctxFor(t, wait)); err != nil || n != 1 {
			t.Fatalf("Next = %d, %v", n, err)
		}
		appendN(t, l, 2, 10)
		if _, n, err := c.Next(ctxFor(t, wait)); !errors.Is(err, ErrBehind) {
			t.Fatalf("Next after falling behind = %d, %v, want ErrBehind", n, err)
		}
		_ = l.End(Done)
	}
}

func testMaxStreams(t *testing.T, open opener) {
	a, b := open(t, Options{MaxStreams: 2, TTL: 100 * time.Millisecond})
	l1, _ := create(t, a)
	l2, _ := create(t, b)
	if _, err := a.Create(ctxFor(t, wait), testMeta()); !errors.Is(err, ErrFull) {
		t.Fatalf("third Create: %v, want ErrFull", err)
	}
	if _, err := b.Create(ctxFor(t, wait), testMeta()); !errors.Is(err, ErrFull) {
		t.Fatalf("third Create on b: %v, want ErrFull", err)
	}
	_ = l1.End(Done)
	_ = l2.End(Done)
	// Kept streams count until they expire.
	var l Log
	eventually(t, 3*time.Second, "room after the kept streams expired", func() bool {
		var err error
		l, err = a.Create(ctxFor(t, wait), testMeta())
		return err == nil
	})
	_ = l.End(Done)
}

// grace is short, but long enough for a loaded machine to open the first
// cursor after Create, and to renew a claim, in time.
const grace = 500 * time.Millisecond

func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func testGrace(t *testing.T, open opener) {
	a, _ := open(t, Options{Grace: grace})
	l, _ := create(t, a)
	if !closedWithin(l.Abandoned(), wait) {
		t.Fatal("a stream nobody reads was not abandoned")
	}
	if !errors.Is(l.Cause(), ErrUnattended) {
		t.Fatalf("Cause = %v, want ErrUnattended", l.Cause())
	}
	_ = l.End(Failed)
	// An ended stream is never abandoned for grace.
	l, _ = create(t, a)
	_ = l.End(Done)
	if closedWithin(l.Abandoned(), 3*grace) {
		t.Fatalf("an ended stream was abandoned: %v", l.Cause())
	}
}

func testGraceAttached(t *testing.T, open opener) {
	a, b := open(t, Options{Grace: grace})
	for _, s := range []Store{a, b} {
		l, m := create(t, a)
		c := read(t, s, m.ID, 0)
		if closedWithin(l.Abandoned(), 3*grace) {
			t.Fatalf("abandoned with a cursor attached: %v", l.Cause())
		}
		if !l.Attached() {
			t.Fatal("Attached = false with a cursor open")
		}
		c.Close()
		if !closedWithin(l.Abandoned(), wait) {
			t.Fatal("not abandoned after the last cursor left")
		}
		if !errors.Is(l.Cause(), ErrUnattended) {
			t.Fatalf("Cause = %v, want ErrUnattended", l.Cause())
		}
		if l.Attached() {
			t.Fatal("Attached = true with no cursor open")
		}
		_ = l.End(Failed)
	}
}

func testCancel(t *testing.T, open opener) {
	a, b := open(t, Options{})
	for _, s := range []Store{a, b} {
		l, m := create(t, a)
		c := read(t, a, m.ID, 0)
		if err := s.Cancel(ctxFor(t, wait), m.ID); err != nil {
			t.Fatalf("Cancel: %v", err)
		}
		if !closedWithin(l.Abandoned(), wait) {
			t.Fatal("Cancel did not reach the stream's Log")
		}
		if !errors.Is(l.Cause(), ErrCancelled) {
			t.Fatalf("Cause = %v, want ErrCancelled", l.Cause())
		}
		appendN(t, l, 1, 1)
		_ = l.End(Cancelled)
		drain(t, c, 1, 1, Cancelled)
	}
	// Cancelling an ended stream does nothing.
	l, m := create(t, a)
	_ = l.End(Done)
	if err := b.Cancel(ctxFor(t, wait), m.ID); err != nil {
		t.Fatalf("Cancel of an ended stream: %v", err)
	}
	if closedWithin(l.Abandoned(), 100*time.Millisecond) {
		t.Fatal("an ended stream was abandoned by Cancel")
	}
}

func testNextHonoursCtx(t *testing.T, open opener) {
	a, b := open(t, Options{})
	l, m := create(t, a)
	defer l.End(Done)
	for _, s := range []Store{a, b} {
		c := read(t, s, m.ID, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		start := time.Now()
		_, _, err := c.Next(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Next = %v, want the ctx's error", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Next took %v to notice its ctx", d)
		}
	}
}

// Readers on both stores follow one writer while it writes; run it with
// -race.
func testConcurrent(t *testing.T, open opener) {
	a, b := open(t, Options{})
	l, m := create(t, a)
	var wg sync.WaitGroup
	for i := range 4 {
		s := []Store{a, b}[i%2]
		wg.Go(func() {
			c, err := s.Read(context.Background(), m.ID, 0)
			if err != nil {
				t.Errorf("Read: %v", err)
				return
			}
			defer c.Close()
			ctx := ctxFor(t, 10*time.Second)
			for want := 1; ; want++ {
				ev, n, err := c.Next(ctx)
				if err == io.EOF {
					if want != 201 || c.State() != Done {
						t.Errorf("end after %d events in %v", want-1, c.State())
					}
					return
				}
				if err != nil || n != want || !strings.Contains(string(ev), fmt.Sprintf(`{"n":%d}`, n)) {
					t.Errorf("Next = %d %q %v, want %d", n, ev, err, want)
					return
				}
			}
		})
	}
	appendN(t, l, 1, 200)
	_ = l.End(Done)
	wg.Wait()
}

func testAppendAfterEnd(t *testing.T, open opener) {
	a, _ := open(t, Options{})
	l, _ := create(t, a)
	if err := l.End(Done); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(event(1)); !errors.Is(err, ErrEnded) {
		t.Errorf("Append after End: %v, want ErrEnded", err)
	}
	if err := l.End(Failed); !errors.Is(err, ErrEnded) {
		t.Errorf("End after End: %v, want ErrEnded", err)
	}
}

// A cursor that asked for more than a live stream had waits for the events
// after it, or for the end.
func testAfterPastTheEnd(t *testing.T, open opener) {
	a, b := open(t, Options{})
	for _, s := range []Store{a, b} {
		l, m := create(t, a)
		appendN(t, l, 1, 2)
		c := read(t, s, m.ID, 4)
		if c.Backlog() != 0 {
			t.Errorf("Backlog = %d, want 0", c.Backlog())
		}
		appendN(t, l, 3, 5)
		if ev, n, err := c.Next(ctxFor(t, wait)); err != nil || n != 5 || string(ev) != string(event(5)) {
			t.Fatalf("Next = %d %q %v, want event 5", n, ev, err)
		}
		c = read(t, s, m.ID, 9)
		_ = l.End(Failed)
		if _, _, err := c.Next(ctxFor(t, 3*time.Second)); err != io.EOF || c.State() != Failed {
			t.Fatalf("Next past the end = %v in %v, want io.EOF in Failed", err, c.State())
		}
	}
}

// Closing a store ends the cursors that wait on it.
func testCloseEndsCursors(t *testing.T, open opener) {
	a, b := open(t, Options{})
	l, m := create(t, a)
	defer l.End(Done)
	errs := make(chan error, 2)
	for _, s := range []Store{b, a} { // b first: for the memory store they are one
		c := read(t, s, m.ID, 0)
		go func() {
			_, _, err := c.Next(context.Background())
			errs <- err
		}()
		time.Sleep(20 * time.Millisecond) // let it wait
		_ = s.Close()
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("Next when the store closed: %v, want ErrClosed", err)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("Next still waits after the store closed")
		}
		if _, err := s.Create(ctxFor(t, wait), testMeta()); !errors.Is(err, ErrClosed) {
			t.Fatalf("Create after Close: %v, want ErrClosed", err)
		}
		if a == b {
			break
		}
	}
}
