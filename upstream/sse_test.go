package upstream

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// rec is a copied Event. noID stands for a nil ID: a real ID never contains
// NUL, since an id field holding one is ignored.
type rec struct {
	Type, Data, ID string
	Retry          int
}

const noID = "\x00"

func msg(data string) rec      { return rec{Data: data, ID: noID, Retry: -1} }
func (r rec) typ(t string) rec { r.Type = t; return r }
func (r rec) id(id string) rec { r.ID = id; return r }
func (r rec) retry(ms int) rec { r.Retry = ms; return r }
func (r rec) String() string   { return fmt.Sprintf("{%q %q %q %d}", r.Type, r.Data, r.ID, r.Retry) }
func record(ev Event) rec      { return rec{string(ev.Type), string(ev.Data), idString(ev.ID), ev.Retry} }
func idString(id []byte) string {
	if id == nil {
		return noID
	}
	return string(id)
}

// collect decodes r to its end, copying each event before the next Next
// invalidates it, and checks that the final error sticks.
func collect(t testing.TB, r io.Reader, limit int) ([]rec, error) {
	t.Helper()
	er := NewEventReader(r, limit)
	var got []rec
	for range 1 << 16 {
		ev, err := er.Next()
		if err != nil {
			for range 2 {
				if _, again := er.Next(); again != err {
					t.Fatalf("Next after %v returned %v", err, again)
				}
			}
			return got, err
		}
		got = append(got, record(ev))
	}
	t.Fatal("Next never returned an error")
	return nil, nil
}

// edgeReader hands every CR and LF out in a read of its own, so a CRLF always
// straddles two reads.
type edgeReader struct{ s string }

func (r *edgeReader) Read(p []byte) (int, error) {
	if len(r.s) == 0 {
		return 0, io.EOF
	}
	n := strings.IndexAny(r.s, "\r\n")
	switch {
	case n < 0:
		n = len(r.s)
	case n == 0:
		n = 1
	}
	n = copy(p, r.s[:n])
	r.s = r.s[n:]
	return n, nil
}

var readModes = []struct {
	name string
	wrap func(string) io.Reader
}{
	{"whole", func(s string) io.Reader { return strings.NewReader(s) }},
	{"bytewise", func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) }},
	{"line-end-edges", func(s string) io.Reader { return &edgeReader{s} }},
	{"data-with-eof", func(s string) io.Reader { return iotest.DataErrReader(strings.NewReader(s)) }},
	{"halves", func(s string) io.Reader { return iotest.HalfReader(strings.NewReader(s)) }},
}

func TestEventReader(t *testing.T) {
	openAI := `data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hé 世界"}}]}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n" +
		"data: [DONE]\n\n"
	tests := []struct {
		name  string
		in    string
		limit int
		want  []rec
		err   error // io.EOF if nil
	}{
		// Line ends.
		{name: "lf", in: "data: a\n\ndata: b\n\n", want: []rec{msg("a"), msg("b")}},
		{name: "crlf", in: "data: a\r\n\r\ndata: b\r\n\r\n", want: []rec{msg("a"), msg("b")}},
		{name: "cr", in: "data: a\r\rdata: b\r\r", want: []rec{msg("a"), msg("b")}},
		{name: "mixed", in: "data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r", want: []rec{msg("a\nb\nc"), msg("d")}},
		{name: "crlf is one line end", in: "data: a\r\ndata: b\n\n", want: []rec{msg("a\nb")}},
		{name: "lf cr is two line ends", in: "data: a\n\rdata: b\n\n", want: []rec{msg("a"), msg("b")}},
		{name: "cr cr lf", in: "data: a\r\r\ndata: b\r\n\r\n", want: []rec{msg("a"), msg("b")}},

		// Comments and fields.
		{name: "comments", in: ": hello\ndata: a\n: between\n\n:\n\n", want: []rec{msg("a")}},
		{name: "multi-line data", in: "data: a\ndata: b\ndata:\ndata: c\n\n", want: []rec{msg("a\nb\n\nc")}},
		{name: "no space", in: "data:x\n\n", want: []rec{msg("x")}},
		{name: "one space stripped", in: "data: x\n\n", want: []rec{msg("x")}},
		{name: "second space kept", in: "data:  x\n\n", want: []rec{msg(" x")}},
		{name: "trailing space kept", in: "data: x \n\n", want: []rec{msg("x ")}},
		{name: "tab kept", in: "data:\tx\n\n", want: []rec{msg("\tx")}},
		{name: "colons in value", in: "data: a:b: c\n\n", want: []rec{msg("a:b: c")}},
		{name: "field without colon", in: "data\n\n", want: []rec{msg("")}},
		{name: "two fields without colon", in: "data\ndata\n\n", want: []rec{msg("\n")}},
		{name: "empty data dispatched", in: "data:\n\n", want: []rec{msg("")}},
		{name: "unknown fields", in: "foo: bar\nDATA: x\ndata : y\n data: z\nx\ndata: a\n\n", want: []rec{msg("a")}},
		{name: "utf-8", in: "data: héllo 世界 🎉\n\n", want: []rec{msg("héllo 世界 🎉")}},

		// Event types.
		{name: "event type", in: "event: add\ndata: 1\n\ndata: 2\n\n", want: []rec{msg("1").typ("add"), msg("2")}},
		{name: "last event type wins", in: "event: a\nevent: b\ndata: 1\n\n", want: []rec{msg("1").typ("b")}},
		{name: "event type after data", in: "data: 1\nevent: late\n\n", want: []rec{msg("1").typ("late")}},
		{name: "type reset by empty block", in: "event: x\n\ndata: 1\n\n", want: []rec{msg("1")}},
		{name: "empty event type", in: "event\ndata: 1\n\n", want: []rec{msg("1")}},

		// IDs.
		{name: "id persists", in: "id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\ndata: d\n\n",
			want: []rec{msg("a").id("1"), msg("b").id("1"), msg("c").id(""), msg("d").id("")}},
		{name: "id with nul ignored", in: "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", want: []rec{msg("a").id("1"), msg("b").id("1")}},
		{name: "id from empty block", in: "id: 7\n\ndata: a\n\n", want: []rec{msg("a").id("7")}},
		{name: "last id in block wins", in: "id: 1\ndata: a\nid: 2\n\n", want: []rec{msg("a").id("2")}},

		// Retry.
		{name: "retry", in: "retry: 1500\ndata: a\n\ndata: b\n\n", want: []rec{msg("a").retry(1500), msg("b")}},
		{name: "retry zero", in: "retry: 0\ndata: a\n\n", want: []rec{msg("a").retry(0)}},
		{name: "retry invalid", in: "retry: 15x\ndata: a\n\nretry: -1\ndata: b\n\nretry:\ndata: c\n\nretry: 1.5\ndata: d\n\nretry:  10\ndata: e\n\nretry: +1\ndata: f\n\n",
			want: []rec{msg("a"), msg("b"), msg("c"), msg("d"), msg("e"), msg("f")}},
		{name: "invalid retry keeps valid one", in: "retry: 5\nretry: x\ndata: a\n\n", want: []rec{msg("a").retry(5)}},
		{name: "retry carried over empty block", in: "retry: 10\n\ndata: a\n\ndata: b\n\n", want: []rec{msg("a").retry(10), msg("b")}},
		{name: "retry saturates", in: "retry: 99999999999999999999999999\ndata: a\n\n", want: []rec{msg("a").retry(math.MaxInt)}},

		// Byte order marks.
		{name: "bom", in: "\xEF\xBB\xBFdata: a\n\n", want: []rec{msg("a")}},
		{name: "bom in data kept", in: "data: \xEF\xBB\xBFa\n\n", want: []rec{msg("\xEF\xBB\xBFa")}},
		{name: "bom on second line kept", in: "data: a\n\xEF\xBB\xBFdata: b\n\n", want: []rec{msg("a")}},
		{name: "second bom kept", in: "\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n", want: []rec{msg("b")}},
		{name: "bom prefix kept", in: "\xEF\xBBdata: a\n\ndata: b\n\n", want: []rec{msg("b")}},
		{name: "bom only", in: "\xEF\xBB\xBF"},
		{name: "bom then blank", in: "\xEF\xBB\xBF\r\ndata: a\r\n\r\n", want: []rec{msg("a")}},
		{name: "partial bom at end", in: "\xEF\xBB", err: io.ErrUnexpectedEOF},

		// Dispatch.
		{name: "empty block not dispatched", in: "event: x\nid: 3\n\n\n\n", want: nil},
		{name: "openai", in: openAI, want: []rec{
			msg(`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`),
			msg(`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hé 世界"}}]}`),
			msg(`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`),
			msg("[DONE]"),
		}},

		// Ends of stream.
		{name: "empty stream", in: ""},
		{name: "blank lines only", in: "\n\r\n\r"},
		{name: "clean crlf end", in: "data: a\r\n\r\n", want: []rec{msg("a")}},
		{name: "comment-only tail", in: "data: a\n\n: ping\n: ping\r\n", want: []rec{msg("a")}},
		{name: "cut after data line", in: "data: a\n\ndata: b\n", want: []rec{msg("a")}, err: io.ErrUnexpectedEOF},
		{name: "cut inside line", in: "data: a\n\ndata: b", want: []rec{msg("a")}, err: io.ErrUnexpectedEOF},
		{name: "cut after cr", in: "data: a\r", err: io.ErrUnexpectedEOF},
		{name: "cut inside comment", in: "data: a\n\n: keep", want: []rec{msg("a")}, err: io.ErrUnexpectedEOF},
		{name: "cut after event line", in: "data: a\n\nevent: x\n", want: []rec{msg("a")}, err: io.ErrUnexpectedEOF},
		{name: "cut after id line", in: "id: 1\n", err: io.ErrUnexpectedEOF},
		{name: "cut after retry line", in: "retry: 1\n", err: io.ErrUnexpectedEOF},
		{name: "cut after unknown field", in: "data: a\n\nfoo\n", want: []rec{msg("a")}, err: io.ErrUnexpectedEOF},

		// Limits.
		{name: "line at limit", limit: 8, in: "data: ab\n\n", want: []rec{msg("ab")}},
		{name: "line over limit", limit: 8, in: "data: a\n\ndata: abc\n\n", want: []rec{msg("a")}, err: ErrLineTooLong},
		{name: "unterminated line over limit", limit: 8, in: "data: abc", err: ErrLineTooLong},
		{name: "comment over limit", limit: 8, in: ": 12345678\n", err: ErrLineTooLong},
		{name: "data at limit", limit: 10, in: "data:abcde\ndata:fghi\n\n", want: []rec{msg("abcde\nfghi")}},
		{name: "data over limit", limit: 10, in: "data:abcde\ndata:fghij\n\n", err: ErrLineTooLong},
		{name: "empty data lines over limit", limit: 3, in: "data\ndata\ndata\ndata\ndata\n\n", err: ErrLineTooLong},
		{name: "data over limit in many lines", limit: 64,
			in:   "data: ok\n\n" + strings.Repeat("data: abcd\n", 20) + "\n",
			want: []rec{msg("ok")}, err: ErrLineTooLong},
		{name: "limit per event", limit: 10, in: "data:abcde\ndata:fghi\n\ndata:abcde\ndata:fghi\n\n", want: []rec{msg("abcde\nfghi"), msg("abcde\nfghi")}},
		{name: "bom not counted", limit: 8, in: "\xEF\xBB\xBFdata: ab\n\n", want: []rec{msg("ab")}},
		{name: "long line within default limit", in: "data: " + strings.Repeat("x", 10000) + "\n\n", want: []rec{msg(strings.Repeat("x", 10000))}},
	}
	for _, tc := range tests {
		wantErr := tc.err
		if wantErr == nil {
			wantErr = io.EOF
		}
		for _, m := range readModes {
			t.Run(tc.name+"/"+m.name, func(t *testing.T) {
				got, err := collect(t, m.wrap(tc.in), tc.limit)
				if !slices.Equal(got, tc.want) {
					t.Errorf("events\n got %v\nwant %v", got, tc.want)
				}
				if err != wantErr {
					t.Errorf("error %v, want %v", err, wantErr)
				}
			})
		}
	}
}

// scriptReader returns one chunk per read and counts the reads.
type scriptReader struct {
	chunks []string
	reads  int
	err    error // after the chunks; io.EOF if nil
}

func (r *scriptReader) Read(p []byte) (int, error) {
	r.reads++
	if len(r.chunks) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	if r.chunks[0] == "" {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

// An event must be handed on as soon as its blank line arrived, even when
// that line ends in a CR whose LF may be in the next read.
func TestEventReaderDispatchesWithoutReadingAhead(t *testing.T) {
	r := &scriptReader{chunks: []string{"data: a\n\n", "data: b\r\n\r", "\ndata: c\r\r", "\n: x\n"}}
	er := NewEventReader(r, 0)
	for i, want := range []string{"a", "b", "c"} {
		ev, err := er.Next()
		if err != nil || string(ev.Data) != want {
			t.Fatalf("event %d: %q, %v; want %q", i, ev.Data, err, want)
		}
		if r.reads != i+1 {
			t.Fatalf("event %d needed %d reads, want %d", i, r.reads, i+1)
		}
	}
	if _, err := er.Next(); err != io.EOF {
		t.Fatalf("end: %v, want EOF", err)
	}
}

func TestEventReaderReadError(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"plain", boom},
		{"wrapped", fmt.Errorf("reading body: %w", boom)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &scriptReader{chunks: []string{"data: a\n", "\ndata: b"}, err: tc.err}
			got, err := collect(t, r, 0)
			if want := []rec{msg("a")}; !slices.Equal(got, want) {
				t.Errorf("events %v, want %v", got, want)
			}
			if !errors.Is(err, boom) {
				t.Errorf("error %v, want %v", err, boom)
			}
		})
	}
}

func TestEventReaderNoProgress(t *testing.T) {
	_, err := collect(t, iotest.ErrReader(nil), 0)
	if err != io.ErrNoProgress {
		t.Fatalf("error %v, want %v", err, io.ErrNoProgress)
	}
}

// endless repeats pattern forever, but gives up after max bytes so that a
// decoder that keeps reading fails the test instead of hanging it.
type endless struct {
	pattern string
	off     int
	n, max  int
}

var errReadTooFar = errors.New("decoder kept reading")

func (r *endless) Read(p []byte) (int, error) {
	if r.n >= r.max {
		return 0, errReadTooFar
	}
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.pattern[r.off:])
		n += c
		r.off = (r.off + c) % len(r.pattern)
	}
	r.n += n
	return n, nil
}

func TestEventReaderBoundedMemory(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pattern string
		limit   int
	}{
		{"line without end", "a", 1000},
		{"line without end at default limit", "xyz", 0},
		{"line without end under read size", "a", 10},
		{"data without blank line", "data: 0123456789\n", 1000},
		{"crlf data without blank line", "data: 0123456789\r\n", 100000},
		{"empty data lines without blank line", "data\n", 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &endless{pattern: tc.pattern, max: 64 << 20}
			er := NewEventReader(r, tc.limit)
			if _, err := er.Next(); err != ErrLineTooLong {
				t.Fatalf("error %v, want %v", err, ErrLineTooLong)
			}
			limit := er.limit
			bound := max(readSize, limit+1)
			if len(er.buf) > bound || cap(er.data) > limit+1 || cap(er.typ) > bound {
				t.Errorf("buffers grew to %d read, %d data, %d type; limit %d", len(er.buf), cap(er.data), cap(er.typ), limit)
			}
			// Data lines are short, so finding that the data is too long
			// takes reading a few times the limit; a line needs no more than
			// the buffer.
			if r.n > 2*bound+6*limit {
				t.Errorf("read %d bytes before giving up; limit %d", r.n, limit)
			}
		})
	}
}

// Events in a stream that never ends are fine, however many.
func TestEventReaderEndlessStream(t *testing.T) {
	r := &endless{pattern: ": ping\r\nretry: 1\rid: 2\ndata: x\r\n\r\n", max: 8 << 20}
	er := NewEventReader(r, 64)
	for i := range 100000 {
		ev, err := er.Next()
		if err != nil || string(ev.Data) != "x" || string(ev.ID) != "2" || ev.Retry != 1 {
			t.Fatalf("event %d: %v, %v", i, record(ev), err)
		}
	}
	if len(er.buf) > readSize {
		t.Errorf("read buffer grew to %d", len(er.buf))
	}
}

const benchEvent = `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hello"},"finish_reason":null}]}` + "\n\n"

// loopReader replays a stream forever without allocating, at most chunk
// bytes per read.
type loopReader struct {
	b     []byte
	off   int
	chunk int
}

func (r *loopReader) Read(p []byte) (int, error) {
	p = p[:min(len(p), r.chunk)]
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

func TestEventReaderZeroAllocs(t *testing.T) {
	for _, chunk := range []int{1 << 20, len(benchEvent), 7} {
		er := NewEventReader(&loopReader{b: []byte(strings.Repeat(benchEvent, 1000)), chunk: chunk}, 0)
		for range 2000 { // warm up: the data buffer reaches its size
			er.Next()
		}
		allocs := testing.AllocsPerRun(1000, func() {
			if _, err := er.Next(); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%d-byte reads: %v allocations per event", chunk, allocs)
		}
	}
}

// BenchmarkEventReader decodes a realistic OpenAI stream; one op is one
// event, so ns/op and allocs/op are per event.
func BenchmarkEventReader(b *testing.B) {
	stream := []byte(strings.Repeat(benchEvent, 1000))
	for _, bc := range []struct {
		name  string
		chunk int
	}{
		{"4KiB-reads", readSize},
		{"read-per-event", len(benchEvent)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			er := NewEventReader(&loopReader{b: stream, chunk: bc.chunk}, 0)
			b.SetBytes(int64(len(benchEvent)))
			b.ReportAllocs()
			for b.Loop() {
				ev, err := er.Next()
				if err != nil || len(ev.Data) != len(benchEvent)-len("data: \n\n") {
					b.Fatalf("%q, %v", ev.Data, err)
				}
			}
		})
	}
}

// Lines that end only in CR must not make each line cost a scan of the whole
// buffer for an LF that never comes.
func BenchmarkEventReaderCROnly(b *testing.B) {
	ev := strings.ReplaceAll(benchEvent, "\n", "\r")
	stream := []byte(strings.Repeat(ev, 1000))
	er := NewEventReader(&loopReader{b: stream, chunk: 1 << 20}, 4<<20)
	er.buf = make([]byte, 1<<20) // as after one long line
	b.SetBytes(int64(len(ev)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := er.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLineEnd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"", -1},
		{"abc", -1},
		{"\n", 0},
		{"\r", 0},
		{"ab\r\n", 2},
		{"ab\n\r", 2},
		{strings.Repeat("x", scanWindow-1) + "\r", scanWindow - 1},
		{strings.Repeat("x", scanWindow) + "\n", scanWindow},
		{strings.Repeat("x", 3*scanWindow+5) + "\rx\n", 3*scanWindow + 5},
		{strings.Repeat("x", 3*scanWindow+5) + "\nx\r", 3*scanWindow + 5},
		{strings.Repeat("x", 3*scanWindow), -1},
	} {
		if got := lineEnd([]byte(tc.in)); got != tc.want {
			t.Errorf("lineEnd(%.20q…) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

type overReader struct{}

func (overReader) Read(p []byte) (int, error) { return len(p) + 1, nil }

func TestEventReaderBadReader(t *testing.T) {
	if _, err := collect(t, overReader{}, 0); err != errBadRead {
		t.Fatalf("error %v, want %v", err, errBadRead)
	}
}
