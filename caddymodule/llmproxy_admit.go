package caddymodule

import (
	"errors"
	"net/http"
	"slices"
	"strings"
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

// admitAPI is admit for an endpoint beside chat: a method other than
// methods is refused first, in OpenAI's shape and with Allow.
func (h *LLMProxy) admitAPI(w http.ResponseWriter, r *http.Request, api string, methods ...string) (release func(), refused *chunk.Error) {
	if !slices.Contains(methods, r.Method) {
		w.Header().Set("Allow", strings.Join(methods, ", "))
		return noRelease, &chunk.Error{Status: http.StatusMethodNotAllowed, Type: chunk.TypeInvalidRequest,
			Message: "method " + r.Method + " not allowed on /v1/" + api + ": use " + methods[0]}
	}
	return h.admit(w, r)
}

// conclude ends a request by its record: a rejection is answered, and a
// response that broke without its framing's error signal (the text
// framing has none, and a write of another's may have failed) is aborted.
// One whose error event went out ends its body cleanly instead, as
// OpenAI's own API does, so that clients report the upstream's message
// rather than a broken connection.
func (h *LLMProxy) conclude(w http.ResponseWriter, r *http.Request, rec *record) error {
	switch {
	case rec.outcome == outcomeRejected:
		e := asError(rec.err)
		rec.status = e.Status
		return h.reject(w, r, e)
	case rec.err != nil && !rec.signalled:
		abort(r)
	}
	return nil
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
