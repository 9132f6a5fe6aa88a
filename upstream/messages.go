package upstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// Messages is Anthropic's Messages API (POST messages), for upstreams that
// speak it (auth x-api-key): streamed as typed events, message_start to
// message_stop.
const Messages API = Responses + 1

// MessagesParser reads what the proxy needs of one Messages API stream
// event: text, thinking and tool_use deltas, given the chat shape the other
// framings carry; the stop reason and the usage, in the chat shape's names;
// and the error event. Every other event (content_block_stop, ping,
// signatures, citations, events newer than the proxy) is content-free: the
// openai framing relays it, the others skip it. It belongs to one stream,
// whose message_start's usage it keeps for the end; its memory is a few
// integers beyond the buffers, whatever the stream holds.
type MessagesParser struct {
	rp ResponsesParser // the object walk and the output buffer
	// The usage so far: message_start's, updated by message_delta's
	// (whose counts are cumulative).
	in, cacheWrite, cacheRead, out int64
	// startUsage is message_start's usage not yet told: the first chunk
	// with a delta carries it, so a token budget counts the prompt at
	// once, while a stream that fails before then can still fail over.
	startUsage bool
	// open is the content block index of the tool_use block being
	// streamed, plus one; 0 when none. Anthropic streams a message's
	// blocks one after the other, so the open one is all a delta can be
	// for.
	open  int64
	calls int // tool_use blocks seen: the next one's index in tool_calls
	// stopped tells that message_stop came: the stream's proper end.
	stopped bool
	// shown tells that a chunk with something to show (text, thinking, a
	// tool call) came: a failure after it is the answer's.
	shown bool
}

// messageEvent is the top level of an event.
type messageEvent struct {
	index, message, block, delta, usage, err json.RawMessage
}

// Parse decodes one event's data into c. sseType is the event's "event:"
// field, used when the data names no type. An error event sets c.Err. Data
// that is not a JSON object is an error: in an event typed error, the
// upstream's failure as a *chunk.Error.
func (mp *MessagesParser) Parse(sseType, data []byte, c *chunk.Chunk) error {
	var ev messageEvent
	typ, err := mp.rp.typedEvent(sseType, data, c, func(name []byte, v json.RawMessage) {
		switch string(name) { // no allocation: the compiler compares in place
		case "index":
			ev.index = v
		case "message":
			ev.message = v
		case "content_block":
			ev.block = v
		case "delta":
			ev.delta = v
		case "usage":
			ev.usage = v
		case "error":
			ev.err = v
		}
	})
	if err != nil {
		return err
	}
	switch string(typ) {
	case "message_start":
		err = mp.start(ev.message, c)
	case "content_block_start":
		err = mp.blockStart(ev.index, ev.block, c)
	case "content_block_delta":
		err = mp.blockDelta(ev.index, ev.delta, c)
	case "message_delta":
		err = mp.messageDelta(ev.delta, ev.usage, c)
	case "message_stop":
		mp.stopped = true
	case "error":
		c.Err = &chunk.Error{Message: "upstream reported an error", Type: chunk.TypeUpstream}
		if isSet(ev.err) {
			c.Err = parseError(ev.err)
		}
	}
	if err == nil && c.HasDelta() {
		mp.shown = true
		if mp.startUsage {
			mp.startUsage = false
			if c.Usage == nil {
				c.Usage = mp.usage()
			}
		}
	}
	return err
}

// unanswered is the error of an error event that came before anything to
// show, when another upstream may answer instead: Anthropic's
// overloaded_error (its 529) and api_error (its 500), given those statuses
// so that MayFailOver sees them as it sees them before the stream. Nil
// otherwise: the event is relayed as the upstream sent it.
func (mp *MessagesParser) unanswered(e *chunk.Error) *chunk.Error {
	if mp.shown {
		return nil
	}
	switch e.Type {
	case "overloaded_error":
		e.Status = 529
	case "api_error":
		e.Status = http.StatusInternalServerError
	default:
		return nil
	}
	return e
}

// start reads message_start's message: its model, and its usage, kept
// for later.
func (mp *MessagesParser) start(msg json.RawMessage, c *chunk.Chunk) error {
	var model, usage json.RawMessage
	err := mp.rp.inner(msg, func(n []byte, v json.RawMessage) {
		switch string(n) {
		case "model":
			model = v
		case "usage":
			usage = v
		}
	})
	if err != nil {
		return err
	}
	if model != nil {
		c.Model = mp.rp.p.modelName(model)
	}
	if isSet(usage) {
		if err := mp.readUsage(usage); err != nil {
			return err
		}
		mp.startUsage = true
	}
	return nil
}

// blockStart opens a content block. A tool_use block starts a tool call:
// [{"index":i,"id":id,"type":"function","function":{"name":...,"arguments":""}}];
// a text or thinking block that starts with text (they start empty) gives it.
func (mp *MessagesParser) blockStart(index, block json.RawMessage, c *chunk.Chunk) error {
	var typ, id, name, text, thinking json.RawMessage
	err := mp.rp.inner(block, func(n []byte, v json.RawMessage) {
		switch string(n) {
		case "type":
			typ = v
		case "id":
			id = v
		case "name":
			name = v
		case "text":
			text = v
		case "thinking":
			thinking = v
		}
	})
	if err != nil {
		return err
	}
	mp.open = 0
	switch t, _ := unquote(typ); string(t) {
	case "text":
		c.Content = stringToken(text)
	case "thinking":
		c.Reasoning = stringToken(thinking)
	case "tool_use":
		mp.open = number(index) + 1
		b := append(mp.rp.out, `[{"index":`...)
		b = strconv.AppendInt(b, int64(mp.calls), 10)
		mp.calls++
		if isSet(id) {
			b = append(append(b, `,"id":`...), id...)
		}
		b = append(b, `,"type":"function","function":{`...)
		if isSet(name) {
			b = append(append(b, `"name":`...), name...)
			b = append(b, ',')
		}
		mp.rp.out = append(b, `"arguments":""}}]`...)
		c.ToolCalls = mp.rp.out
	}
	return nil
}

// blockDelta reads a content_block_delta: text_delta, thinking_delta, or
// an input_json_delta of the open tool_use block,
// [{"index":i,"function":{"arguments":partial_json}}].
func (mp *MessagesParser) blockDelta(index, delta json.RawMessage, c *chunk.Chunk) error {
	var typ, text, thinking, partial json.RawMessage
	err := mp.rp.inner(delta, func(n []byte, v json.RawMessage) {
		switch string(n) {
		case "type":
			typ = v
		case "text":
			text = v
		case "thinking":
			thinking = v
		case "partial_json":
			partial = v
		}
	})
	if err != nil {
		return err
	}
	switch t, _ := unquote(typ); string(t) {
	case "text_delta":
		c.Content = stringToken(text)
	case "thinking_delta":
		c.Reasoning = stringToken(thinking)
	case "input_json_delta":
		// A server tool's input (server_tool_use) is no call of the
		// client's, nor is a delta for a block that is not open.
		if p := stringToken(partial); p != nil && mp.open > 0 && number(index)+1 == mp.open {
			b := append(mp.rp.out, `[{"index":`...)
			b = strconv.AppendInt(b, int64(mp.calls-1), 10)
			b = append(b, `,"function":{"arguments":`...)
			b = append(b, p...)
			mp.rp.out = append(b, "}}]"...)
			c.ToolCalls = mp.rp.out
		}
	}
	return nil
}

// messageDelta reads the message's end: its stop reason as a chat
// finish_reason, its usage, and the model message_start named.
func (mp *MessagesParser) messageDelta(delta, usage json.RawMessage, c *chunk.Chunk) error {
	var stop json.RawMessage
	err := mp.rp.inner(delta, func(n []byte, v json.RawMessage) {
		if string(n) == "stop_reason" {
			stop = v
		}
	})
	if err != nil {
		return err
	}
	c.FinishReason = stopReason(stop)
	// The model again, from message_start: the framings other than openai
	// skip that event, and their done event names the model.
	c.Model = mp.rp.p.modelStr
	if isSet(usage) {
		if err := mp.readUsage(usage); err != nil {
			return err
		}
		mp.startUsage = false
		c.Usage = mp.usage()
	}
	return nil
}

// stopReason maps Anthropic's stop_reason to chat's finish_reason; one the
// proxy does not know (pause_turn, ...) is passed on as it is, and a
// message_delta without one still ends the message: "stop".
func stopReason(v json.RawMessage) string {
	s, ok := unquote(v)
	switch string(s) {
	case "end_turn", "stop_sequence", "":
		return "stop"
	case "max_tokens", "model_context_window_exceeded":
		return "length"
	case "tool_use":
		return "tool_calls"
	case "refusal":
		return "content_filter"
	}
	if !ok {
		return "stop"
	}
	return string(s)
}

// readUsage takes the counts an Anthropic usage object holds: message_delta
// gives cumulative ones, so a count given replaces the one before.
func (mp *MessagesParser) readUsage(u json.RawMessage) error {
	return mp.rp.inner(u, func(n []byte, v json.RawMessage) {
		var dst *int64
		switch string(n) {
		case "input_tokens":
			dst = &mp.in
		case "cache_creation_input_tokens":
			dst = &mp.cacheWrite
		case "cache_read_input_tokens":
			dst = &mp.cacheRead
		case "output_tokens":
			dst = &mp.out
		default:
			return
		}
		if k := number(v); k >= 0 {
			*dst = k
		}
	})
}

// usage is the usage so far in the chat shape: the prompt counts every
// input token (Anthropic's input_tokens leave out the cache's), and
// prompt_tokens_details.cached_tokens the ones read from the cache, as
// OpenAI's do.
func (mp *MessagesParser) usage() json.RawMessage {
	prompt := mp.in + mp.cacheWrite + mp.cacheRead
	start := len(mp.rp.out)
	b := append(mp.rp.out, `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, prompt, 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, mp.out, 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, prompt+mp.out, 10)
	if mp.cacheRead > 0 {
		b = append(b, `,"prompt_tokens_details":{"cached_tokens":`...)
		b = strconv.AppendInt(b, mp.cacheRead, 10)
		b = append(b, '}')
	}
	mp.rp.out = append(b, '}')
	return mp.rp.out[start:]
}

// stringToken is v when it is a JSON string other than "", else nil: what
// a framing may copy as text.
func stringToken(v json.RawMessage) json.RawMessage {
	if len(v) < 2 || v[0] != '"' {
		return nil
	}
	return nonEmptyString(v)
}

// ParseMessage decodes a whole Message, the answer of a request that did
// not stream, into one chunk: its text, thinking and tool_use blocks as
// the chat shape's, its stop reason and its usage. A body that is an error
// ({"type":"error","error":{...}}) sets c.Err. It is the rare path, so it
// decodes with encoding/json.
func ParseMessage(body []byte, c *chunk.Chunk) error {
	c.Raw = append(c.Raw[:0], body...)
	var m struct {
		Type       string          `json:"type"`
		Model      string          `json:"model"`
		StopReason json.RawMessage `json:"stop_reason"`
		Usage      json.RawMessage `json:"usage"`
		Error      json.RawMessage `json:"error"`
		Content    []struct {
			Type     string          `json:"type"`
			Text     string          `json:"text"`
			Thinking string          `json:"thinking"`
			ID       json.RawMessage `json:"id"`
			Name     json.RawMessage `json:"name"`
			Input    json.RawMessage `json:"input"`
		} `json:"content"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return fmt.Errorf("decoding upstream message: %w", err)
	}
	if e := messageBodyError(m.Type, m.Error); e != nil {
		c.Err = e
		return nil
	}
	c.Model = m.Model
	var mp MessagesParser
	if isSet(m.Usage) {
		if err := mp.readUsage(m.Usage); err != nil {
			return err
		}
		c.Usage = mp.usage()
	}
	var w wholeAnswer
	for _, b := range m.Content {
		switch b.Type {
		case "text":
			w.text = append(w.text, b.Text...)
		case "thinking":
			w.reasoning = append(w.reasoning, b.Thinking...)
		case "tool_use":
			args := json.RawMessage(`"{}"`)
			if isSet(b.Input) {
				args = mustJSON(string(b.Input))
			}
			w.call(b.ID, b.Name, args)
		}
	}
	w.fill(c)
	c.FinishReason = stopReason(m.StopReason)
	return nil
}

// wholeAnswer gathers what a whole answer (a Response, a Message) holds
// for the framings other than openai: its text, its reasoning, and its
// tool calls in the chat shape.
type wholeAnswer struct {
	text, reasoning, list []byte
	calls                 int
}

// call adds a tool call: its id (absent: none), name and arguments, a
// JSON string.
func (w *wholeAnswer) call(id, name, args json.RawMessage) {
	if w.calls > 0 {
		w.list = append(w.list, ',')
	}
	call := map[string]any{"index": w.calls, "type": "function",
		"function": map[string]json.RawMessage{"name": orEmpty(name), "arguments": orEmpty(args)}}
	if isSet(id) {
		call["id"] = id
	}
	w.list = append(w.list, mustJSON(call)...)
	w.calls++
}

// fill puts what was gathered into c.
func (w *wholeAnswer) fill(c *chunk.Chunk) {
	if len(w.text) > 0 {
		c.Content = mustJSON(string(w.text))
	}
	if len(w.reasoning) > 0 {
		c.Reasoning = mustJSON(string(w.reasoning))
	}
	if w.calls > 0 {
		c.ToolCalls = append(append([]byte{'['}, w.list...), ']')
	}
}

// messageBodyError is the error a whole body is instead of a Message:
// Anthropic's {"type":"error","error":{...}}, or an OpenAI-style
// {"error":{...}} from a gateway.
func messageBodyError(typ string, errVal json.RawMessage) *chunk.Error {
	if typ == "message" || typ != "error" && !isSet(errVal) {
		return nil
	}
	if !isSet(errVal) {
		return &chunk.Error{Message: "upstream reported an error", Type: chunk.TypeUpstream}
	}
	return parseError(errVal)
}

// nextMessage decodes one event of a Messages stream, which ends with
// message_stop; an error event is its failure, relayed first as a chunk
// (see Next), but for one that came before anything to show, which may
// fail over (see unanswered).
func (s *Stream) nextMessage(typ, data []byte, c *chunk.Chunk) error {
	if bytes.Equal(data, doneData) {
		return io.ErrUnexpectedEOF // a chat stream's end is no message's
	}
	if err := s.messages.Parse(typ, data, c); err != nil {
		return err
	}
	c.Event = typ
	switch {
	case c.Err != nil:
		if e := s.messages.unanswered(c.Err); e != nil {
			return e // no event of it goes out: another upstream may answer
		}
		s.failed = c.Err
	case s.messages.stopped:
		s.finished, s.ended = true, true
	}
	return nil
}
