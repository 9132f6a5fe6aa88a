package upstream

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// pieces reads b in pieces of the given sizes, in turn.
type pieces struct {
	b     []byte
	sizes []int
	i     int
}

func (p *pieces) Read(out []byte) (int, error) {
	if len(p.b) == 0 {
		return 0, io.EOF
	}
	n := min(max(p.sizes[p.i%len(p.sizes)], 1), len(p.b), len(out))
	p.i++
	copy(out, p.b[:n])
	p.b = p.b[n:]
	return n, nil
}

func TestRedactReader(t *testing.T) {
	red := newRedactor("sk-secret-key", "https://gw.example/v1?key=gw-token-12345")
	in := "data: sk-secret-key\n\nxsk-secret-keyx gw-token-12345" + strings.Repeat("a", 40000) + "sk-secret-key\nend sk-secr"
	want := string(red.bytes([]byte(in)))
	for _, sizes := range [][]int{{1}, {2, 3}, {7}, {13, 1, 40000}, {1 << 20}} {
		got, err := io.ReadAll(red.reader(&pieces{b: []byte(in), sizes: sizes}))
		if err != nil || string(got) != want {
			t.Errorf("sizes %v: %v\n%q\nwant\n%q", sizes, err, got, want)
		}
	}
	if err := iotest.TestReader(red.reader(strings.NewReader(in)), []byte(want)); err != nil {
		t.Error(err)
	}
}

// TestRedactReaderHoldsBackNoEvent checks that an event goes out as soon as
// its blank line arrived, and a line without newline waits only for the
// bytes that may start a secret.
func TestRedactReaderHoldsBackNoEvent(t *testing.T) {
	red := newRedactor("sk-secret-key", "")
	pr, pw := io.Pipe()
	rr := red.reader(pr)
	buf := make([]byte, 100)
	for _, tt := range []struct{ write, want string }{
		{"data: a\n\n", "data: a\n\n"},
		{"data: {\"x\":\"0123456789abcdef", "data: {\"x\":\"0123"}, // the last 12 bytes could start the key
		{"\"}\n\n", "456789abcdef\"}\n\n"},
	} {
		go pw.Write([]byte(tt.write))
		n, err := rr.Read(buf)
		if err != nil || string(buf[:n]) != tt.want {
			t.Errorf("after %q read %q, %v; want %q", tt.write, buf[:n], err, tt.want)
		}
	}
	pw.Close()
	if n, err := rr.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("at the end: %d, %v", n, err)
	}
}

// FuzzRedactReader checks that how the body is split into reads changes
// nothing: the output is what redacting it whole gives.
func FuzzRedactReader(f *testing.F) {
	f.Add([]byte("a sk-secret-key b\nsk-secret-key"), []byte{1, 2, 3})
	f.Add([]byte("sk-secret-keysk-secret-key\n\nsk-sec"), []byte{5})
	f.Add([]byte("gw-token-12345\n"), []byte{0, 200})
	red := newRedactor("sk-secret-key", "https://gw.example/v1?key=gw-token-12345")
	f.Fuzz(func(t *testing.T, in, splits []byte) {
		sizes := []int{len(in) + 1}
		if len(splits) > 0 {
			sizes = sizes[:0]
			for _, s := range splits {
				sizes = append(sizes, int(s))
			}
		}
		got, err := io.ReadAll(red.reader(&pieces{b: in, sizes: sizes}))
		if err != nil {
			t.Fatal(err)
		}
		if want := red.bytes(bytes.Clone(in)); !bytes.Equal(got, want) {
			t.Fatalf("split %v:\n%q\nwant\n%q", sizes, got, want)
		}
	})
}
