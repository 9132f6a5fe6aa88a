package ratelimit

import (
	"sync"
	"sync/atomic"
	"testing"
)

// openKeys is how many keys hold at least one stream.
func (c *concurrency) openKeys() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.open)
}

func TestAcquireUnlimited(t *testing.T) {
	l := newTest(t, Config{Rate: "1-S"})
	for range 100 {
		release, ok := l.Acquire("k")
		if !ok {
			t.Fatal("refused without max_concurrent")
		}
		release()
	}
	if n := l.conc.openKeys(); n != 0 {
		t.Fatalf("%d keys tracked without max_concurrent", n)
	}
}

func TestAcquireCapAndIdempotentRelease(t *testing.T) {
	l := newTest(t, Config{Rate: "1-S", MaxConcurrent: 2})
	r1, ok1 := l.Acquire("k")
	r2, ok2 := l.Acquire("k")
	r3, ok3 := l.Acquire("k")
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("ok = %v %v %v, want true true false", ok1, ok2, ok3)
	}
	r3() // the refusal's release is a no-op, not a release of someone else's slot
	if _, ok := l.Acquire("k"); ok {
		t.Fatal("a refused Acquire's release freed a slot")
	}
	if _, ok := l.Acquire("other"); !ok {
		t.Fatal("another key is limited by k's streams")
	}
	r1()
	r1() // twice: must not free r2's slot too
	r4, ok := l.Acquire("k")
	if !ok {
		t.Fatal("slot not freed by release")
	}
	if _, ok := l.Acquire("k"); ok {
		t.Fatal("double release freed two slots")
	}
	r2()
	r4()
	if n := l.conc.openKeys(); n != 1 { // "other" is still open
		t.Fatalf("%d keys tracked, want 1", n)
	}
}

func TestAcquireConcurrent(t *testing.T) {
	const max, workers, rounds = 3, 32, 200
	l := newTest(t, Config{Rate: "1-S", MaxConcurrent: max})
	keys := []string{"a", "b", "c", "d"}
	var held [4]atomic.Int32
	var peak [4]atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				i := (w + r) % len(keys)
				release, ok := l.Acquire(keys[i])
				if !ok {
					continue
				}
				n := held[i].Add(1)
				for {
					p := peak[i].Load()
					if n <= p || peak[i].CompareAndSwap(p, n) {
						break
					}
				}
				held[i].Add(-1)
				release()
				release()
			}
		}()
	}
	wg.Wait()
	for i := range keys {
		if p := peak[i].Load(); p > max || p < 1 {
			t.Errorf("key %s: peak %d open streams, want 1..%d", keys[i], p, max)
		}
	}
	if n := l.conc.openKeys(); n != 0 {
		t.Fatalf("%d keys left in the map after every release", n)
	}
}
