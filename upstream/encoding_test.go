package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// flushWriter is a compressor that can push out what it has so far.
type flushWriter interface {
	io.WriteCloser
	Flush() error
}

// TestCompressedStream checks that a stream compressed without being asked
// is decoded, and each event passed on as soon as its compressed block is
// flushed: the upstream sends the rest only after the first was read.
func TestCompressedStream(t *testing.T) {
	for _, enc := range []string{"gzip", "zstd"} {
		t.Run(enc, func(t *testing.T) {
			read := make(chan struct{})
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				w.Header().Set("Content-Encoding", enc)
				var zw flushWriter
				if enc == "gzip" {
					zw = gzip.NewWriter(w)
				} else {
					zw, _ = zstd.NewWriter(w)
				}
				io.WriteString(zw, `data: {"choices":[{"index":0,"delta":{"content":"one"}}]}`+"\n\n")
				zw.Flush()
				w.(http.Flusher).Flush()
				<-read
				io.WriteString(zw, `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
				zw.Close()
			})
			s := open(t, c)
			var ch chunk.Chunk
			if err := s.Next(&ch); err != nil || string(ch.Content) != `"one"` {
				t.Fatalf("Next = %v, content %s", err, ch.Content)
			}
			close(read)
			if err := s.Next(&ch); err != nil || ch.FinishReason != "stop" {
				t.Fatalf("Next = %v, finish %q", err, ch.FinishReason)
			}
			if err := s.Next(&ch); err != io.EOF {
				t.Fatalf("Next = %v, want EOF", err)
			}
		})
	}

	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Content-Encoding", "br")
		io.WriteString(w, "\x0b\x02\x80")
	})
	wantBadGateway(t, c, "br")
}

// zstdFrame is a zstd frame made by hand: header (after the magic number)
// names the memory its decoder needs, whatever its blocks need, and the
// blocks hold head, n line feeds in run-length blocks of 128 KiB (four
// bytes each), then tail.
func zstdFrame(header []byte, head string, n int, tail string) []byte {
	b := append([]byte{0x28, 0xb5, 0x2f, 0xfd}, header...)
	block := func(typ, size int, last bool, content ...byte) {
		h := typ<<1 | size<<3
		if last {
			h |= 1
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16))
		b = append(b, content...)
	}
	block(0, len(head), false, []byte(head)...)
	for ; n > 0; n -= 128 << 10 {
		block(1, min(n, 128<<10), false, '\n')
	}
	block(0, len(tail), true, []byte(tail)...)
	return b
}

// window is a frame header that asks for a window of 1<<log bytes.
func window(log int) []byte { return []byte{0, byte(log-10) << 3} }

// allocated runs f and returns the bytes it allocated in all.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// readAll reads the stream of one request to c to its end; it returns the
// number of chunks and the error that ended it (io.EOF for a proper end).
func readAll(t *testing.T, c *Client) (int, error) {
	t.Helper()
	req, _ := FromPrompt("hi", "m")
	s, err := c.Open(context.Background(), req)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	var ch chunk.Chunk
	for n := 0; ; n++ {
		if err := s.Next(&ch); err != nil {
			return n, err
		}
	}
}

// serveBytes is an upstream that answers every request with body, in
// the content encoding enc.
func serveBytes(t *testing.T, enc string, body []byte) *Client {
	return serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Content-Encoding", enc)
		w.Write(body)
	})
}

const (
	oneEvent  = `data: {"choices":[{"index":0,"delta":{"content":"one"}}]}` + "\n\n"
	lastEvent = `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\ndata: [DONE]\n\n"
)

// TestZstdWindowBounded: a zstd frame's header names the window its
// decoder keeps, and the decoder allocates it at once. An upstream that
// names more than the 8 MiB RFC 9659 allows is refused before it costs
// that memory; one within it costs about the window, however much it
// sends.
func TestZstdWindowBounded(t *testing.T) {
	for name, header := range map[string][]byte{
		"64 MiB window":  window(26),
		"512 MiB window": window(29),
		// A single-segment frame's window is its content size.
		"1 GiB single segment": {0xe0, 0, 0, 0, 0x40, 0, 0, 0, 0},
	} {
		c := serveBytes(t, "zstd", zstdFrame(header, oneEvent, 16<<20, lastEvent))
		var n int
		var err error
		mem := allocated(func() { n, err = readAll(t, c) })
		if !errors.Is(err, ErrZstdWindow) || n != 0 {
			t.Errorf("%s: %d chunks, then %v; want ErrZstdWindow at once", name, n, err)
		}
		if mem > 4<<20 {
			t.Errorf("%s: refused, but cost %d KiB", name, mem>>10)
		}
		t.Logf("%s: %d KiB allocated", name, mem>>10)
	}

	c := serveBytes(t, "zstd", zstdFrame(window(23), oneEvent, 32<<20, lastEvent)) // 8 MiB, then 32 MiB of line feeds
	var n int
	var err error
	mem := allocated(func() { n, err = readAll(t, c) })
	if err != io.EOF || n != 2 {
		t.Errorf("an 8 MiB window: %d chunks, then %v; want 2 and EOF", n, err)
	}
	if mem > 12<<20 {
		t.Errorf("an 8 MiB window cost %d KiB", mem>>10)
	}
	t.Logf("8 MiB window, 32 MiB sent: %d KiB allocated", mem>>10)
}

// TestZstdLongStream: the bound is on the window, not on what a stream
// sends in all.
func TestZstdLongStream(t *testing.T) {
	var buf bytes.Buffer
	zw, _ := zstd.NewWriter(&buf) // an 8 MiB window
	ev := `data: {"choices":[{"index":0,"delta":{"content":"` + strings.Repeat("x", 4000) + `"}}]}` + "\n\n"
	for range 4000 { // 16 MB
		io.WriteString(zw, ev)
	}
	io.WriteString(zw, lastEvent)
	zw.Close()
	if n, err := readAll(t, serveBytes(t, "zstd", buf.Bytes())); err != io.EOF || n != 4001 {
		t.Errorf("%d chunks, then %v; want 4001 and EOF", n, err)
	}
}

// TestCompressionBombIsCut: a few KiB that decompress to one endless line
// cost no more than the event-size limit, in either encoding.
func TestCompressionBombIsCut(t *testing.T) {
	bomb := append([]byte(oneEvent+"data: "), bytes.Repeat([]byte("a"), 64<<20)...)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	zw.Write(bomb)
	zw.Close()
	zs, _ := zstd.NewWriter(nil, zstd.WithWindowSize(1<<20), zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	for enc, body := range map[string][]byte{"gzip": gz.Bytes(), "zstd": zs.EncodeAll(bomb, nil)} {
		t.Run(enc, func(t *testing.T) {
			c := serveBytes(t, enc, body)
			c.MaxLine = 64 << 10
			var n int
			var err error
			mem := allocated(func() { n, err = readAll(t, c) })
			if !errors.Is(err, ErrLineTooLong) || n != 1 {
				t.Errorf("%d KiB of %s: %d chunks, then %v; want 1 and ErrLineTooLong", len(body)>>10, enc, n, err)
			}
			if mem > 4<<20 {
				t.Errorf("%d KiB of %s cost %d KiB", len(body)>>10, enc, mem>>10)
			}
			t.Logf("%d KiB of %s decompressing to 64 MiB: %d KiB allocated", len(body)>>10, enc, mem>>10)
		})
	}
}
