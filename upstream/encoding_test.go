package upstream

import (
	"io"
	"net/http"
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
