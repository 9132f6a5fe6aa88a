package simulator

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

type messagesRequest struct {
	Model     string          `json:"model"`
	MaxTokens *int            `json:"max_tokens"`
	Messages  []chatMessage   `json:"messages"`
	System    json.RawMessage `json:"system"`
	Stream    bool            `json:"stream"`
}

// The sim-tools call in Anthropic's form: a tool_use block whose input
// streams as input_json_delta pieces that concatenate to {"city":"Paris"}.
var toolInputPieces = []string{`{"city"`, `: "Par`, `is"}`}

const (
	toolUseBlock   = `{"type":"tool_use","id":"toolu_sim_1","name":"get_weather","input":{}}`
	toolUseWhole   = `{"type":"tool_use","id":"toolu_sim_1","name":"get_weather","input":{"city":"Paris"}}`
	thinkingBlock  = `{"type":"thinking","thinking":"","signature":""}`
	simSignature   = "c2ltdWxhdGVkIHNpZ25hdHVyZQ=="
	messageErrorSE = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"simulated upstream error\"}}\n\n"
	messageGarbage = "event: content_block_delta\ndata: {not json\n\n"
)

// messages answers Anthropic's Messages API (POST /v1/messages), as
// Claude Code and the Anthropic SDKs call it: the same reply as a chat
// completion, streamed as its typed events (message_start,
// content_block_start, content_block_delta, content_block_stop,
// message_delta, message_stop), or whole. sim-reasoning sends a thinking
// block first, sim-tools a tool_use block; the failures of [Models] apply,
// an error event being Anthropic's `event: error`. Errors are in
// Anthropic's shape, {"type":"error","error":{"type","message"}}.
func (s *Simulator) messages(w http.ResponseWriter, r *http.Request) {
	var req messagesRequest
	fail := func(status int, msg string) { anthropicError(w, status, "invalid_request_error", msg) }
	body, ok := readJSON(r, &req, fail)
	if !ok {
		return
	}
	if req.MaxTokens == nil {
		fail(http.StatusBadRequest, "max_tokens: Field required")
		return
	}
	rp, msg := s.plan(&chatRequest{Model: req.Model, Messages: req.Messages, Stream: req.Stream, MaxTokens: req.MaxTokens}, body)
	if msg != "" {
		fail(http.StatusBadRequest, msg)
		return
	}
	if rp.status != 0 {
		simulatedAnthropicError(w, rp.status, rp.model)
		return
	}
	system, ok := messageText(req.System)
	if !ok {
		fail(http.StatusBadRequest, "system: must be a string or an array of text blocks")
		return
	}
	rp.prompt += countWords(system)
	rp.id = "msg_sim_" + strings.TrimPrefix(rp.id, "chatcmpl-sim-")
	switch rp.finish {
	case "length":
		rp.finish = "max_tokens"
	case "tool_calls":
		rp.finish = "tool_use"
	default:
		rp.finish = "end_turn"
	}
	if req.Stream {
		s.streamMessage(w, r, rp)
	} else {
		s.wholeMessage(w, r, rp)
	}
}

// anthropicError writes an error in Anthropic's shape.
func anthropicError(w http.ResponseWriter, status int, typ, msg string) {
	b := append([]byte(`{"type":"error","error":{"type":"`), typ...)
	b = append(b, `","message":"`...)
	b = appendJSONText(b, msg)
	b = append(b, "\"}}\n"...)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// simulatedAnthropicError answers sim-error-<status> as Anthropic reports
// that status.
func simulatedAnthropicError(w http.ResponseWriter, status int, model string) {
	typ := "api_error"
	switch {
	case status == http.StatusUnauthorized:
		typ = "authentication_error"
	case status == http.StatusForbidden:
		typ = "permission_error"
	case status == http.StatusNotFound:
		typ = "not_found_error"
	case status == http.StatusRequestEntityTooLarge:
		typ = "request_too_large"
	case status == http.StatusTooManyRequests:
		typ = "rate_limit_error"
		w.Header().Set("Retry-After", "1")
	case status == 529:
		typ = "overloaded_error"
	case status < 500:
		typ = "invalid_request_error"
	}
	anthropicError(w, status, typ, "simulated "+strconv.Itoa(status)+" "+http.StatusText(status)+" error (model "+model+")")
}

// appendMessageUsage appends Anthropic's usage object.
func appendMessageUsage(b []byte, input, output int) []byte {
	b = append(b, `{"input_tokens":`...)
	b = strconv.AppendInt(b, int64(input), 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, int64(output), 10)
	return append(b, '}')
}

// appendMessage appends the message object up to its content array.
func (rp *reply) appendMessage(b []byte) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, rp.id...)
	b = append(b, `","type":"message","role":"assistant","model":"`...)
	b = appendJSONText(b, rp.model)
	return append(b, `","content":`...)
}

// messageEvents writes Anthropic's typed events.
type messageEvents struct{ *events }

// event sends `event: <typ>` with the data appended by data.
func (e messageEvents) event(typ string, data func(b []byte) []byte) bool {
	e.buf = append(e.buf[:0], "event: "...)
	e.buf = append(e.buf, typ...)
	e.buf = append(e.buf, "\ndata: "...)
	e.buf = data(e.buf)
	e.buf = append(e.buf, "\n\n"...)
	return e.send()
}

func (e messageEvents) blockStart(index int, block string) bool {
	return e.event("content_block_start", func(b []byte) []byte {
		b = append(b, `{"type":"content_block_start","index":`...)
		b = strconv.AppendInt(b, int64(index), 10)
		b = append(b, `,"content_block":`...)
		b = append(b, block...)
		return append(b, '}')
	})
}

// delta sends a content_block_delta whose delta is {"type":typ,field:text};
// text is appended by appendText, JSON-escaped.
func (e messageEvents) delta(index int, typ, field string, appendText func([]byte) []byte) bool {
	return e.event("content_block_delta", func(b []byte) []byte {
		b = append(b, `{"type":"content_block_delta","index":`...)
		b = strconv.AppendInt(b, int64(index), 10)
		b = append(b, `,"delta":{"type":"`...)
		b = append(b, typ...)
		b = append(b, `","`...)
		b = append(b, field...)
		b = append(b, `":"`...)
		b = appendText(b)
		return append(b, `"}}`...)
	})
}

func (e messageEvents) blockStop(index int) bool {
	return e.event("content_block_stop", func(b []byte) []byte {
		b = append(b, `{"type":"content_block_stop","index":`...)
		b = strconv.AppendInt(b, int64(index), 10)
		return append(b, '}')
	})
}

func (s *Simulator) streamMessage(w http.ResponseWriter, r *http.Request, rp *reply) {
	ev, p := startEvents(w, r)
	defer p.stop()
	if ev == nil {
		return
	}
	e := messageEvents{ev}
	if rp.kind == stallFirst {
		<-p.done
		return
	}
	if !e.event("message_start", func(b []byte) []byte {
		b = append(b, `{"type":"message_start","message":`...)
		b = rp.appendMessage(b)
		b = append(b, `[],"stop_reason":null,"stop_sequence":null,"usage":`...)
		b = appendMessageUsage(b, rp.prompt, 1)
		return append(b, "}}"...)
	}) {
		return
	}
	index := 0
	switch rp.kind {
	case reasoning:
		if !e.blockStart(index, thinkingBlock) {
			return
		}
		for _, piece := range reasoningPieces {
			if !p.wait(rp.pause()) || !e.delta(index, "thinking_delta", "thinking", func(b []byte) []byte { return appendJSONText(b, piece) }) {
				return
			}
		}
		if !e.delta(index, "signature_delta", "signature", func(b []byte) []byte { return append(b, simSignature...) }) || !e.blockStop(index) {
			return
		}
		index++
	case tools:
		if !e.blockStart(index, toolUseBlock) {
			return
		}
		for _, piece := range toolInputPieces {
			if !p.wait(rp.pause()) || !e.delta(index, "input_json_delta", "partial_json", func(b []byte) []byte { return appendJSONText(b, piece) }) {
				return
			}
		}
		if !e.blockStop(index) {
			return
		}
	}
	if rp.kind != tools {
		if !e.blockStart(index, `{"type":"text","text":""}`) {
			return
		}
		for i, n := 0, rp.sent(); i < n; i++ {
			if !p.wait(rp.pause()) || !e.delta(index, "text_delta", "text", func(b []byte) []byte { return rp.appendContent(b, i) }) {
				return
			}
		}
	}
	if e.fault(rp, p, messageErrorSE, messageGarbage) {
		return
	}
	if rp.kind != tools && !e.blockStop(index) {
		return
	}
	if !e.event("message_delta", func(b []byte) []byte {
		b = append(b, `{"type":"message_delta","delta":{"stop_reason":"`...)
		b = append(b, rp.finish...)
		b = append(b, `","stop_sequence":null},"usage":{"output_tokens":`...)
		b = strconv.AppendInt(b, int64(rp.generated()), 10)
		return append(b, "}}"...)
	}) {
		return
	}
	if rp.kind != noDone {
		e.raw("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	}
}

func (s *Simulator) wholeMessage(w http.ResponseWriter, r *http.Request, rp *reply) {
	whole(w, r, rp, func() {
		anthropicError(w, 529, "overloaded_error", "simulated upstream error")
	}, func() []byte {
		b := rp.appendMessage(make([]byte, 0, 256+16*rp.content))
		b = append(b, '[')
		switch rp.kind {
		case tools:
			b = append(b, toolUseWhole...)
		case reasoning:
			b = append(b, `{"type":"thinking","thinking":"`...)
			for _, piece := range reasoningPieces {
				b = appendJSONText(b, piece)
			}
			b = append(b, `","signature":"`+simSignature+`"},`...)
			fallthrough
		default:
			b = append(b, `{"type":"text","text":"`...)
			for i := 0; i < rp.content; i++ {
				b = rp.appendContent(b, i)
			}
			b = append(b, `"}`...)
		}
		b = append(b, `],"stop_reason":"`...)
		b = append(b, rp.finish...)
		b = append(b, `","stop_sequence":null,"usage":`...)
		b = appendMessageUsage(b, rp.prompt, rp.generated())
		return append(b, "}\n"...)
	})
}
