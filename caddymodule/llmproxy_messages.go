package caddymodule

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// Anthropic's Messages API (/v1/messages, for auth x-api-key upstreams)
// goes through the same relay as a chat completion: the pool and its
// failover rule, limits, token budgets, metrics and the log line. What is
// its own is here: how its requests are read, and its error shape, which
// the Anthropic SDKs parse.

// buildMessagesRequest reads a request for the Messages API into an
// upstream request: a POST's body forwarded as it came (with the default
// model filled in, max_tokens held to the cap, and "stream" forced on for
// the framings that only stream), with the client's anthropic-version and
// anthropic-beta and its query but for the proxy's own format=; a GET
// ?prompt= as one user message, streamed.
func (h *LLMProxy) buildMessagesRequest(r *http.Request, format frame.Format) (*upstream.Request, error) {
	if r.Method == http.MethodGet {
		q := r.URL.Query()
		return h.limits.MessagesFromPrompt(q.Get("prompt"), orDefault(q.Get("model"), h.Model), r.Header)
	}
	body, err := h.readBody(r)
	if err != nil {
		return nil, err
	}
	req, err := h.limits.FromMessagesJSON(body, r.Header, format != frame.OpenAI, h.Model)
	if err == nil {
		// The SDKs' beta namespace posts to messages?beta=true.
		req.Query = withoutParam(r.URL.RawQuery, "format")
	}
	return req, err
}

// typedMessages sets up the writer of a Messages stream. The openai
// framing relays the upstream's events byte for byte: no stream ID of the
// proxy's in front of them (no Anthropic client reconnects as an
// EventSource does), and a failure of the proxy's is told as Anthropic's
// error event.
func typedMessages(fw *frame.Writer) {
	if fw.Format() == frame.OpenAI {
		fw.StreamID = ""
	}
	fw.ErrorEvent = func(b []byte, e *chunk.Error, _ int64) []byte {
		return append(b, messagesErrorBody(e)...)
	}
}

// anthropicPath tells whether r is for Anthropic's API (messages, and
// messages/count_tokens passed through), whose clients read errors in
// Anthropic's shape.
func anthropicPath(r *http.Request) bool {
	kind, path := route(r)
	return kind == endpointMessages || strings.HasPrefix(path, "messages/")
}

// errorBody is the body of a refusal: Anthropic's shape on its API,
// OpenAI's everywhere else.
func errorBody(r *http.Request, e *chunk.Error) []byte {
	if anthropicPath(r) {
		return messagesErrorBody(e)
	}
	return e.MarshalBody()
}

// messagesErrorBody is e in Anthropic's error shape,
// {"type":"error","error":{"type":"rate_limit_error","message":...}}: the
// body of a refusal, and the data of an error event.
func messagesErrorBody(e *chunk.Error) []byte {
	var body struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	body.Type = "error"
	body.Error.Type, body.Error.Message = anthropicErrorType(e), e.Message
	b, err := json.Marshal(&body)
	if err != nil { // cannot happen: two strings
		return []byte(`{"type":"error","error":{"type":"api_error","message":"internal error"}}`)
	}
	return b
}

// anthropicErrorType is the type Anthropic gives a failure: by its status
// (the SDKs pick their error class by the status, and the type should
// agree with it), or for one without (in a stream) by its kind.
func anthropicErrorType(e *chunk.Error) string {
	switch s := e.Status; {
	case s == http.StatusUnauthorized:
		return "authentication_error"
	case s == http.StatusForbidden:
		return "permission_error"
	case s == http.StatusNotFound:
		return "not_found_error"
	case s == http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case s == http.StatusTooManyRequests:
		return "rate_limit_error"
	case s == http.StatusGatewayTimeout:
		return "timeout_error"
	case s == http.StatusServiceUnavailable || s == 529:
		return "overloaded_error"
	case s >= 400 && s < 500:
		return "invalid_request_error"
	case s >= 500:
		return "api_error"
	}
	switch e.Type {
	case chunk.TypeRateLimit, "rate_limit_error":
		return "rate_limit_error"
	case chunk.TypeTimeout:
		return "timeout_error"
	case chunk.TypeInvalidRequest:
		return "invalid_request_error"
	case "overloaded_error":
		return "overloaded_error"
	}
	return "api_error"
}
