package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// Why a stream was cut by the proxy's own timers. They are the causes of the
// upstream request's context, so reads that fail because of them say so.
var (
	ErrFirstChunkTimeout = errors.New("no first chunk from the upstream in time")
	ErrIdleTimeout       = errors.New("upstream sent nothing for too long")
	ErrTotalTimeout      = errors.New("stream exceeded its total time limit")
)

// Stream is an upstream's streamed answer being decoded.
type Stream struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	resp   *http.Response
	body   *watchedBody
	events *EventReader
	parser ChunkParser
	api    API
	// responses decodes a Responses API stream (nil for chat).
	responses *ResponsesParser
	// messages decodes a Messages API stream (nil for the others).
	messages *MessagesParser
	// failed is a Responses failure event's error: the event goes out as
	// a chunk first, for the framing that relays events, and the next
	// call to Next returns it.
	failed  *chunk.Error
	plain   bool   // the upstream ignored "stream" and sent one JSON body
	whole   []byte // that body, read ahead when the client asked for a stream
	maxLine int
	red     redactor // removes the server's secrets from what the upstream sends
	// closeBody releases the decoder of a compressed body.
	closeBody func()
	reqBody   *requestBody

	mu       sync.Mutex
	watch    *time.Timer // first-chunk, then idle timer
	total    *time.Timer
	idle     time.Duration
	first    bool         // a first chunk has arrived
	lastRead atomic.Int64 // unix nanoseconds of the last read with bytes
	finished bool         // a finish reason has arrived
	ended    bool
	closed   bool
	onClose  func()
}

// Header is the upstream response's header.
func (s *Stream) Header() http.Header { return s.resp.Header }

// Commit tells the stream that no other upstream will be asked: it lets go
// of the request's body, which the transport could otherwise read again.
func (s *Stream) Commit() { s.reqBody.release() }

// Whole is the body of an answer to a request that did not stream, or of
// an upstream that ignored "stream" and sent one JSON body: read ahead, and
// with the server's secrets removed. It is nil for an event stream.
func (s *Stream) Whole() []byte { return s.whole }

// readWhole reads the one JSON body of an upstream that ignored "stream"
// before anything goes to the client, so that an error in it (some
// gateways answer 200 with {"error":...}) gets a status of its own rather
// than an in-stream signal after a 200.
func (s *Stream) readWhole(parent context.Context) error {
	s.body.whole = true // its first bytes are its first chunk
	body, err := io.ReadAll(io.LimitReader(s.body, s.limit()+1))
	if err != nil {
		return s.failure(parent, "reading the upstream's answer failed")
	}
	if int64(len(body)) > s.limit() {
		return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream, Message: "upstream answer larger than the proxy accepts"}
	}
	s.whole = s.red.bytes(body)
	if e := s.wholeError(); e != nil {
		e.Status = http.StatusBadGateway
		return e
	}
	return nil
}

// wholeError is the error a whole body is instead of an answer, nil if it
// is an answer. A Response object is one even when it failed: a client
// that retrieves a failed response gets it as it is. A Message is an
// answer, Anthropic's {"type":"error",...} is not.
func (s *Stream) wholeError() *chunk.Error {
	if s.api == Messages {
		var m struct {
			Type  string          `json:"type"`
			Error json.RawMessage `json:"error"`
		}
		if json.Unmarshal(s.whole, &m) != nil {
			return nil
		}
		return messageBodyError(m.Type, m.Error)
	}
	if s.api == Responses {
		var r struct {
			Object string          `json:"object"`
			Error  json.RawMessage `json:"error"`
		}
		if json.Unmarshal(s.whole, &r) != nil {
			return nil
		}
		return responseBodyError(r.Object, r.Error)
	}
	var probe chunk.Chunk
	if ParseChunk(s.whole, &probe) == nil && probe.Err != nil {
		return probe.Err
	}
	return nil
}

// failure says why a call failed before the client was sent anything: one
// of the proxy's limits (504), the client leaving (its context's error,
// nothing to tell it), or else the upstream (502, with msg).
func (s *Stream) failure(parent context.Context, msg string) error {
	if cause := s.cause(); errors.Is(cause, ErrFirstChunkTimeout) || errors.Is(cause, ErrTotalTimeout) {
		return &chunk.Error{Status: http.StatusGatewayTimeout, Type: chunk.TypeTimeout, Message: cause.Error()}
	}
	if parent.Err() != nil {
		return parent.Err()
	}
	return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream, Message: msg}
}

func (s *Stream) limit() int64 {
	if s.maxLine <= 0 {
		return 1 << 20
	}
	return int64(s.maxLine)
}

// Next decodes the next chunk into c. It returns io.EOF when the upstream
// finished properly: "[DONE]", or the end of the body after a finish reason
// (some servers omit "[DONE]"); for the Responses API, its
// response.completed. An upstream error event is returned as a
// *chunk.Error; a Responses failure event (error, response.failed,
// response.incomplete) first comes as a chunk with Err set, so that the
// openai framing relays the upstream's own event, and the next call
// returns the error. Any other error means the stream broke.
func (s *Stream) Next(c *chunk.Chunk) error {
	c.Reset()
	if s.failed != nil {
		return s.failed
	}
	if s.ended {
		return io.EOF
	}
	if s.plain {
		return s.nextPlain(c)
	}
	for {
		ev, err := s.events.Next()
		if err != nil {
			if err == io.EOF {
				if s.finished {
					s.ended = true
					return io.EOF
				}
				// The body ended cleanly between events, yet the
				// completion never finished: that is no proper end.
				err = io.ErrUnexpectedEOF
			}
			return s.readError(err)
		}
		s.arrived()
		data := s.red.bytes(ev.Data) // every field may quote a secret
		if s.responses != nil {
			return s.nextResponse(ev.Type, data, c)
		}
		if s.messages != nil {
			return s.nextMessage(ev.Type, data, c)
		}
		if bytes.Equal(ev.Type, errorType) {
			c.Err = ErrorEvent(data) // a failure, whatever its data says
			return c.Err
		}
		if bytes.Equal(ev.Data, doneData) {
			s.ended = true
			return io.EOF
		}
		if err := s.parser.Parse(data, c); err != nil {
			return err
		}
		if c.Err != nil {
			return c.Err
		}
		if c.FinishReason != "" {
			s.finished = true
		}
		return nil
	}
}

var (
	doneData  = []byte("[DONE]")
	errorType = []byte("error")
)

// nextResponse decodes one event of a Responses stream, which ends with its
// terminal event: response.completed, or a failure.
func (s *Stream) nextResponse(typ, data []byte, c *chunk.Chunk) error {
	if bytes.Equal(data, doneData) {
		// A chat stream's end, which some gateways add: it is no end
		// of a response that never completed.
		return io.ErrUnexpectedEOF
	}
	if err := s.responses.Parse(typ, data, c); err != nil {
		return err
	}
	c.Event = typ
	switch {
	case c.Err != nil:
		s.failed = c.Err
	case c.FinishReason != "":
		s.finished, s.ended = true, true
	}
	return nil
}

// DecodeWhole decodes the whole body (Whole) into c: a chat.completion, a
// Response, or a Message.
func (s *Stream) DecodeWhole(c *chunk.Chunk) error {
	if s.api == Messages {
		return ParseMessage(s.whole, c)
	}
	if s.api == Responses {
		return ParseResponse(s.whole, c)
	}
	return ParseChunk(s.whole, c)
}

// nextPlain turns a whole chat.completion (or Response) body into one chunk.
func (s *Stream) nextPlain(c *chunk.Chunk) error {
	if s.whole == nil { // Open reads it ahead for stream requests
		if err := s.readWhole(s.ctx); err != nil {
			return err
		}
	}
	s.ended = true
	s.arrived()
	if err := s.DecodeWhole(c); err != nil {
		return err
	}
	if c.Err != nil {
		return c.Err
	}
	return nil
}

// readError says why a read failed: one of the proxy's timers, or the upstream.
func (s *Stream) readError(err error) error {
	if cause := s.cause(); cause != nil {
		return cause
	}
	return err
}

// cause is the reason the stream's context ended, nil if it has not.
func (s *Stream) cause() error {
	if s.ctx.Err() == nil {
		return nil
	}
	return context.Cause(s.ctx)
}

// arrived moves the watchdog from the first-chunk limit to the idle limit.
// Only the goroutine reading the stream calls it, so first needs no lock.
func (s *Stream) arrived() {
	if s.first {
		return
	}
	s.first = true
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watch != nil {
		s.watch.Stop()
		s.watch = nil
	}
	if s.idle > 0 && !s.closed {
		s.activity()
		s.watch = time.AfterFunc(s.idle, s.idleCheck)
	}
}

// activity notes that bytes came from the upstream, comments included:
// they show it is alive (reasoning models may think for minutes behind
// keepalive comments). It is called on every read, so it only stores the
// time; the idle timer looks at it when it fires.
func (s *Stream) activity() { s.lastRead.Store(time.Now().UnixNano()) }

// idleCheck runs when the idle timer fires: it ends the stream if nothing
// was read for the idle limit, and otherwise waits out the rest of it.
func (s *Stream) idleCheck() {
	quiet := time.Since(time.Unix(0, s.lastRead.Load()))
	if quiet >= s.idle {
		s.cancel(ErrIdleTimeout)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && s.watch != nil {
		s.watch.Reset(s.idle - quiet)
	}
}

// Close releases the upstream connection and stops the timers. It is safe to
// call more than once.
func (s *Stream) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	if s.onClose != nil {
		defer s.onClose()
	}
	if s.watch != nil {
		s.watch.Stop()
	}
	if s.total != nil {
		s.total.Stop()
	}
	s.mu.Unlock()
	s.cancel(context.Canceled)
	if s.resp != nil {
		s.resp.Body.Close()
	}
	if s.closeBody != nil {
		s.closeBody()
	}
}

// watchedBody reports every successful read to the stream's idle timer.
// Once a whole body starts to arrive, the first-chunk limit gives way to
// the idle limit, as it does at an event stream's first event: a long
// answer still arriving is not one that never came.
type watchedBody struct {
	r     io.Reader
	s     *Stream
	whole bool // a whole body is being read and no byte of it came yet
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		b.s.activity()
		if b.whole {
			b.whole = false
			b.s.arrived()
		}
	}
	return n, err
}
