package upstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"unicode/utf8"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// Request is a chat-completions (or Responses API) request ready for the
// upstream.
type Request struct {
	// API is the part of the API the request is for: it picks the path
	// asked for (chat/completions, responses) and the answer's decoder.
	API API
	// Method and Path (below the base URL) replace the API's own POST,
	// as for GET responses/{id}. A GET sends no body.
	Method, Path string
	// Query is passed on as the client sent it, after any query the base
	// URL has: GET responses/{id}?stream=true&starting_after=3.
	Query string
	// Header holds client headers that go along (a Messages request's
	// anthropic-version and anthropic-beta), unless header_up sets them.
	Header http.Header

	// Body is the JSON to send.
	Body []byte
	// Stream tells whether the upstream was asked to stream.
	Stream bool
	// IncludeUsage tells whether the client itself asked for the usage
	// chunk; the upstream is always asked for it.
	IncludeUsage bool
	// Model is the model the request names ("" if none).
	Model string
	// MaxTokens is the most completion tokens the upstream is asked for
	// (max_tokens or max_completion_tokens, the smaller when both); 0 when
	// the request sets no bound.
	MaxTokens int
	// N is how many choices the upstream is asked for: n, at least 1.
	N int
	// PromptChars is the characters of text in the messages (see Limits.MaxPrompt).
	PromptChars int
}

// WithModel returns a copy of r that names another model (an upstream's
// rename of it). It decodes the body again rather than keeping a second
// copy of it decoded for the rare upstream that renames.
func (r *Request) WithModel(model string) *Request {
	var fields map[string]json.RawMessage
	if json.Unmarshal(r.Body, &fields) != nil {
		return r // cannot happen: Body is JSON this package wrote
	}
	fields["model"] = mustJSON(model)
	c := *r
	c.Model, c.Body = model, mustJSON(fields)
	return &c
}

// Release lets go of the body once no other upstream may be asked: a
// stream committed to one upstream keeps no copy of its request.
func (r *Request) Release() { r.Body = nil }

// badRequest is the error for input that must never reach the upstream.
func badRequest(format string, args ...any) *chunk.Error {
	return &chunk.Error{Status: http.StatusBadRequest, Type: chunk.TypeInvalidRequest, Message: fmt.Sprintf(format, args...)}
}

// FromJSON builds the upstream request from a client's chat-completions body,
// keeping every field the proxy does not need to change (tools, temperature,
// response_format, ...). forceStream makes it a streamed request whatever the
// client said, for the framings that only stream. A body with "prompt" and no
// "messages" is taken as one user message. defaultModel fills in a missing
// model.
func FromJSON(body []byte, forceStream bool, defaultModel string) (*Request, error) {
	return (*Limits)(nil).FromJSON(body, forceStream, defaultModel)
}

// FromJSON is the package's FromJSON within l: a request over a limit is
// refused, or its max_tokens lowered, in the one rewrite of the body.
func (l *Limits) FromJSON(body []byte, forceStream bool, defaultModel string) (*Request, error) {
	if l == nil {
		l = &Limits{}
	}
	fields, err := bodyFields(body)
	if err != nil {
		return nil, err
	}

	req := &Request{}
	if msgs, ok := fields["messages"]; ok {
		var list []json.RawMessage
		if json.Unmarshal(msgs, &list) != nil || len(list) == 0 {
			return nil, badRequest("messages must be a non-empty array")
		}
		if l.MaxMessages > 0 && len(list) > l.MaxMessages {
			return nil, tooMany("messages", "messages", len(list), l.MaxMessages)
		}
		for i, m := range list {
			chars, ok := message(m)
			if !ok {
				return nil, badRequest("messages[%d] must be an object with a string role", i)
			}
			req.PromptChars += chars
		}
		delete(fields, "prompt")
	} else if p, ok := fields["prompt"]; ok {
		var prompt string
		if json.Unmarshal(p, &prompt) != nil || prompt == "" {
			return nil, badRequest("prompt must be a non-empty string")
		}
		fields["messages"] = userMessage(prompt)
		req.PromptChars = utf8.RuneCountInString(prompt)
		delete(fields, "prompt")
	} else {
		return nil, badRequest("request has neither messages nor prompt")
	}
	if err := l.checkPrompt(req.PromptChars); err != nil {
		return nil, err
	}

	if _, err := l.model(fields, req, defaultModel); err != nil {
		return nil, err
	}
	if err := l.capChoices(fields, req); err != nil {
		return nil, err
	}
	if err := l.capTokens(fields, req); err != nil {
		return nil, err
	}

	if s, ok := fields["stream"]; ok && isSet(s) {
		if json.Unmarshal(s, &req.Stream) != nil {
			return nil, badRequest("stream must be a boolean")
		}
	}
	if forceStream {
		req.Stream = true
	}
	if req.Stream {
		fields["stream"] = json.RawMessage("true")
		opts := map[string]json.RawMessage{}
		if so, ok := fields["stream_options"]; ok && isSet(so) {
			if json.Unmarshal(so, &opts) != nil {
				return nil, badRequest("stream_options must be an object")
			}
		}
		if iu, ok := opts["include_usage"]; ok {
			_ = json.Unmarshal(iu, &req.IncludeUsage)
		}
		opts["include_usage"] = json.RawMessage("true")
		fields["stream_options"] = mustJSON(opts)
	}

	b, err := json.Marshal(fields)
	if err != nil {
		return nil, badRequest("request body: %v", err)
	}
	req.Body = b
	return req, nil
}

// setBody reads the stream flag of a body forwarded as the client wrote
// it (a Responses or Messages request), forces it on with forceStream, and
// sets req.Body: the client's own, or fields written anew when they
// changed.
func (req *Request) setBody(body []byte, fields map[string]json.RawMessage, forceStream, changed bool) error {
	if s, ok := fields["stream"]; ok && isSet(s) {
		if json.Unmarshal(s, &req.Stream) != nil {
			return badRequest("stream must be a boolean")
		}
	}
	if forceStream && !req.Stream {
		req.Stream = true
		fields["stream"] = json.RawMessage("true")
		changed = true
	}
	req.Body = body
	if changed {
		req.Body = mustJSON(fields)
	}
	return nil
}

// bodyFields decodes a client's body, which must be one JSON object.
func bodyFields(body []byte) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return nil, badRequest("request body is not a JSON object")
	}
	if dec.More() {
		return nil, badRequest("request body has data after the JSON object")
	}
	return fields, nil
}

// model reads the request's model into req, filling in defaultModel when
// it names none (and telling so), and checks it against the list.
func (l *Limits) model(fields map[string]json.RawMessage, req *Request, defaultModel string) (filled bool, err error) {
	if m, ok := fields["model"]; ok && isSet(m) {
		if json.Unmarshal(m, &req.Model) != nil {
			return false, badRequest("model must be a string")
		}
	}
	if req.Model == "" && defaultModel != "" {
		req.Model = defaultModel
		fields["model"] = mustJSON(defaultModel)
		filled = true
	}
	return filled, l.checkModel(req.Model)
}

// message tells whether m is an object with a string "role", and how many
// characters of text its content holds. Anything else (a number, a deeply
// nested array) is no chat message, and is refused here rather than sent
// to the upstream, whose parser would be the one to deal with it.
func message(m json.RawMessage) (chars int, ok bool) {
	if len(m) == 0 || m[0] != '{' {
		return 0, false
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(m, &fields) != nil {
		return 0, false
	}
	role := fields["role"]
	if len(role) == 0 || role[0] != '"' {
		return 0, false
	}
	return textChars(fields["content"]), true
}

// textChars counts the characters of a message's content: a string, or
// the text parts of an array of parts. Other parts (images, audio) are the
// upstream's to price.
func textChars(content json.RawMessage) int {
	var s string
	if json.Unmarshal(content, &s) == nil {
		return utf8.RuneCountInString(s)
	}
	var parts []struct {
		Text string `json:"text"`
	}
	if json.Unmarshal(content, &parts) != nil {
		return 0
	}
	n := 0
	for _, p := range parts {
		n += utf8.RuneCountInString(p.Text)
	}
	return n
}

// FromPrompt builds a streamed request of one user message.
func FromPrompt(prompt, model string) (*Request, error) {
	return (*Limits)(nil).FromPrompt(prompt, model)
}

// FromPrompt is the package's FromPrompt within l.
func (l *Limits) FromPrompt(prompt, model string) (*Request, error) {
	if l == nil {
		l = &Limits{}
	}
	if prompt == "" {
		return nil, badRequest("missing prompt: pass ?prompt=<text>")
	}
	req := &Request{Stream: true, Model: model, PromptChars: utf8.RuneCountInString(prompt)}
	if err := l.checkPrompt(req.PromptChars); err != nil {
		return nil, err
	}
	if err := l.checkModel(model); err != nil {
		return nil, err
	}
	fields := map[string]json.RawMessage{
		"messages":       userMessage(prompt),
		"stream":         json.RawMessage("true"),
		"stream_options": json.RawMessage(`{"include_usage":true}`),
	}
	if model != "" {
		fields["model"] = mustJSON(model)
	}
	if err := l.capTokens(fields, req); err != nil {
		return nil, err
	}
	req.N = 1
	req.Body = mustJSON(fields)
	return req, nil
}

func userMessage(prompt string) json.RawMessage {
	return mustJSON([]map[string]string{{"role": "user", "content": prompt}})
}

// mustJSON marshals values that cannot fail to marshal (strings, maps of raw JSON).
func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshalling %T: %v", v, err))
	}
	return b
}
