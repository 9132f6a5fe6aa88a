package upstream

import (
	"encoding/json"
	"net/http"
	"net/url"
)

// FromResponsesJSON builds a Responses API request (POST responses) from a
// client's body. The body goes to the upstream as the client wrote it, but
// for the model, filled in with defaultModel when it names none, and
// "stream", forced on by forceStream for the framings that only stream;
// only then is it written anew. What the input holds is the upstream's to
// judge: the Responses API takes many shapes of it (a string, messages,
// items, a previous_response_id, a stored prompt).
func FromResponsesJSON(body []byte, forceStream bool, defaultModel string) (*Request, error) {
	return (*Limits)(nil).FromResponsesJSON(body, forceStream, defaultModel)
}

// FromResponsesJSON is the package's FromResponsesJSON within l, which
// bound a Responses request as they bound a chat one: its model, its
// max_output_tokens, its input items and the characters of their text.
func (l *Limits) FromResponsesJSON(body []byte, forceStream bool, defaultModel string) (*Request, error) {
	if l == nil {
		l = &Limits{}
	}
	fields, err := bodyFields(body)
	if err != nil {
		return nil, err
	}
	req := &Request{API: Responses, N: 1}
	changed, err := l.model(fields, req, defaultModel)
	if err != nil {
		return nil, err
	}
	if err := l.inputLimits(fields, req); err != nil {
		return nil, err
	}
	if err := l.capTokensOf(responsesTokenFields, fields, req); err != nil {
		return nil, err
	}
	if err := req.setBody(body, fields, forceStream, changed || l.MaxTokens > 0); err != nil {
		return nil, err
	}
	return req, nil
}

// inputLimits counts the text of the instructions and the input (a string,
// or items whose content is), and holds it and the number of items to l.
func (l *Limits) inputLimits(fields map[string]json.RawMessage, req *Request) error {
	req.PromptChars = textChars(fields["instructions"])
	var items []json.RawMessage
	if json.Unmarshal(fields["input"], &items) != nil {
		req.PromptChars += textChars(fields["input"])
		return l.checkPrompt(req.PromptChars)
	}
	if l.MaxMessages > 0 && len(items) > l.MaxMessages {
		return tooMany("input", "input items", len(items), l.MaxMessages)
	}
	for _, it := range items {
		var item struct {
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(it, &item) == nil {
			req.PromptChars += textChars(item.Content)
		}
	}
	return l.checkPrompt(req.PromptChars)
}

// ResponsesFromPrompt builds a streamed Responses API request whose input is
// one user message, for GET <...>/v1/responses?prompt=.
func ResponsesFromPrompt(prompt, model string) (*Request, error) {
	return (*Limits)(nil).ResponsesFromPrompt(prompt, model)
}

// ResponsesFromPrompt is the package's ResponsesFromPrompt within l.
func (l *Limits) ResponsesFromPrompt(prompt, model string) (*Request, error) {
	if prompt == "" {
		return nil, badRequest("missing prompt: pass ?prompt=<text>")
	}
	fields := map[string]json.RawMessage{"input": mustJSON(prompt), "stream": json.RawMessage("true")}
	if model != "" {
		fields["model"] = mustJSON(model)
	}
	return l.FromResponsesJSON(mustJSON(fields), true, "")
}

// RetrieveResponse builds GET responses/{id} (path is "responses/{id}")
// with the client's query passed on unchanged: stream=true replays the
// response's events, starting_after=N from the event after N. It streams
// if the query asks it to.
func RetrieveResponse(path, query string) *Request {
	q, _ := url.ParseQuery(query)
	return &Request{API: Responses, Method: http.MethodGet, Path: path, Query: query, Stream: q.Get("stream") == "true"}
}
