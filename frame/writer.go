package frame

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// ErrAbort is returned by Fail in the text framing, which has no way to
// signal an error in-band: the caller must abort the response so the client
// sees a broken body rather than a clean end.
var ErrAbort = errors.New("text framing cannot carry an error: abort the response")

var errClosed = errors.New("stream writer closed")

// DownstreamError wraps a failure to write or flush to the client, so callers
// can tell a client that left apart from an upstream that failed.
type DownstreamError struct{ Err error }

func (e *DownstreamError) Error() string { return "writing to client: " + e.Err.Error() }
func (e *DownstreamError) Unwrap() error { return e.Err }

// Writer writes one streamed completion to a client in one framing. Every
// method writes whole frames and flushes them before returning. Heartbeats
// come from a timer goroutine, so the writing methods hold a lock; otherwise
// a Writer belongs to one goroutine.
type Writer struct {
	mu       sync.Mutex
	beat     *time.Timer
	every    time.Duration
	lastSend time.Time // of the last frame, for the heartbeat timer
	closed   bool

	w     io.Writer
	flush func() error
	f     Format

	// IncludeUsage relays the usage-only chunk in the openai framing; the
	// proxy always asks the upstream for usage, but a client that did not ask
	// must not see a chunk with no choices, which some clients choke on.
	IncludeUsage bool
	// StreamID, in the SSE framings (openai and sse), is sent as the ID of
	// the first event, so that an EventSource that reconnects after the end
	// presents it as Last-Event-ID and can be told to stop instead of
	// starting over. It goes with data, never alone: fetch-based SSE
	// clients deliver an event without data as an empty message.
	StreamID string
	idSent   bool
	// NumberEvents makes every event of the SSE framings carry its own
	// ID, "<StreamID>.<n>" with n counting the stream's frames from 1 (in
	// every framing: an ndjson line, a piece of text), so that a client
	// that reconnects tells how far it got. Heartbeats are not counted.
	NumberEvents bool
	frames       int64 // sent, for NumberEvents
	// Retry, with NumberEvents, is sent with the first event as the SSE
	// retry field: how long an EventSource waits before it reconnects
	// (3s in browsers without it).
	Retry time.Duration

	// TypedEvents makes the openai framing relay a Responses API stream as
	// the upstream sent it: each chunk is its event, the "event:" line and
	// the data, every one of them (the framings other than openai are
	// unchanged). The stream's end is the upstream's own
	// response.completed, so Done adds nothing; its failures are its own
	// events, so Fail after one adds nothing, and a failure of the proxy's
	// is an error event in the Responses shape.
	TypedEvents bool
	// ErrorEvent, with TypedEvents, appends the data of the error event
	// that tells a failure of the proxy's own, given the events relayed
	// before it; nil: the Responses API's (see appendErrorEvent).
	ErrorEvent func(b []byte, e *chunk.Error, relayed int64) []byte
	events     int64 // relayed: the next sequence_number
	relayedErr bool  // the upstream's own failure event went out

	// HeadersSent tells Start that the headers went out already, so it
	// flushes nothing: see HeadersSent (the func).
	HeadersSent bool

	// WriteTimeout bounds how long one write may block on a client that
	// stopped reading; SetDeadline applies it (http.ResponseController's
	// SetWriteDeadline). Without them a stalled client holds its stream,
	// and the upstream behind it, until the kernel gives up.
	WriteTimeout time.Duration
	SetDeadline  func(time.Time) error

	buf     []byte
	compact bytes.Buffer // a value being compacted, see appendJSON
	started bool

	// What the done event reports, gathered from the chunks.
	finish   string
	usage    []byte // compacted into usageBuf
	usageBuf bytes.Buffer
	model    string
	// Wrote tells whether any content, reasoning or tool call has reached
	// the client.
	wrote bool
}

// NewWriter returns a Writer that writes to w and calls flush after each frame.
func NewWriter(w io.Writer, flush func() error, f Format) *Writer {
	return &Writer{w: w, flush: flush, f: f, buf: make([]byte, 0, 512)}
}

// Format is the framing this Writer writes.
func (fw *Writer) Format() Format { return fw.f }

// WroteDelta reports whether any content, reasoning or tool call reached the client.
func (fw *Writer) WroteDelta() bool { return fw.wrote }

// FinishReason is the finish_reason seen so far ("" if none).
func (fw *Writer) FinishReason() string { return fw.finish }

// Usage is the usage object seen so far (nil if none).
func (fw *Writer) Usage() []byte { return fw.usage }

// Model is the model named by the upstream's chunks.
func (fw *Writer) Model() string { return fw.model }

// Start sends the response's headers. It is safe to call more than once.
func (fw *Writer) Start() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.start()
}

func (fw *Writer) start() error {
	if fw.started {
		return nil
	}
	fw.started = true
	if fw.HeadersSent {
		return nil
	}
	if err := fw.flush(); err != nil {
		return &DownstreamError{err}
	}
	return nil
}

// appendID starts the first event of an SSE framing with the stream's ID,
// and tells whether it did, so that a frame that is not sent after all can
// give the ID back with unsent.
func (fw *Writer) appendID(b []byte) ([]byte, bool) {
	if fw.StreamID == "" || (fw.f != SSE && fw.f != OpenAI) {
		return b, false
	}
	if fw.NumberEvents {
		if fw.frames == 0 && fw.Retry > 0 {
			b = append(b, "retry: "...)
			b = strconv.AppendInt(b, fw.Retry.Milliseconds(), 10)
			b = append(b, '\n')
		}
		b = append(b, "id: "...)
		b = append(append(b, fw.StreamID...), '.')
		b = strconv.AppendInt(b, fw.frames+1, 10)
		return append(b, '\n'), false
	}
	if fw.idSent {
		return b, false
	}
	fw.idSent = true
	b = append(b, "id: "...)
	b = append(b, fw.StreamID...)
	return append(b, '\n'), true
}

// Frames is how many frames (events, lines, pieces of text) were sent,
// heartbeats aside.
func (fw *Writer) Frames() int64 {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.frames
}

// Chunk writes one chunk if it carries anything for this framing, and
// flushes. It records the finish reason, usage and model for Done.
func (fw *Writer) Chunk(c *chunk.Chunk) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if c.FinishReason != "" {
		fw.finish = c.FinishReason
	}
	if c.Usage != nil {
		fw.usageBuf.Reset()
		if json.Compact(&fw.usageBuf, c.Usage) != nil {
			return ErrContent
		}
		fw.usage = fw.usageBuf.Bytes()
	}
	if c.Model != "" && c.Model != fw.model {
		fw.model = c.Model
	}
	if c.HasDelta() {
		fw.wrote = true
	}
	if err := fw.start(); err != nil {
		return err
	}

	b := fw.buf[:0]
	var err error
	var withID bool
	switch fw.f {
	case OpenAI:
		if fw.TypedEvents {
			b, withID = fw.appendID(b)
			if len(c.Event) > 0 {
				b = append(append(append(b, "event: "...), c.Event...), '\n')
			}
			if b, err = fw.appendData(b, c.Raw); err == nil {
				fw.events++
				fw.relayedErr = c.Err != nil
			}
			break
		}
		if !c.HasChoices && c.Usage != nil && !fw.IncludeUsage {
			return nil
		}
		b, withID = fw.appendID(b)
		b, err = fw.appendData(b, c.Raw)
	case SSE, NDJSON:
		if !c.HasDelta() {
			return nil
		}
		if fw.f == SSE {
			b, withID = fw.appendID(b)
			b = append(b, "data: "...)
		}
		b = append(b, '{')
		if b, err = fw.appendField(b, "content", c.Content); err != nil {
			break
		}
		if b, err = fw.appendField(b, "reasoning", c.Reasoning); err != nil {
			break
		}
		if b, err = fw.appendField(b, "tool_calls", c.ToolCalls); err != nil {
			break
		}
		b = append(b, '}')
		if fw.f == SSE {
			b = append(b, "\n\n"...)
		} else {
			b = append(b, '\n')
		}
	case Text:
		if c.Content == nil {
			return nil
		}
		b, err = appendUnquoted(b, c.Content)
	}
	fw.buf = b
	if err != nil {
		if withID {
			fw.idSent = false // the frame with it is not sent
		}
		return err
	}
	return fw.sendFrame(b)
}

// Done writes the framing's end of a stream that finished properly.
func (fw *Writer) Done() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if err := fw.start(); err != nil {
		return err
	}
	if fw.f == OpenAI && fw.TypedEvents {
		return nil // the upstream's response.completed was the end
	}
	b, _ := fw.appendID(fw.buf[:0])
	switch fw.f {
	case OpenAI:
		b = append(b, "data: [DONE]\n\n"...)
	case SSE:
		b = append(b, "event: done\ndata: "...)
		b = fw.appendSummary(b, false)
		b = append(b, "\n\n"...)
	case NDJSON:
		b = fw.appendSummary(b, true)
		b = append(b, '\n')
	case Text:
		return nil
	}
	fw.buf = b
	return fw.sendFrame(b)
}

// Fail writes the framing's error signal. In the text framing it writes
// nothing and returns ErrAbort: the caller must break the response.
func (fw *Writer) Fail(e *chunk.Error) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.f == Text {
		return ErrAbort
	}
	if err := fw.start(); err != nil {
		return err
	}
	if fw.f == OpenAI && fw.TypedEvents && fw.relayedErr {
		return nil // the upstream's own failure event went out
	}
	b, _ := fw.appendID(fw.buf[:0])
	switch {
	case fw.f == OpenAI && fw.TypedEvents:
		b = append(b, "event: error\ndata: "...)
		if fw.ErrorEvent != nil {
			b = fw.ErrorEvent(b, e, fw.events)
		} else {
			b = appendErrorEvent(b, e, fw.events)
		}
		b = append(b, "\n\n"...)
	case fw.f == OpenAI:
		b, _ = fw.appendData(b, e.MarshalBody()) // json.Marshal's output is compact
	case fw.f == SSE:
		b = append(b, "event: error\ndata: "...)
		b = append(b, e.MarshalBody()...)
		b = append(b, "\n\n"...)
	case fw.f == NDJSON:
		b = append(b, e.MarshalBody()...)
		b = append(b, '\n')
	}
	fw.buf = b
	return fw.sendFrame(b)
}

// appendErrorEvent appends the data of a Responses API error event:
// {"type":"error","code":...,"message":...,"param":null,"sequence_number":n}.
// The code is the error's own, else its type (timeout_error, ...).
func appendErrorEvent(b []byte, e *chunk.Error, seq int64) []byte {
	b = append(b, `{"type":"error","code":`...)
	if len(e.Code) > 0 && json.Valid(e.Code) && !bytes.ContainsAny(e.Code, "\r\n") {
		b = append(b, e.Code...)
	} else {
		b = appendString(b, e.Type)
	}
	b = append(b, `,"message":`...)
	b = appendString(b, e.Message)
	b = append(b, `,"param":null,"sequence_number":`...)
	b = strconv.AppendInt(b, seq, 10)
	return append(b, '}')
}

// Heartbeat writes a keepalive that clients ignore: an SSE comment line,
// or an empty line in NDJSON (which NDJSON readers skip). Plain text has no
// such thing, so there it writes nothing. The comment is not followed by a
// blank line: a blank line ends an event, and fetch-based SSE clients
// (@microsoft/fetch-event-source) deliver an ended event with no data as an
// empty message; a comment alone is skipped by every parser.
func (fw *Writer) Heartbeat() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.heartbeat()
}

func (fw *Writer) heartbeat() error {
	if fw.closed {
		return nil
	}
	if k := fw.f.Keepalive(); k != nil {
		return fw.send(append(fw.buf[:0], k...))
	}
	return nil
}

// Keepalive is what a heartbeat writes in framing f (see Heartbeat): nil
// in text, which has none.
func (f Format) Keepalive() []byte {
	switch f {
	case OpenAI, SSE:
		return keepaliveComment
	case NDJSON:
		return keepaliveLine
	}
	return nil
}

var keepaliveComment, keepaliveLine = []byte(": keepalive\n"), []byte("\n")

// KeepAlive sends a heartbeat whenever nothing was sent for d, until
// Close. d <= 0 or the text framing turns it off.
func (fw *Writer) KeepAlive(d time.Duration) {
	if d <= 0 || fw.f == Text {
		return
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.every = d
	fw.lastSend = time.Now()
	fw.beat = time.AfterFunc(d, fw.tick)
}

// tick runs when the heartbeat timer fires. Sends only note their time
// (moving a timer on every chunk costs more than the chunk's own framing),
// so a tick that finds a recent send waits out the rest of the interval.
func (fw *Writer) tick() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return
	}
	if quiet := time.Since(fw.lastSend); quiet < fw.every {
		fw.beat.Reset(fw.every - quiet)
		return
	}
	// A failed heartbeat means the client left; the request's context
	// tells the streaming loop, so the error needs no other path.
	_ = fw.heartbeat()
	fw.beat.Reset(fw.every)
}

// Close stops heartbeats. Nothing is written after it.
func (fw *Writer) Close() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.closed = true
	if fw.beat != nil {
		fw.beat.Stop()
	}
}

// sendFrame sends a frame that counts, unlike a heartbeat.
func (fw *Writer) sendFrame(b []byte) error {
	err := fw.send(b)
	if err == nil {
		fw.frames++
	}
	return err
}

func (fw *Writer) send(b []byte) error {
	if fw.closed {
		return &DownstreamError{errClosed}
	}
	if fw.beat != nil {
		fw.lastSend = time.Now()
	}
	if fw.WriteTimeout > 0 && fw.SetDeadline != nil {
		// Armed only around the write: on HTTP/2 a deadline left armed
		// resets the stream when it fires, even between writes.
		if fw.SetDeadline(time.Now().Add(fw.WriteTimeout)) == nil {
			defer fw.SetDeadline(time.Time{})
		}
	}
	if _, err := fw.w.Write(b); err != nil {
		return &DownstreamError{err}
	}
	if err := fw.flush(); err != nil {
		return &DownstreamError{err}
	}
	return nil
}

// appendSummary appends {"finish_reason":..,"usage":..,"model":..}, with
// "done":true first in the ndjson framing.
func (fw *Writer) appendSummary(b []byte, done bool) []byte {
	b = append(b, '{')
	if done {
		b = append(b, `"done":true,`...)
	}
	b = append(b, `"finish_reason":`...)
	if fw.finish == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, fw.finish)
	}
	b = append(b, `,"usage":`...)
	if fw.usage == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, fw.usage...)
	}
	b = append(b, `,"model":`...)
	b = appendString(b, fw.model)
	return append(b, '}')
}

// appendString appends s as a JSON string. The strings come from the
// upstream and may hold anything: control characters are escaped and
// invalid UTF-8 is replaced, so that what is written is always JSON.
func appendString(b []byte, s string) []byte {
	b, _ = jsontext.AppendQuote(b, s) // the error only reports the replacement
	return b
}

// appendData appends one SSE event carrying the JSON data. JSON may hold
// line breaks between tokens (an upstream's data lines join with "\n"), which
// would end the data line early and let the data write lines of its own, so
// such data is compacted; data that cannot be is refused.
func (fw *Writer) appendData(b, data []byte) ([]byte, error) {
	b = append(b, "data: "...)
	if bytes.IndexByte(data, '\n') >= 0 || bytes.IndexByte(data, '\r') >= 0 { // faster than ContainsAny
		fw.compact.Reset()
		if json.Compact(&fw.compact, data) != nil {
			return b, ErrContent
		}
		data = fw.compact.Bytes()
	}
	b = append(b, data...)
	return append(b, "\n\n"...), nil
}

// appendField appends "name":value to a JSON object being built, with a
// comma if the object already has a field.
func (fw *Writer) appendField(b []byte, name string, value json.RawMessage) ([]byte, error) {
	if value == nil {
		return b, nil
	}
	if b[len(b)-1] != '{' {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, `":`...)
	return fw.appendJSON(b, value)
}

// appendJSON appends the raw JSON value v compacted. The upstream's values
// may hold line breaks between tokens (its data lines join with "\n"), and
// copied as they are they would end a data line or an ndjson line early
// and let the upstream write lines of its own. The values are JSON, as the
// chunk parser checked; their layout is what is not trusted. A value with
// no space character at all is compact already, and so is a string token
// (what most values are) unless it holds a line break, which no valid one
// does; those are copied as they are.
func (fw *Writer) appendJSON(b, v []byte) ([]byte, error) {
	if len(v) > 0 && v[0] == '"' && bytes.IndexByte(v, '\n') < 0 && bytes.IndexByte(v, '\r') < 0 ||
		!bytes.ContainsAny(v, " \t\r\n") {
		return append(b, v...), nil
	}
	fw.compact.Reset()
	if json.Compact(&fw.compact, v) != nil {
		return b, ErrContent
	}
	return append(b, fw.compact.Bytes()...), nil
}

// ErrContent is returned by Chunk for a chunk the framing cannot carry:
// in the text framing, content that is neither a string nor an array of
// text parts; in the others, a value that is not JSON.
var ErrContent = errors.New("upstream chunk holds content this framing cannot carry")

// appendUnquoted appends the text of content: a JSON string, or an array of
// parts ([{"type":"text","text":"..."}], as some providers send it).
func appendUnquoted(b []byte, tok json.RawMessage) ([]byte, error) {
	if len(tok) >= 2 && tok[0] == '"' && bytes.IndexByte(tok, '\\') < 0 {
		return append(b, tok[1:len(tok)-1]...), nil
	}
	var s string
	if err := json.Unmarshal(tok, &s); err == nil {
		return append(b, s...), nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(tok, &parts); err != nil {
		return b, ErrContent
	}
	for _, p := range parts {
		if p.Text != nil && (p.Type == "" || p.Type == "text") {
			b = append(b, *p.Text...)
		}
	}
	return b, nil
}

// HeadersSent tells whether a response whose headers h are, written with
// WriteHeader, has sent them already: Caddy's encode does for an
// Incremental response it compresses. A flush before its first byte would
// then start the compressed stream, and encode ends one only after a write:
// a text reply with no text (a tool call alone) would end with no trailer,
// a broken body. A writer for such a response must not flush before it
// writes.
func HeadersSent(h http.Header) bool {
	return h.Get("Content-Encoding") != "" && h.Get("Incremental") != ""
}
