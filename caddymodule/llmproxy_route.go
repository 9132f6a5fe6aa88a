package caddymodule

import (
	"net/http"
	"strings"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// endpoint is what part of the API a request is for.
type endpoint int

const (
	// endpointChat is a chat completion: a POST to .../chat/completions,
	// or any path outside /v1/ (a GET /chat?prompt=).
	endpointChat endpoint = iota
	// endpointResponses is OpenAI's Responses API, the streams of it:
	// creating a response (.../v1/responses) and retrieving one
	// (GET .../v1/responses/{id}, which may replay its events). Its other
	// paths (input_items, cancel, compact, a DELETE) are endpointOther.
	endpointResponses
	// endpointMessages is Anthropic's Messages API: .../v1/messages (its
	// count_tokens is endpointOther).
	endpointMessages
	// endpointModels is the model list: .../v1/models[/{id}].
	endpointModels
	// endpointOther is any other path under /v1/ (embeddings, audio,
	// images, completions, moderations, messages/count_tokens, ...).
	endpointOther
)

// route tells which endpoint r is for, and the API path below /v1/ that
// the upstream is asked for (chat/completions, responses/resp_1, ...). A
// path with no /v1/ segment is a chat request, as before the proxy served
// the whole API: `llm_proxy /chat` takes GET /chat?prompt=.
func route(r *http.Request) (endpoint, string) {
	_, rest, ok := strings.Cut(r.URL.Path, "/v1/")
	if !ok {
		return endpointChat, "chat/completions"
	}
	switch first, _, _ := strings.Cut(rest, "/"); {
	case rest == "chat/completions":
		return endpointChat, rest
	case first == "responses":
		if id, ok := strings.CutPrefix(rest, "responses/"); rest == "responses" ||
			ok && r.Method == http.MethodGet && id != "" && !strings.Contains(id, "/") {
			return endpointResponses, rest
		}
		return endpointOther, rest
	case rest == "messages":
		return endpointMessages, rest
	case first == "models":
		return endpointModels, rest
	default:
		return endpointOther, rest
	}
}

// notFound answers a path or method the proxy does not serve, in OpenAI's
// error shape: SDKs print its message instead of "404 (no body)".
func (h *LLMProxy) notFound(w http.ResponseWriter, r *http.Request, path string) error {
	return h.reject(w, r, &chunk.Error{Status: http.StatusNotFound, Type: chunk.TypeInvalidRequest,
		Message: "this proxy does not serve " + r.Method + " /v1/" + path})
}
