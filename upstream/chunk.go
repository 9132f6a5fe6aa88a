// Package upstream talks to OpenAI-compatible chat-completions upstreams:
// it builds their requests, maps their failures, and decodes their streams
// into neutral chunks.
package upstream

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// wireChunk is what the proxy reads of a chat.completion.chunk (or, for an
// upstream that ignored "stream", a chat.completion). Everything else stays
// in the raw bytes that the openai framing relays untouched.
type wireChunk struct {
	Model   string          `json:"model"`
	Choices []wireChoice    `json:"choices"`
	Usage   json.RawMessage `json:"usage"`
	Error   json.RawMessage `json:"error"`
}

type wireChoice struct {
	Index        int       `json:"index"`
	Delta        *wireDiff `json:"delta"`
	Message      *wireDiff `json:"message"`
	FinishReason *string   `json:"finish_reason"`
}

type wireDiff struct {
	Content          json.RawMessage `json:"content"`
	ReasoningContent json.RawMessage `json:"reasoning_content"`
	Reasoning        json.RawMessage `json:"reasoning"`
	ToolCalls        json.RawMessage `json:"tool_calls"`
}

// ParseChunk decodes the data of one upstream event into c. An error event
// ({"error":...}) sets c.Err. Data that is not a JSON object is an error.
func ParseChunk(data []byte, c *chunk.Chunk) error {
	var wc wireChunk
	if err := json.Unmarshal(data, &wc); err != nil {
		return fmt.Errorf("decoding upstream chunk: %w", err)
	}
	c.Raw = append(c.Raw[:0], data...)
	if isSet(wc.Error) {
		c.Err = parseError(wc.Error)
		return nil
	}
	c.Model = wc.Model
	if isSet(wc.Usage) {
		c.Usage = wc.Usage
	}
	for i := range wc.Choices {
		ch := &wc.Choices[i]
		if ch.Index != 0 { // the framings other than openai carry the first choice only
			continue
		}
		c.HasChoices = true
		if ch.FinishReason != nil {
			c.FinishReason = *ch.FinishReason
		}
		d := ch.Delta
		if d == nil {
			d = ch.Message
		}
		if d == nil {
			continue
		}
		c.Content = nonEmptyString(d.Content)
		c.Reasoning = nonEmptyString(d.ReasoningContent)
		if c.Reasoning == nil {
			c.Reasoning = nonEmptyString(d.Reasoning)
		}
		if isSet(d.ToolCalls) && !bytes.Equal(bytes.TrimSpace(d.ToolCalls), []byte("[]")) {
			c.ToolCalls = d.ToolCalls
		}
	}
	if len(wc.Choices) > 0 {
		c.HasChoices = true
	}
	return nil
}

// parseError reads an OpenAI-style error object, or a bare string, as the
// providers variously send it.
func parseError(raw json.RawMessage) *chunk.Error {
	e := &chunk.Error{}
	var obj struct {
		Message string          `json:"message"`
		Type    string          `json:"type"`
		Code    json.RawMessage `json:"code"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		e.Message, e.Type = obj.Message, obj.Type
		if isSet(obj.Code) {
			e.Code = obj.Code
		}
	} else {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			e.Message = s
		}
	}
	if e.Message == "" {
		e.Message = "upstream reported an error"
	}
	if e.Type == "" {
		e.Type = chunk.TypeUpstream
	}
	return e
}

// isSet tells whether a raw JSON value is present and not null.
func isSet(v json.RawMessage) bool {
	return len(v) > 0 && !bytes.Equal(v, []byte("null"))
}

// nonEmptyString keeps a JSON string token unless it is null or "".
func nonEmptyString(v json.RawMessage) json.RawMessage {
	if !isSet(v) || bytes.Equal(v, []byte(`""`)) {
		return nil
	}
	return v
}
