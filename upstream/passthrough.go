package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// PassRequest is a request for an endpoint of the API other than chat
// completions (embeddings, legacy completions, audio, images, Anthropic's
// messages), passed to the upstream as the client sent it but for the
// credentials: the upstream's key replaces whatever the client had, and
// only the client headers of PassHeaders go along.
type PassRequest struct {
	Method string
	// Path is the API path below the base URL: embeddings, audio/speech.
	Path string
	// RawQuery is the client's query, passed on after the base URL's own.
	RawQuery string
	// Header is the client's header; only PassHeaders of it are sent.
	Header http.Header
	// Body is the whole body when it is held in memory: any upstream of
	// the pool may then be asked. Nil when BodyReader is set.
	Body []byte
	// BodyReader is a body streamed to the upstream as it arrives, of
	// ContentLength bytes (-1: unknown). It can be sent once: only one
	// upstream may be asked.
	BodyReader    io.Reader
	ContentLength int64
	// Model is the model a JSON body names ("" if none or not JSON): an
	// upstream's rename of it rewrites the body, and a 429 parks the
	// upstream for it.
	Model string
}

// PassHeaders are the client headers a passed-through request carries:
// what describes the body and the answer wanted, and the API versions and
// betas a client opts into. Never Authorization, x-api-key or Cookie: the
// upstream's key is the server's, and the client's credentials are its own.
var PassHeaders = []string{
	"Content-Type", "Accept", "Idempotency-Key",
	"Openai-Beta", "Anthropic-Version", "Anthropic-Beta",
}

// answerHeaders are the upstream headers a passed-through answer keeps.
// The others (Set-Cookie, the server's own rate limits and account, its
// servers' names) describe the server's account, not the client's answer.
// Content-Length is kept only for bodies passed unchanged (see Answer).
var answerHeaders = []string{
	"Content-Type", "Content-Disposition", "Content-Language",
	"X-Request-Id", "Request-Id", "Openai-Processing-Ms", "Openai-Version",
}

// Answer is an upstream's answer to a PassRequest, its status a success.
// Its body is read with Read, and has had the server's secrets removed
// unless it is binary (Binary): a text body (JSON, an event stream, plain
// text) passes through redactReader, which catches a secret split across
// reads and holds back no whole event; an audio, image or video body, or
// application/octet-stream, passes as it came: changing its bytes would
// break it, and an upstream has no reason to put a key into a sound.
type Answer struct {
	// Status is the upstream's success status.
	Status int
	// Header is the upstream's header, kept to answerHeaders and redacted.
	Header http.Header

	s     *Stream
	body  io.Reader
	first []byte // the body's first bytes, read before Pass returned
	err   error  // the error that ended the body while reading them
}

// Binary tells whether a media type is passed through without redaction.
func Binary(mediaType string) bool {
	top, _, _ := strings.Cut(mediaType, "/")
	return top == "audio" || top == "image" || top == "video" || mediaType == "application/octet-stream"
}

// EventStream tells whether the answer is a server-sent event stream.
func (a *Answer) EventStream() bool {
	mt, _, _ := mime.ParseMediaType(a.Header.Get("Content-Type"))
	return mt == "text/event-stream"
}

// Read reads the body. A failure names the proxy's limit that ended it
// (ErrIdleTimeout, ErrTotalTimeout) where one did.
func (a *Answer) Read(p []byte) (int, error) {
	if len(a.first) > 0 {
		n := copy(p, a.first)
		a.first = a.first[n:]
		return n, nil
	}
	if a.err != nil {
		return 0, a.err
	}
	n, err := a.body.Read(p)
	if err != nil && err != io.EOF {
		err = a.s.readError(err)
	}
	return n, err
}

// Commit lets go of the request's body: no other upstream will be asked.
func (a *Answer) Commit() { a.s.Commit() }

// Close releases the upstream connection. It is safe to call more than once.
func (a *Answer) Close() { a.s.Close() }

// passFirstRead is how much of an answer Pass reads before it returns.
const passFirstRead = 16 << 10

// Pass sends p and returns the upstream's answer once its first bytes
// arrived (or its body ended): a failure before then, a status or a broken
// connection, is an error with the status the client should get, and the
// request may go to another upstream (MayFailOver). The first_chunk limit
// runs until those first bytes, the idle and total limits after them.
func (c *Client) Pass(parent context.Context, p *PassRequest) (*Answer, error) {
	s := c.newStream(parent)
	var body io.Reader
	var bodyErr *sentBody
	switch {
	case p.BodyReader != nil:
		bodyErr = &sentBody{r: p.BodyReader}
		body = bodyErr
	case len(p.Body) > 0:
		s.reqBody = &requestBody{b: p.Body}
		body, _ = s.reqBody.open()
	}
	if s.reqBody == nil {
		s.reqBody = &requestBody{}
	}
	hr, err := c.newRequest(s.ctx, p.Method, p.Path, body)
	if err != nil {
		s.Close()
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeServer, Message: "building upstream request failed"}
	}
	if p.RawQuery != "" {
		hr.URL.RawQuery = strings.TrimPrefix(hr.URL.RawQuery+"&"+p.RawQuery, "&")
	}
	for _, k := range PassHeaders {
		if _, set := c.Header[k]; set {
			continue // header_up is the operator's word
		}
		if vs := p.Header.Values(k); len(vs) > 0 {
			hr.Header[k] = vs
		}
	}
	if len(p.Body) > 0 {
		hr.ContentLength, hr.GetBody = int64(len(p.Body)), s.reqBody.open
	} else if p.BodyReader != nil {
		hr.ContentLength = p.ContentLength
	}

	resp, err := c.HTTP.Do(hr)
	if err != nil {
		if bodyErr != nil && bodyErr.err != nil {
			s.Close()
			return nil, BodyError(bodyErr.err)
		}
		err = s.failure(parent, "upstream unreachable")
		s.Close()
		return nil, err
	}
	s.resp = resp
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := c.statusError(resp)
		s.Close()
		return nil, e
	}
	raw, closeBody, err := decodedBody(resp)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.closeBody = closeBody
	s.body = &watchedBody{r: raw, s: s, whole: true} // its first bytes end the first-chunk limit
	a := &Answer{Status: resp.StatusCode, Header: c.answerHeader(resp), s: s, body: s.body}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch {
	case mt == "text/html":
		s.Close()
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream answered with a web page (text/html), not the API: check the base URL"}
	case Binary(mt) && raw == resp.Body:
		if cl := resp.Header.Get("Content-Length"); cl != "" {
			a.Header.Set("Content-Length", cl) // unchanged, so the client sees its progress
		}
	case !Binary(mt):
		a.body = s.red.reader(s.body)
	}

	buf := make([]byte, passFirstRead)
	n := 0
	for n == 0 && err == nil {
		n, err = a.body.Read(buf)
	}
	a.first = buf[:n]
	if err != nil && err != io.EOF {
		if n == 0 {
			err = s.failure(parent, "reading the upstream's answer failed")
			s.Close()
			return nil, err
		}
		err = s.readError(err)
	}
	a.err = err
	return a, nil
}

// answerHeader is resp's header kept to answerHeaders and redacted.
func (c *Client) answerHeader(resp *http.Response) http.Header {
	h := make(http.Header, len(answerHeaders))
	red := c.redactor()
	for _, k := range answerHeaders {
		for _, v := range resp.Header.Values(k) {
			h.Add(k, red.string(v))
		}
	}
	return h
}

// sentBody remembers why reading a streamed request body failed: the
// transport reports only that the request could not be sent.
type sentBody struct {
	r   io.Reader
	err error
}

func (b *sentBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// BodyError is the client's answer when its own body could not be read:
// 413 past max_body (an http.MaxBytesError), else 400.
func BodyError(err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return &chunk.Error{Status: http.StatusRequestEntityTooLarge, Type: chunk.TypeInvalidRequest,
			Message: "request body is larger than " + strconv.FormatInt(tooBig.Limit, 10) + " bytes"}
	}
	return &chunk.Error{Status: http.StatusBadRequest, Type: chunk.TypeInvalidRequest, Message: "reading request body failed"}
}

// WithModel returns a copy of p whose JSON body names another model (an
// upstream's rename), or p itself when its body is not JSON held whole.
func (p *PassRequest) WithModel(model string) *PassRequest {
	var fields map[string]json.RawMessage
	if p.Body == nil || json.Unmarshal(p.Body, &fields) != nil {
		return p
	}
	fields["model"] = mustJSON(model)
	c := *p
	c.Model, c.Body = model, mustJSON(fields)
	return &c
}

// BodyModel is the model a JSON body names, "" if it is no JSON object or
// names none.
func BodyModel(body []byte) string {
	var v struct {
		Model string `json:"model"`
	}
	if len(bytes.TrimSpace(body)) == 0 || json.Unmarshal(body, &v) != nil {
		return ""
	}
	return v.Model
}

// CheckModel refuses a model that the models allowlist does not hold, as
// a chat request naming it is refused (404 model_not_found; 400 for none).
func (l *Limits) CheckModel(model string) error {
	if l == nil {
		return nil
	}
	return l.checkModel(model)
}

// Pass sends p to this member, renaming the model if it says so, and
// counts the answer as open until it is closed.
func (m *Member) Pass(ctx context.Context, p *PassRequest) (*Answer, error) {
	if to, ok := m.Models[p.Model]; ok {
		p = p.WithModel(to)
	}
	a, err := m.Client.Pass(ctx, p)
	if err != nil {
		return nil, err
	}
	m.open.Add(1)
	a.s.onClose = func() { m.open.Add(-1) }
	return a, nil
}

// Pass sends p to the next candidate that answers, as Open does for a
// chat request, failing over by MayFailOver before the answer's first
// bytes. A body that streams (BodyReader) can be sent once: its walk must
// allow one try.
func (a *Attempts) Pass(ctx context.Context, p *PassRequest) (*Answer, error) {
	return walk(a, ctx, func(m *Member) (*Answer, error) { return m.Pass(ctx, p) })
}
