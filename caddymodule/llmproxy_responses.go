package caddymodule

import (
	"net/http"
	"strings"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// OpenAI's Responses API goes through the same relay as a chat completion
// (the pool, the failover rule, the record, the framing writer); what is
// its own is here: how its requests are read, and the WebSocket mode it is
// refused.

// buildResponsesRequest reads a request for the Responses API into an
// upstream request: a POST's body forwarded as it came (with the default
// model filled in, and "stream" forced on for the framings that only
// stream), within the directive's request limits as a chat request is; a
// GET ?prompt= as one input; and a GET of a stored response
// (responses/{id}, ?stream=true&starting_after=N replaying its events)
// with its query unchanged.
func (h *LLMProxy) buildResponsesRequest(r *http.Request, path string, format frame.Format) (*upstream.Request, error) {
	if path != "responses" {
		req := upstream.RetrieveResponse(path, withoutParam(r.URL.RawQuery, "format"))
		// A framing other than openai reads even a whole response as a
		// stream of one chunk.
		req.Stream = req.Stream || format != frame.OpenAI
		return req, nil
	}
	if r.Method == http.MethodGet {
		q := r.URL.Query()
		return h.limits.ResponsesFromPrompt(q.Get("prompt"), orDefault(q.Get("model"), h.Model))
	}
	body, err := h.readBody(r)
	if err != nil {
		return nil, err
	}
	return h.limits.FromResponsesJSON(body, format != frame.OpenAI, h.Model)
}

// withoutParam is the raw query without the parameter name (the proxy's
// own ?format=), every other one kept byte for byte and in its order.
func withoutParam(raw, name string) string {
	if !strings.Contains(raw, name) {
		return raw
	}
	var kept []string
	for _, p := range strings.Split(raw, "&") {
		if k, _, _ := strings.Cut(p, "="); k != name {
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, "&")
}

// websocketUpgrade tells whether r asks for the Responses API's WebSocket
// mode (OpenAI-Beta: responses_websockets=...), as Codex does first: an
// HTTP/1.1 Upgrade, or HTTP/2's extended CONNECT.
func websocketUpgrade(r *http.Request) bool {
	if r.Method == http.MethodConnect {
		return true
	}
	for _, v := range r.Header.Values("Upgrade") {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), "websocket") {
				return true
			}
		}
	}
	return false
}

// refuseUpgrade answers a WebSocket upgrade on /v1/responses with 426
// Upgrade Required, at once and without calling an upstream. The proxy
// relays the Responses API over HTTP only; 426 is the answer on which Codex
// falls back to HTTP streaming at once, where a 404 or 405 has it retry
// the WebSocket first (five times). The body is OpenAI's error shape, and
// the connection closes after it.
func (h *LLMProxy) refuseUpgrade(w http.ResponseWriter, r *http.Request) error {
	e := &chunk.Error{Status: http.StatusUpgradeRequired, Type: chunk.TypeInvalidRequest,
		Message: "this proxy serves the Responses API over HTTP only, not over a WebSocket: POST /v1/responses with \"stream\": true"}
	rec := &record{start: time.Now(), status: e.Status, outcome: outcomeRejected, err: e}
	defer h.finish(r, rec)
	w.Header().Set("Connection", "close")
	return h.reject(w, r, e)
}
