// Package caddymodule registers caddy-llmstream's Caddy modules and
// Caddyfile directives: llm_proxy, llm_simulator, desktop_stream and llm_web
// (the chat page). It is glue only; the streaming logic lives in the
// packages it imports.
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

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/guard"
	"github.com/llmstream/caddy-llmstream/ratelimit"
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
	// Upstreams' OpenAI-style base URLs, such as
	// https://api.openai.com/v1; requests go to <to>/chat/completions.
	// Several form one pool sharing api_key and the other settings. This
	// or upstreams is required.
	To []string `json:"to,omitempty"`

	// Upstreams with settings of their own, in the same pool as To.
	Upstreams []*UpstreamConfig `json:"upstreams,omitempty"`

	// How a request picks the upstream it tries first: round_robin,
	// least_conn (fewest open streams), random, first or weighted.
	// Default: round_robin.
	LBPolicy string `json:"lb_policy,omitempty"`

	// How many further upstreams a request may try when one fails before
	// any content reached the client. Default: all of them.
	Retries *int `json:"retries,omitempty"`

	// If set, every upstream's <base_url>/models is fetched at this
	// interval and an upstream that fails it is skipped until it passes.
	HealthCheck caddy.Duration `json:"health_check,omitempty"`

	// The upstream API key, sent as "Authorization: Bearer <key>". Use a
	// placeholder such as {env.OPENAI_API_KEY}: it is expanded when the
	// config loads, so the key itself never appears in the config.
	APIKey string `json:"api_key,omitempty"`

	// How the key is sent: bearer ("Authorization: Bearer <key>") or
	// x-api-key ("x-api-key: <key>", for Anthropic-style APIs). Upstreams
	// may set their own. Default: bearer.
	Auth string `json:"auth,omitempty"`

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

	// Per-client rate limit, and token budget. Refused requests never
	// reach the upstream.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// The models clients may ask for, after model fills in for a request
	// naming none (an upstream's rename of a model comes after). A request
	// for another is refused 404 model_not_found. Default: any.
	Models []string `json:"models,omitempty"`

	// The largest max_tokens (or max_completion_tokens) a request may ask
	// for. A request over it is refused 400 naming the cap, or lowered to
	// it with max_tokens_clamp; a request without one is sent with it, so
	// that no generation is unbounded. Default: no cap.
	MaxTokens int `json:"max_tokens,omitempty"`

	// Lower a max_tokens over the cap instead of refusing the request.
	MaxTokensClamp bool `json:"max_tokens_clamp,omitempty"`

	// The most choices (n) a request may ask for. Default: 1.
	MaxN int `json:"max_n,omitempty"`

	// The most messages a request may hold. Default: no cap.
	MaxMessages int `json:"max_messages,omitempty"`

	// The most characters of text a request's messages may hold
	// together. Default: no cap.
	MaxPrompt int `json:"max_prompt,omitempty"`

	// Lets pages of other origins call llm_proxy from a browser. Default:
	// none, and a browser's requests from other origins are refused.
	CORS *CORSConfig `json:"cors,omitempty"`

	// Keeps streams' events so that a client whose connection dropped
	// resumes its stream. Default: off.
	Resume *ResumeConfig `json:"resume,omitempty"`

	format       frame.Format
	heartbeat    time.Duration
	writeTimeout time.Duration
	maxTries     int // upstreams a request may try; 0: all
	pool         *upstream.Pool
	modelList    *upstream.ModelList // the pool's /v1/models
	poolKey      string
	logger       *zap.Logger
	limits       *upstream.Limits
	cors         *guard.CORS
	allowOrigin  func(origin string) bool // cors's allowlist, for the cross-site guard
}

// UpstreamConfig is one upstream with settings of its own.
type UpstreamConfig struct {
	// The OpenAI-style base URL. Required.
	To string `json:"to,omitempty"`
	// This upstream's key. Default: the directive's api_key.
	APIKey string `json:"api_key,omitempty"`
	// How this upstream takes its key: bearer or x-api-key. Default: the
	// directive's auth.
	Auth string `json:"auth,omitempty"`
	// Model renames for this upstream: a request for the key's model asks
	// this upstream for the value's (gpt-4o -> deepseek-chat).
	Models map[string]string `json:"models,omitempty"`
	// The share of requests under the weighted policy. Default: 1.
	Weight int `json:"weight,omitempty"`
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

	// abortLinger is how long a failed stream stays open after its error
	// signal, so the client reads it before the connection breaks.
	abortLinger = 200 * time.Millisecond
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
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("llm_proxy: registering metrics: %w", err)
	}
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

	h.writeTimeout = durationOr(t.Write, defaultWrite)
	h.maxTries = 0
	if h.Retries != nil {
		h.maxTries = *h.Retries + 1
	}
	if err := h.provisionGuards(); err != nil {
		return err
	}
	if h.Resume != nil {
		if err := h.Resume.provision(ctx, h.logger); err != nil {
			return fmt.Errorf("llm_proxy: %w", err)
		}
	}
	return h.provisionPool(ctx, t)
}

// Validate checks the configuration.
func (h *LLMProxy) Validate() error {
	if len(h.pool.Members) == 0 {
		return errors.New("llm_proxy: an upstream is required: set `to <base_url>`")
	}
	for _, m := range h.pool.Members {
		u, err := url.Parse(m.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("llm_proxy: upstream %q is not an http(s) or h2c base URL such as https://api.openai.com/v1", u.Redacted())
		}
		if u.User != nil {
			return errors.New("llm_proxy: put the upstream's credentials in api_key, not in its URL")
		}
	}
	if h.Retries != nil && *h.Retries < 0 {
		return fmt.Errorf("llm_proxy: retries must not be negative, got %d", *h.Retries)
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
	return h.validateGuards()
}

// Cleanup lets go of the upstream pool and the rate limit.
func (h *LLMProxy) Cleanup() error {
	if h.poolKey != "" {
		_, _ = upstreamPools.Delete(h.poolKey)
	}
	h.Resume.cleanup()
	if h.RateLimit != nil {
		return h.RateLimit.Cleanup()
	}
	return nil
}

// ServeHTTP answers one request: a chat completion, or another endpoint of
// the API (see route).
func (h *LLMProxy) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if h.cors != nil {
		if guard.IsPreflight(r) {
			return h.preflight(w, r)
		}
		h.cors.SetHeaders(w.Header(), r) // on every answer: a page reads its errors too
	}
	switch kind, path := route(r); kind {
	case endpointResponses:
		if websocketUpgrade(r) {
			return h.refuseUpgrade(w, r)
		}
	case endpointModels:
		return h.serveModels(w, r, path)
	case endpointOther:
		return h.servePass(w, r, path)
	}
	start := time.Now()
	if r.Method == http.MethodDelete && h.Resume != nil {
		release, denied := h.admit(w, r)
		release()
		if denied != nil {
			return h.reject(w, r, denied)
		}
		return h.serveCancel(w, r)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		return h.reject(w, r, &chunk.Error{Status: http.StatusMethodNotAllowed, Type: chunk.TypeInvalidRequest,
			Message: "method " + r.Method + " not allowed: use POST with a JSON body or GET with ?prompt="})
	}
	release, denied := h.admit(w, r)
	if denied != nil {
		return h.reject(w, r, denied)
	}
	// The slot is the stream's, which may outlive this request (resume):
	// run releases it; until then, every early return does.
	owned := false
	defer func() {
		if !owned {
			release()
		}
	}()
	format, err := frame.Negotiate(r.URL.Query().Get("format"), r.Header.Get("Accept"), h.format)
	if err != nil {
		return h.reject(w, r, &chunk.Error{Status: http.StatusBadRequest, Type: chunk.TypeInvalidRequest, Message: err.Error()})
	}
	// A client that reconnects presents the ID of the last event it got.
	// With resume on, it gets the rest. Without it, a completion cannot be
	// resumed, and starting it over would bill it again: 204 tells an
	// EventSource to stop.
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		if h.Resume != nil {
			return h.serveResume(w, r, last)
		}
		if format == frame.SSE || format == frame.OpenAI {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
	}
	req, err := h.buildRequest(r, format)
	if err != nil {
		return h.reject(w, r, asError(err))
	}
	tab, refused := h.RateLimit.Reserve(w, r, ratelimit.Cost{PromptChars: req.PromptChars, MaxTokens: req.MaxTokens, N: req.N})
	if refused != nil {
		return h.reject(w, r, &chunk.Error{Status: refused.Status, Type: chunk.TypeRateLimit,
			Message: refused.Message, RetryAfter: refused.RetryAfter})
	}
	_, api := route(r)
	rec := &record{start: start, api: api, format: format, model: req.Model, span: recordingSpan(r)}
	run := func(w http.ResponseWriter, r *http.Request) error {
		defer release()
		defer tab.Settle()
		defer h.finish(r, rec)
		rec.outcome, rec.err = h.relay(w, r, req, rec, tab)
		if rec.outcome == outcomeRejected {
			tab.Refund() // no upstream generated anything
		}
		return h.conclude(w, r, rec)
	}
	owned = true // run releases it, whichever way it runs
	if h.Resume != nil && req.Stream {
		return h.serveResumable(w, r, rec, req, run)
	}
	return run(w, r)
}

// buildRequest reads the client's request into an upstream request.
func (h *LLMProxy) buildRequest(r *http.Request, format frame.Format) (*upstream.Request, error) {
	switch kind, path := route(r); kind {
	case endpointResponses:
		return h.buildResponsesRequest(r, path, format)
	case endpointMessages:
		return h.buildMessagesRequest(r, format)
	}
	if r.Method == http.MethodGet {
		q := r.URL.Query()
		model := q.Get("model")
		if model == "" {
			model = h.Model
		}
		return h.limits.FromPrompt(q.Get("prompt"), model)
	}
	body, err := h.readBody(r)
	if err != nil {
		return nil, err
	}
	return h.limits.FromJSON(body, format != frame.OpenAI, h.Model)
}

// readBody reads the request's body, up to max_body.
func (h *LLMProxy) readBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, h.MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, &chunk.Error{Status: http.StatusRequestEntityTooLarge, Type: chunk.TypeInvalidRequest,
				Message: fmt.Sprintf("request body is larger than %d bytes", h.MaxBody)}
		}
		return nil, &chunk.Error{Status: http.StatusBadRequest, Type: chunk.TypeInvalidRequest, Message: "reading request body failed"}
	}
	return body, nil
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
	_, _ = w.Write(errorBody(r, e))
	return nil
}

// asError turns an error into the client-facing shape.
func asError(err error) *chunk.Error {
	var e *chunk.Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, errShuttingDown) {
		return &chunk.Error{Status: http.StatusServiceUnavailable, Type: chunk.TypeServer, Message: err.Error()}
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
