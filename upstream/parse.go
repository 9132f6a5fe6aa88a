// Package upstream talks to OpenAI-compatible chat-completions upstreams:
// it builds their requests, maps their failures, and decodes their streams
// into neutral chunks.
package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// ChunkParser reads what the proxy needs of a chat.completion.chunk (or, for
// an upstream that ignored "stream", a chat.completion): the first choice's
// delta, the finish reason, usage, model, or an error. Everything else stays
// in the raw bytes that the openai framing relays untouched.
//
// It walks the JSON with a scanner of its own (parse_scan.go), or for what
// that does not take, a reusable jsontext decoder, and points the chunk's
// fields into the chunk's copy of the data, so that a stream's chunks cost
// no allocation once the buffers have grown (encoding/json costs a dozen
// per chunk here). A ChunkParser belongs to one stream.
type ChunkParser struct {
	dec      *jsontext.Decoder
	r        bytes.Reader
	raw      []byte // the data being parsed: the chunk's own copy
	model    []byte // the model name last seen, raw, and its string
	modelStr string
}

// The decoder is lenient where upstreams are sloppy but the bytes can still
// be passed on: repeated names (the last wins) and invalid UTF-8.
var decodeOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}

// ParseChunk decodes one event's data into c with a fresh parser.
func ParseChunk(data []byte, c *chunk.Chunk) error {
	return new(ChunkParser).Parse(data, c)
}

// Parse decodes the data of one upstream event into c. An error event
// ({"error":...}) sets c.Err. Data that is not a JSON object is an error.
func (p *ChunkParser) Parse(data []byte, c *chunk.Chunk) error {
	c.Raw = append(c.Raw[:0], data...)
	if p.scan(c) {
		return nil
	}
	// The fields the scanner set before it gave up, the jsontext walk sets
	// again, to the same values, before it sets any other.
	return p.walk(c)
}

// walk is Parse over the jsontext decoder: what gives the errors, and the
// fields of what the scanner leaves to it.
func (p *ChunkParser) walk(c *chunk.Chunk) error {
	p.reset(c.Raw)
	if err := p.object(c); err != nil {
		return fmt.Errorf("decoding upstream chunk: %w", err)
	}
	return nil
}

// reset points the decoder at b, the chunk's copy of the data or a value
// within it: value returns slices of b.
func (p *ChunkParser) reset(b []byte) {
	p.raw = b
	p.r.Reset(b)
	if p.dec == nil {
		p.dec = jsontext.NewDecoder(&p.r, decodeOptions...)
	} else {
		p.dec.Reset(&p.r, decodeOptions...)
	}
}

var errNotObject = errors.New("not a JSON object")

// object walks the top level.
func (p *ChunkParser) object(c *chunk.Chunk) error {
	d := p.dec
	if d.PeekKind() != '{' {
		return errNotObject
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	var errVal []byte
	isError := false // "object":"error", as vLLM and others send a failure
	for d.PeekKind() != '}' {
		name, err := p.name()
		if err != nil {
			return err
		}
		switch string(name) { // no allocation: the compiler compares in place
		case "model":
			v, err := p.value()
			if err != nil {
				return err
			}
			c.Model = p.modelName(v)
		case "choices":
			if err := p.choices(c); err != nil {
				return err
			}
		case "usage":
			v, err := p.value()
			if err != nil {
				return err
			}
			if isSet(v) {
				c.Usage = v
			}
		case "error":
			if errVal, err = p.value(); err != nil {
				return err
			}
		case "object":
			v, err := p.value()
			if err != nil {
				return err
			}
			isError = string(v) == `"error"`
		default:
			if err := d.SkipValue(); err != nil {
				return err
			}
		}
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	if _, err := d.ReadToken(); err != jsontextEOF {
		return errors.New("data after the JSON object")
	}
	endChunk(c, errVal, isError)
	return nil
}

// endChunk makes c an error event if its data said so: an error member
// that is not null, or "object":"error".
func endChunk(c *chunk.Chunk, errVal json.RawMessage, isError bool) {
	switch {
	case isSet(errVal):
		*c = chunk.Chunk{Raw: c.Raw, Err: parseError(errVal)}
	case isError:
		*c = chunk.Chunk{Raw: c.Raw, Err: parseError(c.Raw)}
	}
}

// ErrorEvent reads the data of an event whose type is "error": an error
// whatever the data's shape ({"error":{...}}, {"message":...}, a string).
func ErrorEvent(data []byte) *chunk.Error {
	var c chunk.Chunk
	if ParseChunk(data, &c) == nil && c.Err != nil {
		return c.Err
	}
	return parseError(data)
}

// jsontextEOF is what the decoder returns at the clean end of its input.
var jsontextEOF = func() error {
	_, err := jsontext.NewDecoder(bytes.NewReader(nil)).ReadToken()
	return err
}()

// choices walks the choices array, keeping the first choice's fields.
func (p *ChunkParser) choices(c *chunk.Chunk) error {
	d := p.dec
	if d.PeekKind() != '[' {
		return d.SkipValue()
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	for d.PeekKind() != ']' {
		c.HasChoices = true
		var ch chunk.Chunk // the element's fields, kept if its index is 0
		first := true
		if d.PeekKind() != '{' {
			if err := d.SkipValue(); err != nil {
				return err
			}
			continue
		}
		if _, err := d.ReadToken(); err != nil {
			return err
		}
		for d.PeekKind() != '}' {
			name, err := p.name()
			if err != nil {
				return err
			}
			switch string(name) {
			case "index":
				v, err := p.value()
				if err != nil {
					return err
				}
				first = string(v) == "0"
			case "delta", "message":
				if err := p.delta(&ch); err != nil {
					return err
				}
			case "finish_reason":
				v, err := p.value()
				if err != nil {
					return err
				}
				ch.FinishReason = finishReason(v)
			default:
				if err := d.SkipValue(); err != nil {
					return err
				}
			}
		}
		if _, err := d.ReadToken(); err != nil {
			return err
		}
		if first {
			keepFirst(c, &ch)
		}
	}
	_, err := d.ReadToken()
	return err
}

// keepFirst keeps the fields of the choice of index 0: the framings other
// than openai carry the first choice only.
func keepFirst(c, ch *chunk.Chunk) {
	c.Content, c.Reasoning, c.ToolCalls = ch.Content, ch.Reasoning, ch.ToolCalls
	if ch.FinishReason != "" {
		c.FinishReason = ch.FinishReason
	}
}

// delta reads a delta (or message) object into ch.
func (p *ChunkParser) delta(ch *chunk.Chunk) error {
	d := p.dec
	if d.PeekKind() != '{' {
		return d.SkipValue()
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	var reasoning json.RawMessage
	for d.PeekKind() != '}' {
		name, err := p.name()
		if err != nil {
			return err
		}
		var dst *json.RawMessage
		switch string(name) {
		case "content":
			dst = &ch.Content
		case "reasoning_content":
			dst = &ch.Reasoning
		case "reasoning":
			dst = &reasoning
		case "tool_calls":
			dst = &ch.ToolCalls
		default:
			if err := d.SkipValue(); err != nil {
				return err
			}
			continue
		}
		v, err := p.value()
		if err != nil {
			return err
		}
		*dst = v
	}
	endDelta(ch, reasoning)
	_, err := d.ReadToken()
	return err
}

// endDelta drops a delta's empty fields, and takes its reasoning from
// either name.
func endDelta(ch *chunk.Chunk, reasoning json.RawMessage) {
	ch.Content = nonEmptyString(ch.Content)
	ch.Reasoning = nonEmptyString(ch.Reasoning)
	if ch.Reasoning == nil {
		ch.Reasoning = nonEmptyString(reasoning)
	}
	if !isSet(ch.ToolCalls) || bytes.Equal(ch.ToolCalls, []byte("[]")) {
		ch.ToolCalls = nil
	}
}

// name reads an object member's name, unquoted. Names with escapes are
// decoded; plain ones point into the data.
func (p *ChunkParser) name() ([]byte, error) {
	v, err := p.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	if len(v) < 2 || v[0] != '"' {
		return nil, errors.New("object name is not a string")
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1], nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// value reads one value and returns it as a slice of the chunk's copy of
// the data, which outlives the decoder's buffer.
func (p *ChunkParser) value() (json.RawMessage, error) {
	v, err := p.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	// The decoder reads p.raw verbatim, so the value ends at its input
	// offset there. Comparing the bytes would cost a pass over every value.
	end := int(p.dec.InputOffset())
	if end > len(p.raw) || end < len(v) {
		return json.RawMessage(v.Clone()), nil // cannot happen; stay correct if it does
	}
	return json.RawMessage(p.raw[end-len(v) : end : end]), nil
}

// modelName returns the model as a string, allocating only when it changes.
func (p *ChunkParser) modelName(v []byte) string {
	if !bytes.Equal(v, p.model) {
		p.model = append(p.model[:0], v...)
		p.modelStr = ""
		var s string
		if json.Unmarshal(v, &s) == nil {
			p.modelStr = s
		}
	}
	return p.modelStr
}

// finishReason returns the finish reason, without allocating for the
// common ones.
func finishReason(v []byte) string {
	switch string(v) {
	case "null":
		return ""
	case `"stop"`:
		return "stop"
	case `"length"`:
		return "length"
	case `"tool_calls"`:
		return "tool_calls"
	case `"content_filter"`:
		return "content_filter"
	case `"function_call"`:
		return "function_call"
	}
	var s string
	_ = json.Unmarshal(v, &s)
	return s
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
