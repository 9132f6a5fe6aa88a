// Package caddymodule registers caddy-llmstream's Caddy modules and
// Caddyfile directives: llm_proxy, llm_simulator and desktop_stream. It is
// glue only; the streaming logic lives in the packages it imports.
package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/upstream"
)

func init() {
	caddy.RegisterModule(LLMProxy{})
}

// LLMProxy streams chat completions from an OpenAI-compatible upstream and
// re-frames them for the client: OpenAI SSE (for the official SDKs), simple
// SSE (for EventSource), NDJSON (for fetch readers) or plain text.
//
// It takes an OpenAI chat-completions JSON POST, or a GET with ?prompt=, and
// calls the upstream with the server's API key; the client's own
// Authorization header is never forwarded.
type LLMProxy struct {
	// The upstream's OpenAI-style base URL, such as
	// https://api.openai.com/v1. Requests go to <to>/chat/completions.
	// Required.
	To string `json:"to,omitempty"`

	// The upstream API key, sent as "Authorization: Bearer <key>". Use a
	// placeholder such as {env.OPENAI_API_KEY}: it is expanded when the
	// config loads, so the key itself never appears in the config.
	APIKey string `json:"api_key,omitempty"`

	// The model used when a request names none.
	Model string `json:"model,omitempty"`

	// The framing used when a request asks for none (by ?format= or
	// Accept): openai, sse, ndjson or text. Default: openai.
	Format string `json:"format,omitempty"`

	// Send a keepalive (an SSE comment, or an empty NDJSON line) after this
	// long with nothing sent. 0 turns it off. Default: 15s.
	Heartbeat *caddy.Duration `json:"heartbeat,omitempty"`

	// The largest request body accepted, in bytes. Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// Extra headers sent to the upstream, such as OpenAI-Organization.
	// Values may use placeholders, expanded when the config loads.
	HeaderUp http.Header `json:"header_up,omitempty"`

	// Time limits of an upstream call.
	Timeouts *Timeouts `json:"timeouts,omitempty"`

	// The longest line or event accepted from the upstream, in bytes.
	// Default: 1 MiB.
	MaxEventSize int `json:"max_event_size,omitempty"`

	// Per-client rate limit. Refused requests never reach the upstream.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	format       frame.Format
	heartbeat    time.Duration
	writeTimeout time.Duration
	transport    *http.Transport
	client       *upstream.Client
	logger       *zap.Logger
}

// Timeouts bound the phases of an upstream call. A zero value turns a limit
// off; an absent one takes its default.
type Timeouts struct {
	// Connecting to the upstream. Default: 10s.
	Dial *caddy.Duration `json:"dial,omitempty"`
	// From sending the request to the first chunk: a slower upstream gets
	// 504, or the framing's error signal once headers went out. Default: 60s.
	FirstChunk *caddy.Duration `json:"first_chunk,omitempty"`
	// Between two reads from the upstream once it streams. Default: 60s.
	Idle *caddy.Duration `json:"idle,omitempty"`
	// The whole stream. Default: 30m.
	Total *caddy.Duration `json:"total,omitempty"`
	// One write to a client that stopped reading: the stream ends and its
	// upstream is cancelled. Default: 30s.
	Write *caddy.Duration `json:"write,omitempty"`
}

// Defaults, applied in Provision.
const (
	defaultHeartbeat  = 15 * time.Second
	defaultMaxBody    = 1 << 20
	defaultMaxEvent   = 1 << 20
	defaultDial       = 10 * time.Second
	defaultFirstChunk = 60 * time.Second
	defaultIdle       = 60 * time.Second
	defaultTotal      = 30 * time.Minute
	defaultWrite      = 30 * time.Second
)

// CaddyModule returns the Caddy module information.
func (LLMProxy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.llm_proxy",
		New: func() caddy.Module { return new(LLMProxy) },
	}
}

// Provision sets up the upstream client.
func (h *LLMProxy) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	if h.RateLimit != nil {
		if err := h.RateLimit.Provision(ctx, "llm_proxy", h); err != nil {
			return fmt.Errorf("llm_proxy: %w", err)
		}
	}

	var err error
	if h.format, err = frame.ParseFormat(orDefault(h.Format, "openai")); err != nil {
		return err
	}
	h.heartbeat = durationOr(h.Heartbeat, defaultHeartbeat)
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	if h.MaxEventSize == 0 {
		h.MaxEventSize = defaultMaxEvent
	}
	t := h.Timeouts
	if t == nil {
		t = new(Timeouts)
	}

	header := make(http.Header, len(h.HeaderUp))
	for k, vs := range h.HeaderUp {
		for _, v := range vs {
			header.Add(k, repl.ReplaceAll(v, ""))
		}
	}
	h.writeTimeout = durationOr(t.Write, defaultWrite)
	h.transport = upstream.NewTransport(durationOr(t.Dial, defaultDial))
	h.client = &upstream.Client{
		HTTP:       &http.Client{Transport: h.transport},
		BaseURL:    repl.ReplaceAll(h.To, ""),
		APIKey:     repl.ReplaceAll(h.APIKey, ""),
		Header:     header,
		FirstChunk: durationOr(t.FirstChunk, defaultFirstChunk),
		Idle:       durationOr(t.Idle, defaultIdle),
		Total:      durationOr(t.Total, defaultTotal),
		MaxLine:    h.MaxEventSize,
	}
	return nil
}

// Validate checks the configuration.
func (h *LLMProxy) Validate() error {
	if h.To == "" {
		return errors.New("llm_proxy: an upstream is required: set `to <base_url>`")
	}
	base := h.client.BaseURL
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("llm_proxy: upstream %q is not an http(s) base URL such as https://api.openai.com/v1", h.To)
	}
	if u.User != nil {
		return errors.New("llm_proxy: put the upstream's credentials in api_key, not in its URL")
	}
	if h.MaxBody < 0 {
		return fmt.Errorf("llm_proxy: max_body must be positive, got %d", h.MaxBody)
	}
	if h.MaxEventSize < 0 {
		return fmt.Errorf("llm_proxy: max_event_size must be positive, got %d", h.MaxEventSize)
	}
	t := h.Timeouts
	if t == nil {
		t = new(Timeouts)
	}
	for _, d := range []*caddy.Duration{h.Heartbeat, t.Dial, t.FirstChunk, t.Idle, t.Total, t.Write} {
		if d != nil && *d < 0 {
			return fmt.Errorf("llm_proxy: durations must not be negative, got %s", time.Duration(*d))
		}
	}
	return nil
}

// Cleanup closes idle upstream connections and lets go of the rate limit.
func (h *LLMProxy) Cleanup() error {
	if h.transport != nil {
		h.transport.CloseIdleConnections()
	}
	if h.RateLimit != nil {
		return h.RateLimit.Cleanup()
	}
	return nil
}

// ServeHTTP answers one chat request.
func (h *LLMProxy) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	start := time.Now()
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		return h.reject(w, r, &chunk.Error{Status: http.StatusMethodNotAllowed, Type: chunk.TypeInvalidRequest,
			Message: "method " + r.Method + " not allowed: use POST with a chat-completions body or GET with ?prompt="})
	}
	if h.RateLimit != nil {
		release, err := h.RateLimit.Admit(w, r)
		if err != nil {
			return h.reject(w, r, asError(err))
		}
		defer release()
	}
	format, err := frame.Negotiate(r.URL.Query().Get("format"), r.Header.Get("Accept"), h.format)
	if err != nil {
		return h.reject(w, r, &chunk.Error{Status: http.StatusBadRequest, Type: chunk.TypeInvalidRequest, Message: err.Error()})
	}
	// An EventSource that reconnects after its stream ended presents the
	// stream's ID. A completion cannot be resumed, and starting it over would
	// bill it again: 204 tells the EventSource to stop.
	if format == frame.SSE && r.Header.Get("Last-Event-ID") != "" {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}

	req, err := h.buildRequest(r, format)
	if err != nil {
		return h.reject(w, r, asError(err))
	}

	st, err := h.client.Open(r.Context(), req)
	if err != nil {
		if r.Context().Err() != nil {
			return nil // the client left before the upstream answered
		}
		e := asError(err)
		h.logStream(r, start, req, format, "rejected", e, nil)
		return h.reject(w, r, e)
	}
	defer st.Close()

	if !req.Stream {
		return h.relayWhole(w, r, st)
	}

	frame.SetHeaders(w.Header(), format)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	fw := frame.NewWriter(w, rc.Flush, format)
	fw.IncludeUsage = req.IncludeUsage
	fw.StreamID = "llmstream"
	fw.WriteTimeout, fw.SetDeadline = h.writeTimeout, rc.SetWriteDeadline
	defer fw.Close()
	if err := fw.Start(); err != nil {
		h.logStream(r, start, req, format, "client_gone", nil, fw)
		return nil
	}
	fw.KeepAlive(h.heartbeat)

	var c chunk.Chunk
	for {
		err := st.Next(&c)
		if err == nil {
			if err := fw.Chunk(&c); err != nil {
				h.logStream(r, start, req, format, "client_gone", nil, fw)
				return nil
			}
			continue
		}
		if err == io.EOF {
			if err := fw.Done(); err != nil {
				h.logStream(r, start, req, format, "client_gone", nil, fw)
				return nil
			}
			h.logStream(r, start, req, format, "completed", nil, fw)
			return nil
		}
		if r.Context().Err() != nil {
			h.logStream(r, start, req, format, "client_gone", nil, fw)
			return nil
		}
		e, outcome := h.streamError(err)
		h.logStream(r, start, req, format, outcome, err, fw)
		_ = fw.Fail(e)
		fw.Close()
		// The framing's error signal is out; breaking the response makes
		// sure no client mistakes what it got for a complete answer.
		panic(http.ErrAbortHandler)
	}
}

// buildRequest reads the client's request into an upstream request.
func (h *LLMProxy) buildRequest(r *http.Request, format frame.Format) (*upstream.Request, error) {
	if r.Method == http.MethodGet {
		q := r.URL.Query()
		model := q.Get("model")
		if model == "" {
			model = h.Model
		}
		return upstream.FromPrompt(q.Get("prompt"), model)
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, h.MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, &chunk.Error{Status: http.StatusRequestEntityTooLarge, Type: chunk.TypeInvalidRequest,
				Message: fmt.Sprintf("request body is larger than %d bytes", h.MaxBody)}
		}
		return nil, &chunk.Error{Status: http.StatusBadRequest, Type: chunk.TypeInvalidRequest, Message: "reading request body failed"}
	}
	return upstream.FromJSON(body, format != frame.OpenAI, h.Model)
}

// relayWhole passes a non-streamed answer through as the upstream sent it.
func (h *LLMProxy) relayWhole(w http.ResponseWriter, r *http.Request, st *upstream.Stream) error {
	if ct := st.Header().Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, st.Body()); err != nil && r.Context().Err() == nil {
		panic(http.ErrAbortHandler)
	}
	return nil
}

// streamError maps a failure after the headers went out to what the client
// is told and the outcome logged. Details of broken connections stay in the
// log: they name internal addresses.
func (h *LLMProxy) streamError(err error) (*chunk.Error, string) {
	var ue *chunk.Error
	switch {
	case errors.As(err, &ue):
		return ue, "upstream_error"
	case errors.Is(err, upstream.ErrFirstChunkTimeout), errors.Is(err, upstream.ErrIdleTimeout), errors.Is(err, upstream.ErrTotalTimeout):
		return &chunk.Error{Type: chunk.TypeTimeout, Message: err.Error()}, "timeout"
	case errors.Is(err, upstream.ErrLineTooLong):
		return &chunk.Error{Type: chunk.TypeUpstream, Message: "upstream sent an event larger than the proxy accepts"}, "upstream_error"
	default:
		return &chunk.Error{Type: chunk.TypeUpstream, Message: "upstream stream ended abnormally"}, "upstream_error"
	}
}

// reject answers a request that failed before any byte was sent. With
// handle_errors routes configured, the error goes to them; otherwise the
// client gets the OpenAI error shape that its SDK understands.
func (h *LLMProxy) reject(w http.ResponseWriter, r *http.Request, e *chunk.Error) error {
	if e.Status == 0 {
		e.Status = http.StatusBadGateway
	}
	if e.RetryAfter != "" {
		w.Header().Set("Retry-After", e.RetryAfter)
	}
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv.Errors != nil && len(srv.Errors.Routes) > 0 {
		return caddyhttp.Error(e.Status, e)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(e.Status)
	_, _ = w.Write(e.MarshalBody())
	return nil
}

// logStream writes the one line a finished stream leaves.
func (h *LLMProxy) logStream(r *http.Request, start time.Time, req *upstream.Request, format frame.Format, outcome string, err error, fw *frame.Writer) {
	lvl := zapcore.InfoLevel
	if err != nil {
		lvl = zapcore.WarnLevel
	}
	c := h.logger.Check(lvl, "stream finished")
	if c == nil {
		return
	}
	fields := []zap.Field{
		zap.String("upstream", h.client.BaseURL),
		zap.String("format", format.String()),
		zap.String("outcome", outcome),
		zap.Duration("duration", time.Since(start)),
	}
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		fields = append(fields, zap.String("client_ip", ip))
	}
	if req != nil {
		fields = append(fields, zap.String("model", req.Model))
	}
	if fw != nil {
		fields = append(fields, zap.String("finish_reason", fw.FinishReason()))
		if u := fw.Usage(); u != nil {
			fields = append(fields, zap.String("usage", string(u)))
		}
	}
	if err != nil {
		fields = append(fields, zap.String("error", err.Error()))
	}
	c.Write(fields...)
}

// asError turns an error into the client-facing shape.
func asError(err error) *chunk.Error {
	var e *chunk.Error
	if errors.As(err, &e) {
		return e
	}
	return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeServer, Message: "internal error"}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func durationOr(d *caddy.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return time.Duration(*d)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*LLMProxy)(nil)
	_ caddy.Validator             = (*LLMProxy)(nil)
	_ caddy.CleanerUpper          = (*LLMProxy)(nil)
	_ caddyhttp.MiddlewareHandler = (*LLMProxy)(nil)
)
