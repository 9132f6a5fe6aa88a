package upstream

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// messagesTokenFields is what a Messages API request bounds its output
// by: max_tokens, which Anthropic requires.
var messagesTokenFields = []string{"max_tokens"}

// MessagesHeaders are the client headers a Messages API request carries to
// the upstream: the API version and the betas the client opts into (Claude
// Code sends several). header_up, the operator's word, takes precedence.
var MessagesHeaders = []string{"Anthropic-Version", "Anthropic-Beta"}

// FromMessagesJSON is the package's FromMessagesJSON within l, which bound
// a Messages request as they bound a chat one: its model, its max_tokens
// (set to the cap when the request names none; without a cap, a request
// without one is refused, as Anthropic refuses it), its messages and the
// characters of their text and of the system prompt. The body goes to the
// upstream as the client wrote it but for those and "stream", forced on by
// forceStream for the framings that only stream; only then is it written
// anew. header is the client's: of it, MessagesHeaders go along.
func (l *Limits) FromMessagesJSON(body []byte, header http.Header, forceStream bool, defaultModel string) (*Request, error) {
	if l == nil {
		l = &Limits{}
	}
	fields, err := bodyFields(body)
	if err != nil {
		return nil, err
	}
	req := &Request{API: Messages, Path: "messages", N: 1, Header: clientHeaders(header)}
	changed, err := l.model(fields, req, defaultModel)
	if err != nil {
		return nil, err
	}
	if err := l.messagesLimits(fields, req); err != nil {
		return nil, err
	}
	if err := l.capTokensOf(messagesTokenFields, fields, req); err != nil {
		return nil, err
	}
	if v, ok := fields["max_tokens"]; !ok || !isSet(v) {
		// Anthropic refuses it too, in these words: it need not be asked.
		return nil, overLimit("max_tokens", "null", "max_tokens: Field required")
	}
	if l.Clamp {
		clampThinking(fields, req.MaxTokens)
	}
	if err := req.setBody(body, fields, forceStream, changed || l.MaxTokens > 0); err != nil {
		return nil, err
	}
	return req, nil
}

// minThinking is the smallest thinking budget Anthropic takes.
const minThinking = 1024

// clampThinking lowers the budget of extended thinking below a max_tokens
// that was clamped, as Anthropic requires it to be (Claude Code asks for
// a budget of max_tokens-1): the request stays one the upstream takes. A
// budget that cannot be lowered so far is left for the upstream to refuse.
func clampThinking(fields map[string]json.RawMessage, maxTokens int) {
	var thinking map[string]json.RawMessage
	if json.Unmarshal(fields["thinking"], &thinking) != nil || thinking == nil {
		return
	}
	budget, err := strconv.Atoi(string(thinking["budget_tokens"]))
	if err != nil || budget < maxTokens || maxTokens-1 < minThinking {
		return
	}
	thinking["budget_tokens"] = json.RawMessage(strconv.Itoa(maxTokens - 1))
	fields["thinking"] = mustJSON(thinking)
}

// messagesLimits counts the text of the system prompt and of the messages,
// and holds it and the number of messages to l. What else the messages
// hold is the upstream's to judge.
func (l *Limits) messagesLimits(fields map[string]json.RawMessage, req *Request) error {
	req.PromptChars = textChars(fields["system"])
	if msgs, ok := fields["messages"]; ok {
		var list []json.RawMessage
		if json.Unmarshal(msgs, &list) != nil {
			return badRequest("messages must be an array")
		}
		if l.MaxMessages > 0 && len(list) > l.MaxMessages {
			return tooMany("messages", "messages", len(list), l.MaxMessages)
		}
		for _, m := range list {
			if chars, ok := message(m); ok {
				req.PromptChars += chars
			}
		}
	}
	return l.checkPrompt(req.PromptChars)
}

// MessagesFromPrompt is a streamed Messages request of one user message,
// for GET <...>/v1/messages?prompt=. Anthropic requires max_tokens: it is
// the cap, or 4096 without one.
func (l *Limits) MessagesFromPrompt(prompt, model string, header http.Header) (*Request, error) {
	if prompt == "" {
		return nil, badRequest("missing prompt: pass ?prompt=<text>")
	}
	fields := map[string]json.RawMessage{"messages": userMessage(prompt), "stream": json.RawMessage("true")}
	if model != "" {
		fields["model"] = mustJSON(model)
	}
	if l == nil || l.MaxTokens == 0 {
		fields["max_tokens"] = json.RawMessage("4096")
	}
	return l.FromMessagesJSON(mustJSON(fields), header, true, "")
}

// clientHeaders are the MessagesHeaders of h, nil when it has none.
func clientHeaders(h http.Header) http.Header {
	var out http.Header
	for _, k := range MessagesHeaders {
		if v := h.Values(k); len(v) > 0 {
			if out == nil {
				out = http.Header{}
			}
			out[k] = v
		}
	}
	return out
}
