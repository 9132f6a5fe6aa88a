package resume

import (
	"context"
	"errors"
	"io"
	"testing"
)

// FuzzMemory appends events of the sizes sizes says, with a live cursor
// reading every few, then reads the ended stream from every `after`: each
// read yields the kept events in order exactly once or is refused, and what
// is kept stays within maxBytes.
func FuzzMemory(f *testing.F) {
	f.Add(uint16(100), []byte{10, 20, 30, 40, 50, 60})
	f.Add(uint16(1), []byte{0, 5, 0})
	f.Add(uint16(1000), []byte{255, 255, 255, 255, 1})
	f.Fuzz(func(t *testing.T, maxBytes uint16, sizes []byte) {
		s := NewMemory(Options{MaxBytes: int(maxBytes) + 1})
		defer s.Close()
		ctx := context.Background()
		l, err := s.Create(ctx, testMeta())
		if err != nil {
			t.Fatal(err)
		}
		id := l.(*memStream).meta.ID
		live, err := s.Read(ctx, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		ev := func(n int) []byte { // event n: its number, padded to its size
			b := make([]byte, int(sizes[n-1]))
			for i := range b {
				b[i] = byte(n)
			}
			return b
		}
		liveNext, behind := 1, false
		for n := 1; n <= len(sizes); n++ {
			if err := l.Append(ev(n)); err != nil {
				t.Fatal(err)
			}
			if n%3 != 0 || behind {
				continue
			}
			for liveNext <= n {
				got, m, err := live.Next(ctx)
				if errors.Is(err, ErrBehind) {
					behind = true
					break
				}
				if err != nil || m != liveNext || string(got) != string(ev(m)) {
					t.Fatalf("live Next = %d %v, want %d", m, err, liveNext)
				}
				liveNext++
			}
		}
		if err := l.End(Done); err != nil {
			t.Fatal(err)
		}
		ms := l.(*memStream)
		kept := 0
		for _, e := range ms.events {
			kept += len(e)
		}
		if kept > int(maxBytes)+1 && len(ms.events) > 1 {
			t.Fatalf("%d bytes kept in %d events, max %d", kept, len(ms.events), int(maxBytes)+1)
		}
		first := ms.first
		for after := 0; after <= len(sizes)+1; after++ {
			c, err := s.Read(ctx, id, after)
			if after < first-1 {
				if !errors.Is(err, ErrDropped) {
					t.Fatalf("Read(%d) with first %d: %v, want ErrDropped", after, first, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("Read(%d): %v", after, err)
			}
			for want := after + 1; ; want++ {
				got, n, err := c.Next(ctx)
				if err == io.EOF {
					if want <= len(sizes) {
						t.Fatalf("Read(%d): end before event %d", after, want)
					}
					break
				}
				if err != nil || n != want || string(got) != string(ev(n)) {
					t.Fatalf("Read(%d): Next = %d %v, want %d", after, n, err, want)
				}
			}
			c.Close()
		}
	})
}
