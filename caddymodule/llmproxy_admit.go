package caddymodule

import (
	"errors"
	"net/http"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/guard"
)

// admit runs the checks every request of every path passes before an
// upstream is asked: the cross-site guard, then the rate limit. It returns
// what frees the request's rate-limit slot, or the refusal to send.
func (h *LLMProxy) admit(w http.ResponseWriter, r *http.Request) (release func(), refused *chunk.Error) {
	if err := guard.CrossSite(r, h.allowOrigin); err != nil {
		status := http.StatusForbidden
		if errors.Is(err, guard.ErrNotJSON) {
			status = http.StatusUnsupportedMediaType
		}
		return noRelease, &chunk.Error{Status: status, Type: chunk.TypeInvalidRequest, Message: err.Error()}
	}
	if h.RateLimit != nil {
		release, refusal := h.RateLimit.Admit(w, r)
		if refusal != nil {
			return noRelease, &chunk.Error{Status: refusal.Status, Type: chunk.TypeRateLimit,
				Message: refusal.Message, RetryAfter: refusal.RetryAfter}
		}
		return release, nil
	}
	return noRelease, nil
}

// abort breaks a response whose failure has no signal of its own, so that
// no client mistakes what it got for a complete answer. An abort closes the
// socket at once, and a reset that follows the data can make the client's
// kernel drop what it has not read yet: the client gets a moment first.
func abort(r *http.Request) {
	linger := time.NewTimer(abortLinger)
	select {
	case <-r.Context().Done():
	case <-linger.C:
	}
	linger.Stop()
	panic(http.ErrAbortHandler)
}
