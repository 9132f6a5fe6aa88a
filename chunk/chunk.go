// Package chunk holds the neutral form of a streamed chat completion: what the
// upstream decoder produces and the client framings consume. It knows nothing
// of HTTP, SSE or Caddy.
package chunk

import "encoding/json"

// Chunk is one piece of a streamed chat completion (one upstream event), or a
// whole non-streamed completion when the upstream ignored `stream`.
//
// The JSON fields are kept as raw JSON tokens exactly as the upstream encoded
// them, so framings can copy them to the client without decoding and
// re-encoding. Slices may alias the decoder's buffers: a Chunk is valid only
// until the next one is decoded.
type Chunk struct {
	// Raw is the event's data as the upstream sent it: the JSON of one
	// chat.completion.chunk (or chat.completion), or of one Responses API
	// event.
	Raw []byte
	// Event is the event's type as the upstream named it on its "event:"
	// line (the Responses API names every event: response.created, ...);
	// nil when it sent none. The openai framing relays it with Raw.
	Event []byte

	// Content is choices[0].delta.content as a JSON string token; nil when
	// absent, null or "".
	Content json.RawMessage
	// Reasoning is choices[0].delta.reasoning_content (DeepSeek, vLLM) or
	// .reasoning (OpenRouter, Ollama) as a JSON string token; nil when absent.
	Reasoning json.RawMessage
	// ToolCalls is choices[0].delta.tool_calls as the upstream gave it (a
	// JSON array); nil when absent.
	ToolCalls json.RawMessage

	// FinishReason is choices[0].finish_reason; "" until the last chunk.
	FinishReason string
	// Usage is the usage object as a raw JSON object, in the chat shape
	// (prompt_tokens, completion_tokens, total_tokens: a Responses stream's
	// input_tokens and output_tokens are given those names); nil when
	// absent or null.
	Usage json.RawMessage
	// Model is the model that answered, as the upstream names it.
	Model string
	// HasChoices tells whether the event carried any choice. A usage-only
	// chunk (stream_options.include_usage) has none.
	HasChoices bool

	// Err is set when the event is an error event ({"error":{...}}, or a
	// Responses stream's error, response.failed or response.incomplete)
	// instead of a completion chunk.
	Err *Error
}

// HasDelta reports whether the chunk carries anything a client should see as
// progress: content, reasoning or tool calls.
func (c *Chunk) HasDelta() bool {
	return c.Content != nil || c.Reasoning != nil || c.ToolCalls != nil
}

// Reset clears c for reuse without giving up its buffers.
func (c *Chunk) Reset() {
	*c = Chunk{Raw: c.Raw[:0]}
}

// Error is a failure in the OpenAI error shape, the one every framing reports:
// {"error":{"message":...,"type":...,"code":...}}.
type Error struct {
	// Status is the HTTP status the failure maps to when nothing has been sent
	// to the client yet. 0 means 502.
	Status  int    `json:"-"`
	Message string `json:"message"`
	Type    string `json:"type"`
	// Param names the request field at fault, as OpenAI's errors do.
	Param string `json:"param,omitempty"`
	// Code is the provider's code (a string such as "rate_limit_exceeded" or
	// null); kept raw because providers disagree on its type.
	Code json.RawMessage `json:"code,omitempty"`
	// RetryAfter is the upstream's Retry-After header value, relayed on 429.
	RetryAfter string `json:"-"`
}

func (e *Error) Error() string {
	if e.Type == "" {
		return e.Message
	}
	return e.Type + ": " + e.Message
}

// Error types used by the proxy itself. Upstream errors keep the upstream's type.
const (
	TypeInvalidRequest = "invalid_request_error"
	TypeUpstream       = "upstream_error"
	TypeTimeout        = "timeout_error"
	TypeRateLimit      = "rate_limit_exceeded"
	TypeServer         = "server_error"
)

// MarshalBody returns the error as the body clients expect:
// {"error":{"message":...,"type":...}}.
func (e *Error) MarshalBody() []byte {
	b, err := json.Marshal(struct {
		Error *Error `json:"error"`
	}{e})
	if err != nil { // cannot happen: strings and a RawMessage that came from valid JSON
		return []byte(`{"error":{"message":"internal error","type":"server_error"}}`)
	}
	return b
}
