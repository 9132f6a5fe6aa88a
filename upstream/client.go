package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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

// Client sends chat-completions requests to one OpenAI-compatible upstream.
type Client struct {
	HTTP    *http.Client
	BaseURL string // e.g. https://api.openai.com/v1
	// Name is what logs and metrics call the upstream: its base URL
	// without the query, which some gateways use for a token.
	Name   string
	APIKey string
	Header http.Header // extra headers (header_up)

	FirstChunk time.Duration // 0: no limit
	Idle       time.Duration // 0: no limit
	Total      time.Duration // 0: no limit
	MaxLine    int           // longest event or line accepted from the upstream
}

// NewTransport returns the transport for upstream connections. It does not
// ask for compression: a compressed event stream only adds latency.
func NewTransport(dial time.Duration) *http.Transport {
	d := &net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   dial,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		// Every open stream holds a connection with these buffers. Events
		// are a few hundred bytes, and requests larger than the write
		// buffer go out directly, so small ones save memory per stream
		// without costing syscalls.
		ReadBufferSize:  2 << 10,
		WriteBufferSize: 1 << 10,
	}
}

// Label is the name of an upstream in logs and metrics: its base URL
// without the query or any credentials.
func Label(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return "invalid upstream URL"
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.User = "", false, "", nil
	return u.String()
}

// NewHTTPClient returns the client for upstream calls over t. It does not
// follow redirects: a POST turned into a GET, or the key sent where the
// upstream points, is never what the configuration said; the client gets a
// 502 that says the base URL is wrong instead.
func NewHTTPClient(t http.RoundTripper) *http.Client {
	return &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

// NewH2CTransport returns the transport for h2c:// upstreams: HTTP/2 over
// plain TCP by prior knowledge, so that many streams share a few
// connections to an upstream on a trusted network (another Caddy, a local
// gateway) instead of one connection and two file descriptors each.
func NewH2CTransport(dial time.Duration) *http.Transport {
	t := NewTransport(dial)
	t.Protocols = new(http.Protocols)
	t.Protocols.SetUnencryptedHTTP2(true)
	return t
}

// CutH2C reports whether base names an h2c upstream (h2c://host/v1, as in
// Caddy's reverse_proxy) and returns it as the http:// URL to request.
func CutH2C(base string) (string, bool) {
	if rest, ok := strings.CutPrefix(base, "h2c://"); ok {
		return "http://" + rest, true
	}
	return base, false
}

// Open sends req and returns the upstream's answer once its status and
// headers arrived with a success status. Failures are *chunk.Error values
// with the status the client should get.
func (c *Client) Open(parent context.Context, req *Request) (*Stream, error) {
	ctx, cancel := context.WithCancelCause(parent)
	s := &Stream{cancel: cancel, ctx: ctx, idle: c.Idle, redact: c.redact}
	if c.Total > 0 {
		s.total = time.AfterFunc(c.Total, func() { cancel(ErrTotalTimeout) })
	}
	if c.FirstChunk > 0 {
		s.watch = time.AfterFunc(c.FirstChunk, func() { cancel(ErrFirstChunkTimeout) })
	} else if c.Idle > 0 {
		s.first = true
		s.activity()
		s.mu.Lock() // idleCheck may run before the assignment is done
		s.watch = time.AfterFunc(c.Idle, s.idleCheck)
		s.mu.Unlock()
	}

	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint("chat/completions"), bytes.NewReader(req.Body))
	if err != nil {
		s.Close()
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeServer, Message: "building upstream request failed"}
	}
	for k, v := range c.Header {
		hr.Header[k] = v
	}
	hr.Header.Set("Content-Type", "application/json")
	if req.Stream {
		hr.Header.Set("Accept", "text/event-stream")
	} else {
		hr.Header.Set("Accept", "application/json")
	}
	if c.APIKey != "" {
		hr.Header.Set("Authorization", "Bearer "+c.APIKey)
	}

	resp, err := c.HTTP.Do(hr)
	if err != nil {
		err = s.failure(parent, "upstream unreachable")
		s.Close()
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := c.statusError(resp)
		s.Close()
		return nil, e
	}
	s.resp = resp
	body, closeBody, err := decodedBody(resp)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.closeBody = closeBody
	s.body = &watchedBody{r: body, s: s}
	s.maxLine = c.MaxLine
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch mt {
	case "text/html":
		// A web page, not the API: most often a base URL without its /v1
		// that lands on a site's catch-all page.
		s.Close()
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream answered with a web page (text/html), not the chat-completions API: check the base URL"}
	case "application/json":
		s.plain = true
		if req.Stream {
			if err := s.readWhole(parent); err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	s.events = NewEventReader(s.body, c.MaxLine)
	return s, nil
}

// readWhole reads the one JSON body of an upstream that ignored "stream"
// before anything goes to the client, so that an error in it (some
// gateways answer 200 with {"error":...}) gets a status of its own rather
// than an in-stream signal after a 200.
func (s *Stream) readWhole(parent context.Context) error {
	body, err := io.ReadAll(io.LimitReader(s.body, s.limit()+1))
	if err != nil {
		return s.failure(parent, "reading the upstream's answer failed")
	}
	if int64(len(body)) > s.limit() {
		return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream, Message: "upstream answer larger than the proxy accepts"}
	}
	s.whole = body
	var probe chunk.Chunk
	if ParseChunk(body, &probe) == nil && probe.Err != nil {
		e := *probe.Err
		e.Status = http.StatusBadGateway
		e.Message = s.redact(e.Message)
		return &e
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

// statusError maps an upstream failure status to what the client gets: the
// upstream's own message for request errors it can fix, a 502 for the server's
// credentials and the upstream's own failures.
func (c *Client) statusError(resp *http.Response) *chunk.Error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &chunk.Error{}
	var wrapped struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &wrapped) == nil && isSet(wrapped.Error) {
		e = parseError(wrapped.Error)
	}
	code := resp.StatusCode
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		// The server's key is wrong, not the client's fault; the upstream's
		// message may quote the key, so it is not passed on.
		return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream rejected the server's credentials (status " + strconv.Itoa(code) + ")"}
	case code == http.StatusTooManyRequests:
		e.Status = code
		e.RetryAfter = resp.Header.Get("Retry-After")
		if e.Type == chunk.TypeUpstream || e.Type == "" {
			e.Type = chunk.TypeRateLimit
		}
		if e.Message == "" || e.Message == "upstream reported an error" {
			e.Message = "upstream rate limit reached"
		}
	case code >= 400 && code < 500:
		e.Status = code
		if e.Message == "" {
			e.Message = "upstream refused the request (status " + strconv.Itoa(code) + ")"
		}
		if e.Type == "" || e.Type == chunk.TypeUpstream {
			e.Type = chunk.TypeInvalidRequest
		}
	case code >= 300 && code < 400:
		return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream answered with a redirect (status " + strconv.Itoa(code) + "): check the base URL"}
	default:
		return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream failed (status " + strconv.Itoa(code) + ")"}
	}
	e.Message = c.redact(e.Message)
	return e
}

// endpoint joins the base URL and a path, keeping any query the base URL
// has (some gateways want ?api-version=).
func (c *Client) endpoint(path string) string {
	u, err := url.Parse(c.BaseURL)
	if err != nil {
		return strings.TrimSuffix(c.BaseURL, "/") + "/" + path
	}
	return u.JoinPath(path).String()
}

// redact removes the server's key from text that came from the upstream.
func (c *Client) redact(s string) string {
	if c.APIKey == "" {
		return s
	}
	return strings.ReplaceAll(s, c.APIKey, "[redacted]")
}

// Stream is an upstream's streamed answer being decoded.
type Stream struct {
	ctx     context.Context
	cancel  context.CancelCauseFunc
	resp    *http.Response
	body    *watchedBody
	events  *EventReader
	parser  ChunkParser
	plain   bool   // the upstream ignored "stream" and sent one JSON body
	whole   []byte // that body, read ahead when the client asked for a stream
	maxLine int
	redact  func(string) string // removes the server's key from upstream text
	// closeBody releases the decoder of a compressed body.
	closeBody func()

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

// Body is the raw response body, for relaying a non-streamed answer.
func (s *Stream) Body() io.Reader { return s.body }

// Next decodes the next chunk into c. It returns io.EOF when the upstream
// finished properly: "[DONE]", or the end of the body after a finish reason
// (some servers omit "[DONE]"). An upstream error event is returned as a
// *chunk.Error. Any other error means the stream broke.
func (s *Stream) Next(c *chunk.Chunk) error {
	c.Reset()
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
		if bytes.Equal(ev.Type, errorType) {
			c.Err = ErrorEvent(ev.Data)
			c.Err.Message = s.redact(c.Err.Message)
			return c.Err
		}
		if bytes.Equal(ev.Data, doneData) {
			s.ended = true
			return io.EOF
		}
		if err := s.parser.Parse(ev.Data, c); err != nil {
			return err
		}
		if c.Err != nil {
			c.Err.Message = s.redact(c.Err.Message) // it may quote the key
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

// nextPlain turns a whole chat.completion body into one chunk.
func (s *Stream) nextPlain(c *chunk.Chunk) error {
	if s.whole == nil { // Open reads it ahead for stream requests
		if err := s.readWhole(s.ctx); err != nil {
			return err
		}
	}
	body := s.whole
	s.ended = true
	s.arrived()
	if err := ParseChunk(body, c); err != nil {
		return err
	}
	if c.Err != nil {
		c.Err.Message = s.redact(c.Err.Message)
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
type watchedBody struct {
	r io.Reader
	s *Stream
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		b.s.activity()
	}
	return n, err
}
