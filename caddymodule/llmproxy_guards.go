package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/guard"
	"github.com/llmstream/caddy-llmstream/ratelimit"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// What a public llm_proxy holds its clients to, before any upstream call:
// the request's own limits (models, max_tokens, n, messages, prompt), and
// for browsers, the origins whose pages may call it (CORS). The rate limit
// and token budget are in ratelimit.go.

// CORSConfig lets pages of other origins call llm_proxy from a browser.
// A preflight is answered before any limit or upstream, so it costs
// nothing; every answer to an allowed origin, errors included, carries
// Access-Control-Allow-Origin and exposes the rate-limit headers and
// Retry-After. Other origins get no CORS headers, and their requests are
// refused 403.
type CORSConfig struct {
	// The origins allowed, such as https://app.example or
	// http://localhost:3000, or "*" for any. Required.
	Origins []string `json:"origins,omitempty"`
	// Let pages send cookies and HTTP authentication along. Not with "*".
	AllowCredentials bool `json:"allow_credentials,omitempty"`
	// How long a browser may keep a preflight's answer. Default: the
	// browser's own (5s in Chromium).
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

// corsMethods are what llm_proxy answers.
const corsMethods = "GET, POST"

// provisionGuards sets up the request limits and CORS.
func (h *LLMProxy) provisionGuards() error {
	maxN := h.MaxN
	if maxN == 0 {
		maxN = 1
	}
	h.limits = &upstream.Limits{Models: h.Models, MaxTokens: h.MaxTokens, Clamp: h.MaxTokensClamp,
		MaxN: maxN, MaxMessages: h.MaxMessages, MaxPrompt: h.MaxPrompt}
	h.cors, h.allowOrigin = nil, nil
	if h.CORS == nil {
		return nil
	}
	methods, expose := corsMethods, ratelimit.HeaderNames()
	if h.Resume != nil {
		// A page resumes by the stream's ID and cancels with a DELETE.
		methods, expose = methods+", DELETE", append(expose, streamIDHeader)
	}
	h.cors = &guard.CORS{Origins: slices.Clone(h.CORS.Origins), Credentials: h.CORS.AllowCredentials,
		MaxAge: time.Duration(h.CORS.MaxAge), Methods: methods, Expose: strings.Join(expose, ", ")}
	if err := h.cors.Validate(); err != nil {
		return fmt.Errorf("llm_proxy: %w", err)
	}
	h.allowOrigin = h.cors.Allowed
	return nil
}

// validateGuards checks the request limits.
func (h *LLMProxy) validateGuards() error {
	for name, n := range map[string]int{"max_tokens": h.MaxTokens, "max_n": h.MaxN,
		"max_messages": h.MaxMessages, "max_prompt": h.MaxPrompt} {
		if n < 0 {
			return fmt.Errorf("llm_proxy: %s must be positive, got %d", name, n)
		}
	}
	if h.MaxTokensClamp && h.MaxTokens == 0 {
		return errors.New("llm_proxy: max_tokens_clamp needs max_tokens")
	}
	if h.Model != "" && len(h.Models) > 0 && !slices.Contains(h.Models, h.Model) {
		return fmt.Errorf("llm_proxy: the default model %q is not among models", h.Model)
	}
	return nil
}

// preflight answers a browser asking whether a page of another origin may
// send a request. It comes before the limits and the upstream: a preflight
// costs the client nothing.
func (h *LLMProxy) preflight(w http.ResponseWriter, r *http.Request) error {
	if !h.cors.Preflight(w.Header(), r) {
		return h.reject(w, r, &chunk.Error{Status: http.StatusForbidden, Type: chunk.TypeInvalidRequest,
			Message: guard.ErrCrossSite.Error()})
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
