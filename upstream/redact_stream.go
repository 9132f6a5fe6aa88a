package upstream

import (
	"bytes"
	"io"
)

// redactReader removes the server's secrets from a body read as it arrives,
// across read boundaries: a secret split over two reads is caught as
// surely as one inside a read. It holds back at most the bytes that may
// begin a secret, so nothing waits for more input longer than it must:
//
//   - a secret never holds a newline, so a secret that begins before a
//     buffer's last newline ends in it: everything up to that newline goes
//     out at once, which passes an event stream on event by event;
//   - after the last newline, all but the last len(longest secret)-1 bytes
//     go out, so a body without newlines (JSON on one line, binary) waits
//     only for that many bytes.
//
// At the end of the body what is held goes out too.
type redactReader struct {
	r    io.Reader
	red  redactor
	hold int  // the bytes that may begin a secret: len(longest) - 1
	nl   bool // no secret holds a newline: a newline ends what is held
	buf  []byte
	off  int // buf[off:ready] may go out
	end  int // buf[ready:] is held back
	err  error
}

// redactReadSize is the least room a read into redactReader's buffer gets.
const redactReadSize = 16 << 10

// reader returns r with the secrets removed, or r itself when there are none.
func (red redactor) reader(r io.Reader) io.Reader {
	if len(red.secrets) == 0 {
		return r
	}
	rr := &redactReader{r: r, red: red, hold: len(red.secrets[0]) - 1, nl: true}
	for _, s := range red.secrets {
		if bytes.IndexByte(s, '\n') >= 0 {
			rr.nl = false
		}
	}
	return rr
}

func (rr *redactReader) Read(p []byte) (int, error) {
	for rr.off == rr.end {
		if rr.err != nil {
			if rr.end == len(rr.buf) {
				return 0, rr.err
			}
			rr.end = len(rr.buf) // the body ended: no secret can complete what is held
			break
		}
		// Keep only what is held back, at the buffer's start.
		rr.buf = rr.buf[:copy(rr.buf, rr.buf[rr.off:])]
		rr.off, rr.end = 0, 0
		if cap(rr.buf)-len(rr.buf) < redactReadSize {
			rr.buf = append(make([]byte, 0, len(rr.buf)+2*redactReadSize), rr.buf...)
		}
		n, err := rr.r.Read(rr.buf[len(rr.buf):cap(rr.buf)])
		rr.err = err
		if n == 0 {
			continue
		}
		rr.buf = rr.red.bytes(rr.buf[:len(rr.buf)+n])
		rr.end = rr.cut()
	}
	n := copy(p, rr.buf[rr.off:rr.end])
	rr.off += n
	return n, nil
}

// cut is how much of the buffer may go out: no secret can begin before it
// and end after the buffer.
func (rr *redactReader) cut() int {
	c := len(rr.buf) - rr.hold
	if rr.nl {
		c = max(c, bytes.LastIndexByte(rr.buf, '\n')+1)
	}
	return max(c, 0)
}
