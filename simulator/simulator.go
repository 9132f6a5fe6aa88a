// Package simulator is a deterministic, OpenAI-compatible chat-completions
// upstream. It is a simulator, not a model: it understands nothing and
// generates nothing. It answers with text derived mechanically from the last
// user message ("Echo: " and the prompt's words, then fixed filler words,
// one word per chunk), so the example configuration runs with no API key and
// tests and benchmarks get a fast upstream whose bytes they can predict.
//
// It serves these routes, matched by path suffix so it works under any prefix:
//
//	POST <prefix>/chat/completions  streamed (stream:true) or whole replies
//	GET  <prefix>/models            the default model and the special names
//	POST <prefix>/embeddings, <prefix>/completions, <prefix>/messages (see api.go)
//	     <prefix>/responses[/{id}]    the Responses API (see responses.go)
//
// The requested model name picks a behaviour, so a client can provoke each
// failure a real upstream has without a real upstream: [Models] lists them
// (the README's table is checked against it), and any other name gets a
// normal reply that echoes the model name.
//
// A request that sets max_tokens or
// max_completion_tokens below the reply's length gets that many content
// chunks and finish_reason "length". Usage counts words, not tokens:
// prompt_tokens is the number of words in all messages and completion_tokens
// the number of chunks that carried generated text (reasoning, content or a
// piece of a tool call).
//
// sim-reset aborts by panicking with [http.ErrAbortHandler], which net/http
// (and Caddy, which re-panics it) treats as "close the connection without
// ending the response": the client sees a truncated body, not a clean end.
// Non-streaming requests get the nearest whole-reply equivalent of each
// behaviour: sim-error-event answers 500, sim-reset and sim-stall send half a
// body and then abort or go silent, sim-stall-first sends nothing at all and
// sim-garbage sends a body that is not JSON.
package simulator

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
)

const (
	// DefaultModel is the model reported when neither the request nor the
	// Config names one.
	DefaultModel = "llm-simulator"
	// DefaultChunks is the number of content chunks of a reply when the
	// Config does not say.
	DefaultChunks = 20
	// MaxSlow caps the pause a sim-slow-<ms> name can ask for.
	MaxSlow = 10 * time.Second
	// MaxLong caps the chunk count a sim-long-<n> name can ask for.
	MaxLong = 1_000_000

	// maxBody keeps a careless client from making the simulator buffer
	// without bound; real prompts are far smaller.
	maxBody = 32 << 20
	// modelsCreated is a fixed date so /models is byte-for-byte stable.
	modelsCreated = 1735689600 // 2025-01-01
)

// Config tunes a Simulator. The zero Config is valid.
type Config struct {
	// ChunkInterval is the pause before each generated chunk. Zero means no
	// pause at all: the Caddy wrapper, not this package, picks a realistic
	// default, so tests and benchmarks can run at full speed.
	ChunkInterval time.Duration
	// ChunkIntervalMax, when above ChunkInterval, makes each pause a
	// uniformly random length between the two, as a real model's pacing
	// varies. The text stays deterministic; only its timing does not.
	ChunkIntervalMax time.Duration
	// Chunks is the number of content chunks per reply; <= 0 means
	// DefaultChunks.
	Chunks int
	// Model is listed by /models and reported when a request names none;
	// "" means DefaultModel.
	Model string
}

// Model describes one model name with a special behaviour.
type Model struct {
	// Name is the name or, for a family, its pattern (e.g. sim-error-<status>).
	Name string
	// Example is a concrete name of that family; /models lists it.
	Example string
	// Behaviour says what the simulator does when asked for it.
	Behaviour string
}

// Models lists the model names with special behaviours. Any other name gets
// a normal reply that echoes it.
var Models = []Model{
	{"sim-reasoning", "sim-reasoning", "reasoning_content deltas (DeepSeek style), then the content"},
	{"sim-tools", "sim-tools", `a get_weather tool call whose arguments {"city":"Paris"} stream in pieces; finish_reason "tool_calls"`},
	{"sim-error-<status>", "sim-error-429", "answers that HTTP status (400–599) at once with an OpenAI error body; 429 carries Retry-After: 1"},
	{"sim-error-event", "sim-error-event", "a few chunks, then an in-stream {\"error\":...} event and the end of the body, without [DONE]"},
	{"sim-reset", "sim-reset", "a few chunks, then the connection is aborted (the client sees a broken body)"},
	{"sim-stall", "sim-stall", "a few chunks, then nothing until the client goes away"},
	{"sim-stall-first", "sim-stall-first", "status and headers, then nothing until the client goes away"},
	{"sim-garbage", "sim-garbage", "a few chunks, then a data line that is not JSON, then [DONE]"},
	{"sim-no-done", "sim-no-done", "a complete stream that ends without the [DONE] line"},
	{"sim-stamp", "sim-stamp", "each content chunk is its send time in Unix nanoseconds and a space, to measure added latency"},
	{"sim-slow-<ms>", "sim-slow-500", "a normal reply with that many milliseconds between chunks (at most 10000)"},
	{"sim-long-<n>", "sim-long-10000", "a normal reply of n content chunks (at most 1000000)"},
}

// Simulator is an http.Handler that plays an OpenAI-compatible upstream. It
// is safe for concurrent use.
type Simulator struct {
	cfg    Config
	models []byte // the /models body; fixed, so built once
}

// New returns a Simulator for cfg, with defaults applied.
func New(cfg Config) *Simulator {
	if cfg.Chunks <= 0 {
		cfg.Chunks = DefaultChunks
	}
	if cfg.Model == "" {
		cfg.Model = DefaultModel
	}
	if cfg.ChunkInterval < 0 {
		cfg.ChunkInterval = 0
	}
	if cfg.ChunkIntervalMax < cfg.ChunkInterval {
		cfg.ChunkIntervalMax = cfg.ChunkInterval
	}
	return &Simulator{cfg: cfg, models: modelList(cfg.Model)}
}

func modelList(def string) []byte {
	b := []byte(`{"object":"list","data":[`)
	entry := func(id string) {
		b = append(b, `{"id":"`...)
		b = appendJSONText(b, id)
		b = append(b, `","object":"model","created":`...)
		b = strconv.AppendInt(b, modelsCreated, 10)
		b = append(b, `,"owned_by":"llm-simulator"},`...)
	}
	entry(def)
	for _, m := range Models {
		if m.Example != def {
			entry(m.Example)
		}
	}
	b[len(b)-1] = ']'
	return append(b, "}\n"...)
}

// ServeHTTP answers <prefix>/chat/completions and <prefix>/models.
func (s *Simulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case strings.HasSuffix(p, "/chat/completions"):
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "",
				"method "+r.Method+" not allowed on "+p+": use POST")
			return
		}
		s.chat(w, r)
	case isResponses(p):
		s.responses(w, r)
	case strings.HasSuffix(p, "/models"):
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "",
				"method "+r.Method+" not allowed on "+p+": use GET")
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(s.models)))
		w.Write(s.models)
	case strings.HasSuffix(p, "/embeddings"), strings.HasSuffix(p, "/completions"), strings.HasSuffix(p, "/messages"):
		s.api(w, r, p)
	default:
		writeError(w, http.StatusNotFound, "invalid_request_error", "",
			"unknown path "+p+": the simulator serves .../chat/completions, .../models, .../embeddings, .../completions and .../messages")
	}
}

// chatRequest is the part of a chat-completions request the simulator reads.
type chatRequest struct {
	Model         string        `json:"model"`
	Messages      []chatMessage `json:"messages"`
	Stream        bool          `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int `json:"max_tokens"`
	MaxCompletionTokens *int `json:"max_completion_tokens"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type contentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

func (s *Simulator) chat(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	body, ok := readJSON(r, &req, openAIFail(w))
	if !ok {
		return
	}
	rp, msg := s.plan(&req, body)
	if msg != "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", msg)
		return
	}
	if rp.status != 0 {
		simulatedError(w, rp.status, rp.model)
		return
	}
	if req.Stream {
		s.stream(w, r, rp)
	} else {
		s.complete(w, r, rp)
	}
}

// plan turns a decoded request into the reply to play. A non-empty string
// is why the request is invalid.
func (s *Simulator) plan(req *chatRequest, body []byte) (*reply, string) {
	if len(req.Messages) == 0 {
		return nil, "messages: must be a non-empty array"
	}
	rp := &reply{
		model:    req.Model,
		id:       requestID(body),
		created:  time.Now().Unix(),
		interval: s.cfg.ChunkInterval,
		jitter:   s.cfg.ChunkIntervalMax - s.cfg.ChunkInterval,
		content:  s.cfg.Chunks,
		finish:   "stop",
		usage:    req.Stream && req.StreamOptions != nil && req.StreamOptions.IncludeUsage,
	}
	if rp.model == "" {
		rp.model = s.cfg.Model
	}
	lastUser := ""
	for i, m := range req.Messages {
		text, ok := messageText(m.Content)
		if !ok {
			return nil, "messages[" + strconv.Itoa(i) + "].content: must be a string or an array of content parts"
		}
		rp.prompt += countWords(text)
		if m.Role == "user" {
			lastUser = text
		}
	}
	rp.words = append([]string{"Echo:"}, strings.Fields(lastUser)...)

	rp.apply(parseModel(rp.model))

	limit, name := req.MaxCompletionTokens, "max_completion_tokens"
	if limit == nil || (req.MaxTokens != nil && *req.MaxTokens < *limit) {
		limit, name = req.MaxTokens, "max_tokens"
	}
	if limit != nil {
		if *limit < 1 {
			return nil, name + ": must be at least 1"
		}
		if *limit < rp.content && rp.kind != tools {
			rp.content, rp.finish = *limit, "length"
		}
	}
	return rp, ""
}

// messageText is the text of a message's content: a string, an array of
// parts (only text parts count) or null.
func messageText(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", true
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var parts []contentPart
	if json.Unmarshal(raw, &parts) != nil {
		return "", false
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			if b.Len() > 0 {
				b.WriteByte('\n') // keep words of adjacent parts apart
			}
			b.WriteString(p.Text)
		}
	}
	return b.String(), true
}

// countWords counts as strings.Fields would, without building the slice.
func countWords(s string) int {
	n, in := 0, false
	for _, r := range s {
		if unicode.IsSpace(r) {
			in = false
		} else if !in {
			in = true
			n++
		}
	}
	return n
}

// requestID derives the completion id from the request body (FNV-1a), so the
// same request replays the same bytes apart from "created".
func requestID(body []byte) string {
	h := uint64(14695981039346656037)
	for _, c := range body {
		h ^= uint64(c)
		h *= 1099511628211
	}
	b := make([]byte, 0, 29)
	b = append(b, "chatcmpl-sim-"...)
	const digits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, digits[(h>>shift)&0xf])
	}
	return string(b)
}

// simulatedError answers a sim-error-<status> request the way OpenAI reports
// that status.
func simulatedError(w http.ResponseWriter, status int, model string) {
	typ, code := "invalid_request_error", ""
	switch {
	case status == http.StatusUnauthorized:
		typ, code = "authentication_error", "invalid_api_key"
	case status == http.StatusForbidden:
		typ = "permission_error"
	case status == http.StatusNotFound:
		typ, code = "not_found_error", "model_not_found"
	case status == http.StatusTooManyRequests:
		typ, code = "rate_limit_exceeded", "rate_limit_exceeded"
		w.Header().Set("Retry-After", "1")
	case status >= 500:
		typ = "server_error"
	}
	writeError(w, status, typ, code,
		"simulated "+strconv.Itoa(status)+" "+http.StatusText(status)+" error (model "+model+")")
}

// writeError writes an OpenAI error body. An empty code is null.
func writeError(w http.ResponseWriter, status int, typ, code, msg string) {
	b := make([]byte, 0, 96+len(msg))
	b = append(b, `{"error":{"message":"`...)
	b = appendJSONText(b, msg)
	b = append(b, `","type":"`...)
	b = appendJSONText(b, typ)
	b = append(b, `","param":null,"code":`...)
	if code == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = appendJSONText(b, code)
		b = append(b, '"')
	}
	b = append(b, "}}\n"...)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
