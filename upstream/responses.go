package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// API is the part of the OpenAI API a request is for: it picks the path
// the upstream is asked for and the decoder of its answer.
type API uint8

const (
	// ChatCompletions is POST chat/completions, streamed as
	// chat.completion.chunk events and "[DONE]".
	ChatCompletions API = iota
	// Responses is the Responses API (POST responses, GET responses/{id}),
	// streamed as typed events that end with response.completed.
	Responses
)

// path is the API's own path below the base URL.
func (a API) path() string {
	if a == Responses {
		return "responses"
	}
	return "chat/completions"
}

// ResponsesParser reads what the proxy needs of one Responses API stream
// event: text, reasoning and function-call deltas, given the chat shape the
// other framings carry, the end with its usage, and the failures. Every
// other event is content-free: the openai framing relays it, the others
// skip it. It keeps what a stream's events need between them (which output
// items are function calls), so it belongs to one stream. Like ChunkParser
// it walks the JSON in place and allocates nothing once its buffers have
// grown.
type ResponsesParser struct {
	p ChunkParser
	// out holds the JSON of the chunk that the upstream did not send as
	// such: a tool-call delta, or usage in the chat shape.
	out []byte
	// calls are the output indices of the function calls seen, in order:
	// a call's position is its index among the chat shape's tool calls.
	calls []int64
}

// responseEvent is the top level of an event: what the proxy reads of it,
// as raw values in the chunk's copy of the data.
type responseEvent struct {
	delta, outputIndex, item, response, code, message, err json.RawMessage
}

// Parse decodes one event's data into c. sseType is the event's "event:"
// field, used when the data names no type. A failure (error,
// response.failed, response.incomplete) sets c.Err. Data that is not a JSON
// object is an error: in an event typed error, the upstream's failure as a
// *chunk.Error, since the event has no data to relay.
func (rp *ResponsesParser) Parse(sseType, data []byte, c *chunk.Chunk) error {
	var ev responseEvent
	typ, err := rp.typedEvent(sseType, data, c, func(name []byte, v json.RawMessage) {
		switch string(name) { // no allocation: the compiler compares in place
		case "delta":
			ev.delta = v
		case "output_index":
			ev.outputIndex = v
		case "item":
			ev.item = v
		case "response":
			ev.response = v
		case "code":
			ev.code = v
		case "message":
			ev.message = v
		case "error":
			ev.err = v
		}
	})
	if err != nil {
		return err
	}
	switch string(typ) {
	case "response.output_text.delta":
		c.Content = nonEmptyString(ev.delta)
	case "response.reasoning_summary_text.delta", "response.reasoning_text.delta":
		c.Reasoning = nonEmptyString(ev.delta)
	case "response.output_item.added":
		err = rp.itemAdded(ev.item, ev.outputIndex, c)
	case "response.function_call_arguments.delta":
		rp.arguments(ev.outputIndex, ev.delta, c)
	case "response.created", "response.in_progress", "response.queued", "response.completed",
		"response.failed", "response.incomplete":
		err = rp.response(typ, ev.response, c)
	case "error":
		c.Err = errorEvent(&ev)
	}
	return err
}

// typedEvent starts decoding one typed event's data into c (a Responses
// or a Messages event): it copies the data, walks its top level, which must
// be one JSON object, calling member with each member's value, and returns
// the event's type: the data's, else sseType. Data that is no JSON object
// is an error, and in an event typed error the upstream's failure as a
// *chunk.Error, since the event has no data to relay.
func (rp *ResponsesParser) typedEvent(sseType, data []byte, c *chunk.Chunk, member func(name []byte, v json.RawMessage)) ([]byte, error) {
	c.Raw = append(c.Raw[:0], data...)
	rp.out = rp.out[:0]
	var typ json.RawMessage
	err := rp.object(c.Raw, func(name []byte, v json.RawMessage) {
		if string(name) == "type" {
			typ = v
		}
		member(name, v)
	})
	if err == nil {
		if _, end := rp.p.dec.ReadToken(); end != jsontextEOF {
			err = errors.New("data after the JSON object")
		}
	}
	if err != nil {
		if string(sseType) == "error" {
			return nil, parseError(c.Raw)
		}
		return nil, fmt.Errorf("decoding upstream event: %w", err)
	}
	if t, ok := unquote(typ); ok {
		return t, nil
	}
	return sseType, nil
}

// object walks the members of the object v (the event, or a value within
// it), calling member with each one's value. A v that is not an object is
// errNotObject; within an event, it holds nothing the proxy reads.
func (rp *ResponsesParser) object(v []byte, member func(name []byte, v json.RawMessage)) error {
	p := &rp.p
	p.reset(v)
	d := p.dec
	if d.PeekKind() != '{' {
		return errNotObject
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	for d.PeekKind() != '}' {
		// The name as a slice of v, not of the decoder's buffer, which
		// reading the value may reuse.
		tok, err := p.value()
		if err != nil {
			return err
		}
		name, ok := unquote(tok)
		if !ok {
			return errors.New("object name is not a string")
		}
		val, err := p.value()
		if err != nil {
			return err
		}
		member(name, val)
	}
	_, err := d.ReadToken()
	return err
}

// inner walks an object within the event: one that is not an object holds
// nothing the proxy reads.
func (rp *ResponsesParser) inner(v []byte, member func(name []byte, v json.RawMessage)) error {
	if err := rp.object(v, member); err != errNotObject {
		return err
	}
	return nil
}

// itemAdded starts a tool call when the new output item is a function
// call: [{"index":i,"id":call_id,"type":"function","function":{"name":...,"arguments":...}}].
func (rp *ResponsesParser) itemAdded(item, outputIndex json.RawMessage, c *chunk.Chunk) error {
	var typ, callID, name, args json.RawMessage
	err := rp.inner(item, func(n []byte, v json.RawMessage) {
		switch string(n) {
		case "type":
			typ = v
		case "call_id":
			callID = v
		case "name":
			name = v
		case "arguments":
			args = v
		}
	})
	if err != nil || string(typ) != `"function_call"` {
		return err
	}
	i := len(rp.calls)
	rp.calls = append(rp.calls, number(outputIndex))
	b := append(rp.out, `[{"index":`...)
	b = strconv.AppendInt(b, int64(i), 10)
	if isSet(callID) {
		b = append(append(b, `,"id":`...), callID...)
	}
	b = append(b, `,"type":"function","function":{`...)
	if isSet(name) {
		b = append(append(b, `"name":`...), name...)
		b = append(b, ',')
	}
	if !isSet(args) {
		args = json.RawMessage(`""`)
	}
	b = append(append(b, `"arguments":`...), args...)
	rp.out = append(b, "}}]"...)
	c.ToolCalls = rp.out
	return nil
}

// arguments carries a piece of a function call's arguments:
// [{"index":i,"function":{"arguments":delta}}].
func (rp *ResponsesParser) arguments(outputIndex, delta json.RawMessage, c *chunk.Chunk) {
	if !isSet(delta) {
		return
	}
	at := number(outputIndex)
	i := -1
	for j, oi := range rp.calls {
		if oi == at {
			i = j
			break
		}
	}
	if i < 0 { // a call whose output_item.added never came
		i = len(rp.calls)
		rp.calls = append(rp.calls, at)
	}
	b := append(rp.out, `[{"index":`...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, `,"function":{"arguments":`...)
	b = append(b, delta...)
	rp.out = append(b, "}}]"...)
	c.ToolCalls = rp.out
}

// response reads the response object of a lifecycle event: its model, and
// at the end its usage, error or reason for stopping short.
func (rp *ResponsesParser) response(typ []byte, resp json.RawMessage, c *chunk.Chunk) error {
	var model, usage, errVal, incomplete json.RawMessage
	err := rp.inner(resp, func(n []byte, v json.RawMessage) {
		switch string(n) {
		case "model":
			model = v
		case "usage":
			usage = v
		case "error":
			errVal = v
		case "incomplete_details":
			incomplete = v
		}
	})
	if err != nil {
		return err
	}
	if model != nil {
		c.Model = rp.p.modelName(model)
	}
	if isSet(usage) {
		if c.Usage, err = rp.usage(usage); err != nil {
			return err
		}
	}
	switch string(typ) {
	case "response.completed":
		c.FinishReason = "stop"
		if len(rp.calls) > 0 {
			c.FinishReason = "tool_calls"
		}
	case "response.failed":
		c.Err = &chunk.Error{Message: "upstream response failed", Type: chunk.TypeUpstream}
		if isSet(errVal) {
			c.Err = parseError(errVal)
		}
	case "response.incomplete":
		c.Err = rp.incomplete(incomplete)
	}
	return nil
}

// usage gives the Responses usage object the chat shape's names, so that
// metrics, token budgets and the framings' done events read one shape:
// input_tokens and output_tokens become prompt_tokens and
// completion_tokens, their details prompt_tokens_details and
// completion_tokens_details. A usage object without either is passed on as
// it is.
func (rp *ResponsesParser) usage(u json.RawMessage) (json.RawMessage, error) {
	var in, out, total, inDetails, outDetails json.RawMessage
	err := rp.inner(u, func(n []byte, v json.RawMessage) {
		switch string(n) {
		case "input_tokens":
			in = v
		case "output_tokens":
			out = v
		case "total_tokens":
			total = v
		case "input_tokens_details":
			inDetails = v
		case "output_tokens_details":
			outDetails = v
		}
	})
	if err != nil {
		return nil, err
	}
	if in == nil && out == nil {
		return u, nil
	}
	start := len(rp.out)
	b := append(rp.out, '{')
	for _, f := range [...]struct {
		name string
		v    json.RawMessage
	}{{"prompt_tokens", in}, {"completion_tokens", out}, {"total_tokens", total},
		{"prompt_tokens_details", inDetails}, {"completion_tokens_details", outDetails}} {
		if f.v == nil {
			continue
		}
		if b[len(b)-1] != '{' {
			b = append(b, ',')
		}
		b = append(append(append(append(b, '"'), f.name...), `":`...), f.v...)
	}
	rp.out = append(b, '}')
	return rp.out[start:], nil
}

// incomplete is the failure of a response that stopped short
// (max_output_tokens, content_filter): for the framings other than openai,
// whose done means a complete answer.
func (rp *ResponsesParser) incomplete(details json.RawMessage) *chunk.Error {
	e := &chunk.Error{Message: "upstream response incomplete", Type: chunk.TypeUpstream}
	var d struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(details, &d) == nil && d.Reason != "" {
		e.Message += ": " + d.Reason
		e.Code = mustJSON(d.Reason)
	}
	return e
}

// errorEvent reads an event of type error: {"type":"error","code":...,
// "message":...}, or with the fields nested in "error".
func errorEvent(ev *responseEvent) *chunk.Error {
	if isSet(ev.err) {
		return parseError(ev.err)
	}
	e := &chunk.Error{Message: "upstream reported an error", Type: chunk.TypeUpstream}
	var msg string
	if json.Unmarshal(ev.message, &msg) == nil && msg != "" {
		e.Message = msg
	}
	if isSet(ev.code) {
		e.Code = ev.code
	}
	return e
}

// unquote returns the text of a JSON string token without allocating,
// when it has no escapes; one that has is decoded.
func unquote(v json.RawMessage) ([]byte, bool) {
	if len(v) < 2 || v[0] != '"' {
		return nil, false
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1], true
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return nil, false
	}
	return []byte(s), true
}

// number reads a non-negative JSON integer token; anything else is -1.
func number(v json.RawMessage) int64 {
	if len(v) == 0 || len(v) > 18 {
		return -1
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// ParseResponse decodes a whole Response object, the answer of a request
// that did not stream (or of an upstream that ignored "stream"), into one
// chunk: its text, reasoning summary and function calls as the chat
// shape's, its usage, and its failure if it failed or stopped short. A body
// that is an error ({"error":{...}}) sets c.Err. It is the rare path, so it
// decodes with encoding/json.
func ParseResponse(body []byte, c *chunk.Chunk) error {
	c.Raw = append(c.Raw[:0], body...)
	var r struct {
		Object  string          `json:"object"`
		Status  string          `json:"status"`
		Model   string          `json:"model"`
		Error   json.RawMessage `json:"error"`
		Usage   json.RawMessage `json:"usage"`
		Details json.RawMessage `json:"incomplete_details"`
		Output  []struct {
			Type      string          `json:"type"`
			CallID    json.RawMessage `json:"call_id"`
			Name      json.RawMessage `json:"name"`
			Arguments json.RawMessage `json:"arguments"`
			Content   []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"content"`
			Summary []struct {
				Text string `json:"text"`
			} `json:"summary"`
		} `json:"output"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("decoding upstream response: %w", err)
	}
	if e := responseBodyError(r.Object, r.Error); e != nil {
		c.Err = e
		return nil
	}
	var rp ResponsesParser
	c.Model = r.Model
	if isSet(r.Usage) {
		var err error
		if c.Usage, err = rp.usage(r.Usage); err != nil {
			return err
		}
	}
	var w wholeAnswer
	for _, o := range r.Output {
		switch o.Type {
		case "message":
			for _, part := range o.Content {
				if part.Type == "output_text" {
					w.text = append(w.text, part.Text...)
				}
			}
		case "reasoning":
			for _, s := range o.Summary {
				w.reasoning = append(w.reasoning, s.Text...)
			}
		case "function_call":
			w.call(o.CallID, o.Name, o.Arguments)
		}
	}
	w.fill(c)
	switch r.Status {
	case "failed":
		c.Err = &chunk.Error{Message: "upstream response failed", Type: chunk.TypeUpstream}
		if isSet(r.Error) {
			c.Err = parseError(r.Error)
		}
	case "incomplete":
		c.Err = rp.incomplete(r.Details)
	default:
		c.FinishReason = "stop"
		if w.calls > 0 {
			c.FinishReason = "tool_calls"
		}
	}
	return nil
}

// orEmpty is v, or an empty JSON string when v is absent or null.
func orEmpty(v json.RawMessage) json.RawMessage {
	if !isSet(v) {
		return json.RawMessage(`""`)
	}
	return v
}

// responseBodyError is the error of a whole body that is an error
// ({"error":{...}}) rather than a Response, whose own "error" field is
// null or tells why it failed.
func responseBodyError(object string, errVal json.RawMessage) *chunk.Error {
	if object == "response" || !isSet(errVal) {
		return nil
	}
	return parseError(errVal)
}
