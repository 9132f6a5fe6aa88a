package upstream

import (
	"bytes"
	"errors"
	"io"
	"math"
)

// Event is one dispatched server-sent event. Its slices alias the reader's
// buffers and are valid only until the next call to Next.
type Event struct {
	Type []byte // the "event:" field; empty for the default "message" type
	Data []byte // the data lines joined with "\n"
	ID   []byte // the last event ID buffer at dispatch (nil if never set)
	// Retry is the reconnection time in ms from the last valid "retry:" line
	// since the previous event, -1 if none. A retry line in a block without
	// data is carried to the next event instead of being lost with the block.
	Retry int
}

// ErrLineTooLong is returned when a line or an event's data exceeds the
// reader's limit.
var ErrLineTooLong = errors.New("event stream line or event data too long")

// errBadRead guards the buffer against a reader that breaks io.Reader's
// contract; failing the stream beats panicking the server.
var errBadRead = errors.New("event stream reader returned an invalid count")

const (
	defaultLimit = 1 << 20
	// readSize is the buffer an EventReader starts with. Chat chunks are a
	// few hundred bytes and the transport buffers the connection already,
	// so a small buffer costs no extra syscalls; it grows for longer lines.
	// Every open stream holds one, so its size is memory per stream.
	readSize = 1 << 10
	// scanWindow bounds how far one search for a line end looks ahead, so a
	// stream that ends its lines with only CR (or only LF) costs a window per
	// line rather than a scan of the whole buffer per line.
	scanWindow = 512
	// maxEmptyReads stops a reader that keeps returning 0, nil from
	// spinning Next forever.
	maxEmptyReads = 100
)

var bom = []byte("\xEF\xBB\xBF")

// EventReader decodes a text/event-stream as the WHATWG HTML standard
// specifies, except that it tells a truncated stream from a finished one,
// bounds the memory one event may take, and passes bytes on unchanged rather
// than replacing invalid UTF-8, so that relayed data stays what was sent.
type EventReader struct {
	r     io.Reader
	limit int

	buf        []byte // buf[start:end] is read but not yet consumed
	start, end int
	scanned    int   // leading bytes of buf[start:end] known to hold no line end
	rerr       error // from the last Read; acted on once the buffer is drained
	err        error // returned by every Next once set

	typ, data, id []byte
	retry         int
	pending       bool // a field line since the last blank line
	afterCR       bool // the last line ended in CR, so a leading LF is part of it
	bomDone       bool
}

// NewEventReader returns a reader of the events in r. limit is the largest
// line and the largest event data accepted, in bytes; limit <= 0 means 1 MiB.
func NewEventReader(r io.Reader, limit int) *EventReader {
	if limit <= 0 {
		limit = defaultLimit
	}
	// limit+1 is used as a buffer size; keep it from overflowing.
	limit = min(limit, math.MaxInt-1)
	return &EventReader{r: r, limit: limit, buf: make([]byte, readSize), retry: -1}
}

// Next returns the next event. At the end of the stream it returns io.EOF,
// or io.ErrUnexpectedEOF if the stream stopped inside a line or an event.
// Once it returned an error, it keeps returning it.
func (er *EventReader) Next() (Event, error) {
	for er.err == nil {
		line, err := er.line()
		if err != nil {
			er.err = err
			break
		}
		if len(line) == 0 {
			if ev, ok := er.dispatch(); ok {
				return ev, nil
			}
			continue
		}
		er.err = er.field(line)
	}
	return Event{}, er.err
}

// dispatch ends the current block. The returned slices stay intact until the
// next Next because resetting only shortens the buffers.
func (er *EventReader) dispatch() (Event, bool) {
	er.pending = false
	if len(er.data) == 0 {
		er.typ = er.typ[:0]
		return Event{}, false
	}
	ev := Event{Type: er.typ, Data: er.data[:len(er.data)-1], ID: er.id, Retry: er.retry}
	er.typ, er.data, er.retry = er.typ[:0], er.data[:0], -1
	return ev, true
}

func (er *EventReader) field(line []byte) error {
	if line[0] == ':' {
		return nil
	}
	er.pending = true
	name, value := line, line[len(line):]
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		name, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(name) {
	case "data":
		return er.appendData(value)
	case "event":
		er.typ = append(er.typ[:0], value...)
	case "id":
		if bytes.IndexByte(value, 0) >= 0 {
			break
		}
		if er.id == nil {
			er.id = []byte{} // an empty id is set, unlike one never sent
		}
		er.id = append(er.id[:0], value...)
	case "retry":
		if n, ok := parseRetry(value); ok {
			er.retry = n
		}
	}
	return nil
}

// appendData grows the data buffer itself so that its capacity, not just its
// length, stays within the limit.
func (er *EventReader) appendData(v []byte) error {
	if len(er.data)+len(v) > er.limit {
		return ErrLineTooLong
	}
	if need := len(er.data) + len(v) + 1; need > cap(er.data) {
		d := make([]byte, len(er.data), min(max(2*cap(er.data), need, 256), er.limit+1))
		copy(d, er.data)
		er.data = d
	}
	er.data = append(append(er.data, v...), '\n')
	return nil
}

// parseRetry accepts only ASCII digits, as the standard says; values too big
// for an int saturate rather than wrap.
func parseRetry(v []byte) (int, bool) {
	if len(v) == 0 {
		return 0, false
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (math.MaxInt-9)/10 {
			n = math.MaxInt
		} else {
			n = n*10 + int(c-'0')
		}
	}
	return n, true
}

// line returns the next line without its line end. The slice aliases the
// read buffer and is valid until the next call.
func (er *EventReader) line() ([]byte, error) {
	for {
		if !er.bomDone {
			b := er.buf[er.start:er.end]
			// A BOM split over reads must be whole before it can be told
			// from data that merely starts like one.
			if len(b) < len(bom) && bytes.HasPrefix(bom, b) && er.rerr == nil {
				er.fill()
				continue
			}
			if bytes.HasPrefix(b, bom) {
				er.start += len(bom)
			}
			er.bomDone = true
		}
		b := er.buf[er.start:er.end]
		// The line that ended in CR was handed out at once rather than held
		// back until the next byte showed whether it was a CRLF.
		if er.afterCR && len(b) > 0 {
			er.afterCR = false
			if b[0] == '\n' {
				er.start++
				b = b[1:]
			}
		}
		if i := lineEnd(b[er.scanned:]); i >= 0 {
			i += er.scanned
			if i > er.limit {
				return nil, ErrLineTooLong
			}
			er.afterCR = b[i] == '\r'
			er.start += i + 1
			er.scanned = 0
			return b[:i], nil
		}
		// Give up as soon as the line is too long rather than read on to
		// find where it ends.
		if len(b) > er.limit {
			return nil, ErrLineTooLong
		}
		er.scanned = len(b)
		if er.rerr != nil {
			return nil, er.endErr(len(b) > 0)
		}
		er.fill()
	}
}

func (er *EventReader) endErr(partial bool) error {
	if er.rerr != io.EOF {
		return er.rerr
	}
	// The standard drops an unfinished event silently; a proxy must know it
	// relayed a cut stream.
	if partial || er.pending {
		return io.ErrUnexpectedEOF
	}
	return io.EOF
}

// fill reads more input after the unconsumed bytes. It is called only when
// they hold no whole line, so it grows the buffer only for a line longer than
// the buffer, and never past limit+1: enough to tell a line of limit bytes
// from a longer one.
func (er *EventReader) fill() {
	if er.start > 0 {
		er.end = copy(er.buf, er.buf[er.start:er.end])
		er.start = 0
	}
	if er.end == len(er.buf) {
		buf := make([]byte, min(2*len(er.buf), er.limit+1))
		copy(buf, er.buf[:er.end])
		er.buf = buf
	}
	for range maxEmptyReads {
		n, err := er.r.Read(er.buf[er.end:])
		if n < 0 || n > len(er.buf)-er.end {
			er.rerr = errBadRead
			return
		}
		er.end += n
		if err != nil {
			er.rerr = err
			return
		}
		if n > 0 {
			return
		}
	}
	er.rerr = io.ErrNoProgress
}

// lineEnd returns the index of the first CR or LF in b, or -1. Two IndexByte
// scans per window beat IndexAny, which checks a byte at a time.
func lineEnd(b []byte) int {
	for off := 0; off < len(b); off += scanWindow {
		w := b[off:min(off+scanWindow, len(b))]
		lf := bytes.IndexByte(w, '\n')
		if lf >= 0 {
			w = w[:lf]
		}
		if cr := bytes.IndexByte(w, '\r'); cr >= 0 {
			return off + cr
		}
		if lf >= 0 {
			return off + lf
		}
	}
	return -1
}
