package simulator

import (
	"encoding/json"
	"net/http"
	"strings"
)

type completionRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens *int `json:"max_tokens"`
}

// completions answers the legacy text completion: the prompt (a string or
// an array of strings, taken as one) is played as a chat reply's words,
// each streamed chunk a {"object":"text_completion","choices":[{"text"}]}.
// Of the behaviours of [Models], the failures apply; sim-reasoning and
// sim-tools are plain replies, as the endpoint has neither.
func (s *Simulator) completions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	body, ok := readJSON(r, &req, openAIFail(w))
	if !ok {
		return
	}
	prompt, ok := promptText(req.Prompt)
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "prompt: must be a non-empty string or array of strings")
		return
	}
	content, _ := json.Marshal(prompt)
	rp, msg := s.plan(&chatRequest{Model: req.Model, Messages: []chatMessage{{Role: "user", Content: content}},
		Stream: req.Stream, StreamOptions: req.StreamOptions, MaxTokens: req.MaxTokens}, body)
	if msg != "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", msg)
		return
	}
	if rp.status != 0 {
		simulatedError(w, rp.status, rp.model)
		return
	}
	rp.id = "cmpl-" + strings.TrimPrefix(rp.id, "chatcmpl-")
	if rp.kind == tools { // plan leaves a tool call's length alone
		rp.finish = "stop"
		if req.MaxTokens != nil && *req.MaxTokens < rp.content {
			rp.content, rp.finish = *req.MaxTokens, "length"
		}
	}
	if rp.kind == reasoning || rp.kind == tools {
		rp.kind = normal
	}
	if req.Stream {
		s.streamCompletion(w, r, rp)
	} else {
		s.wholeCompletion(w, r, rp)
	}
}

// promptText is a prompt's text: a string, or an array of strings joined
// by newlines.
func promptText(raw json.RawMessage) (string, bool) {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return one, one != ""
	}
	var many []string
	if json.Unmarshal(raw, &many) != nil || len(many) == 0 {
		return "", false
	}
	return strings.Join(many, "\n"), true
}

// appendCompletion appends a text_completion object up to its choice's
// text: the caller appends the text and calls endCompletion.
func (rp *reply) appendCompletion(b []byte) []byte {
	b = rp.appendHead(b, "text_completion")
	return append(b, `[{"text":"`...)
}

func endCompletion(b []byte, finish string) []byte {
	b = append(b, `","index":0,"logprobs":null,"finish_reason":`...)
	if finish == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = append(b, finish...)
		b = append(b, '"')
	}
	return append(b, "}]"...)
}

func (s *Simulator) streamCompletion(w http.ResponseWriter, r *http.Request, rp *reply) {
	e, p := startEvents(w, r)
	defer p.stop()
	if e == nil {
		return
	}
	if rp.kind == stallFirst {
		<-p.done
		return
	}
	chunk := func(i int, finish string) bool {
		e.buf = rp.appendCompletion(append(e.buf[:0], "data: "...))
		if i >= 0 {
			e.buf = rp.appendContent(e.buf, i)
		}
		e.buf = endCompletion(e.buf, finish)
		e.buf = append(e.buf, "}\n\n"...)
		return e.send()
	}
	for i, n := 0, rp.sent(); i < n; i++ {
		if !p.wait(rp.pause()) || !chunk(i, "") {
			return
		}
	}
	if e.fault(rp, p, errorEventSE, garbageSE+doneSE) {
		return
	}
	if !chunk(-1, rp.finish) {
		return
	}
	e.endStream(rp, func(b []byte) []byte { return rp.appendHead(append(b, "data: "...), "text_completion") })
}

func (s *Simulator) wholeCompletion(w http.ResponseWriter, r *http.Request, rp *reply) {
	whole(w, r, rp, func() {
		writeError(w, http.StatusInternalServerError, "server_error", "", "simulated upstream error")
	}, func() []byte {
		b := rp.appendCompletion(make([]byte, 0, 256+16*rp.content))
		for i := 0; i < rp.content; i++ {
			b = rp.appendContent(b, i)
		}
		b = endCompletion(b, rp.finish)
		b = append(b, `,"usage":`...)
		b = rp.appendUsage(b)
		return append(b, "}\n"...)
	})
}
