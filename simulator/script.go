package simulator

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// kind is the behaviour a model name selects.
type kind uint8

const (
	normal kind = iota
	reasoning
	tools
	errorEvent
	reset
	stall
	stallFirst
	garbage
	noDone
	stamp
)

// faultAfter is how many content chunks the failing behaviours send before
// they fail, so a client has started relaying when the fault hits.
const faultAfter = 3

// filler follows the echoed prompt. Its multi-byte words come early so even
// a short default reply makes clients handle UTF-8 split across chunks.
var filler = []string{
	"This", "is", "naïve", "流式", "text", "🙂", "from", "llm-simulator,",
	"a", "simulator,", "not", "a", "model.", "It", "streams", "one",
	"word", "per", "chunk", "until", "the", "reply", "is", "done.",
}

// reasoningPieces are the reasoning_content deltas of sim-reasoning.
var reasoningPieces = []string{"Simulated ", "reasoning: ", "echo ", "the ", "prompt. "}

// toolDeltas are the deltas of sim-tools after the role chunk. The argument
// pieces concatenate to {"city":"Paris"}.
var toolDeltas = []string{
	`{"tool_calls":[{"index":0,"id":"call_sim_1","type":"function","function":{"name":"get_weather","arguments":""}}]}`,
	`{"tool_calls":[{"index":0,"function":{"arguments":"{\""}}]}`,
	`{"tool_calls":[{"index":0,"function":{"arguments":"city"}}]}`,
	`{"tool_calls":[{"index":0,"function":{"arguments":"\":\""}}]}`,
	`{"tool_calls":[{"index":0,"function":{"arguments":"Paris"}}]}`,
	`{"tool_calls":[{"index":0,"function":{"arguments":"\"}"}}]}`,
}

const (
	toolMessage  = `{"role":"assistant","content":null,"tool_calls":[{"id":"call_sim_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}`
	errorEventSE = "data: {\"error\":{\"message\":\"simulated upstream error\",\"type\":\"server_error\",\"code\":null}}\n\n"
	garbageSE    = "data: {not json\n\n"
	doneSE       = "data: [DONE]\n\n"
)

// reply is one planned answer.
type reply struct {
	kind     kind
	status   int // sim-error-<status>: answer this status and nothing else
	model    string
	id       string
	created  int64
	interval time.Duration
	jitter   time.Duration // each pause is interval plus up to this much
	content  int           // content chunks
	finish   string        // finish_reason of the last choice chunk
	usage    bool          // stream_options.include_usage
	prompt   int           // prompt_tokens
	words    []string
}

// spec is what a model name asks for.
type spec struct {
	kind     kind
	status   int
	interval time.Duration // with slow
	slow     bool
	chunks   int // > 0 overrides Config.Chunks
}

var fixedKinds = map[string]kind{
	"sim-reasoning":   reasoning,
	"sim-tools":       tools,
	"sim-error-event": errorEvent,
	"sim-reset":       reset,
	"sim-stall":       stall,
	"sim-stall-first": stallFirst,
	"sim-garbage":     garbage,
	"sim-no-done":     noDone,
	"sim-stamp":       stamp,
}

// parseModel reads a model name. A malformed family name (sim-long-x,
// sim-error-200) is an ordinary name: it is echoed, not rejected.
func parseModel(name string) spec {
	if k, ok := fixedKinds[name]; ok {
		return spec{kind: k}
	}
	if v, ok := strings.CutPrefix(name, "sim-error-"); ok {
		if n, ok := number(v); ok && n >= 400 && n <= 599 {
			return spec{status: n}
		}
	}
	if v, ok := strings.CutPrefix(name, "sim-slow-"); ok {
		if n, ok := number(v); ok {
			return spec{slow: true, interval: time.Duration(min(n, int(MaxSlow/time.Millisecond))) * time.Millisecond}
		}
	}
	if v, ok := strings.CutPrefix(name, "sim-long-"); ok {
		if n, ok := number(v); ok && n > 0 {
			return spec{chunks: min(n, MaxLong)}
		}
	}
	return spec{}
}

// number parses plain decimal digits; strconv.Atoi would also take signs.
// Overlong numbers saturate, since every caller caps the value anyway.
func number(s string) (int, bool) {
	if s == "" {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < 1<<40 {
			n = n*10 + int(c-'0')
		}
	}
	return n, true
}

func (rp *reply) apply(sp spec) {
	rp.kind, rp.status = sp.kind, sp.status
	if sp.slow {
		rp.interval, rp.jitter = sp.interval, 0
	}
	if sp.chunks > 0 {
		rp.content = sp.chunks
	}
	if sp.kind == tools {
		rp.finish = "tool_calls"
	}
}

// pause is how long to wait before the next chunk.
func (rp *reply) pause() time.Duration {
	if rp.jitter <= 0 {
		return rp.interval
	}
	return rp.interval + rand.N(rp.jitter+1)
}

// word is the i-th word of the reply: "Echo:", the prompt's words, then the
// filler over and over.
func (rp *reply) word(i int) string {
	if i < len(rp.words) {
		return rp.words[i]
	}
	return filler[(i-len(rp.words))%len(filler)]
}

// generated is completion_tokens: the chunks that carry generated text.
func (rp *reply) generated() int {
	switch rp.kind {
	case tools:
		return len(toolDeltas)
	case reasoning:
		return len(reasoningPieces) + rp.content
	}
	return rp.content
}

// sent is how many content chunks go out before the fault, if any.
func (rp *reply) sent() int {
	switch rp.kind {
	case tools:
		return 0
	case errorEvent, reset, stall, garbage:
		return min(rp.content, faultAfter)
	}
	return rp.content
}

// appendContent appends the text of content chunk i, JSON-escaped.
func (rp *reply) appendContent(b []byte, i int) []byte {
	if rp.kind == stamp {
		// Read the clock as late as possible: the stamp is the send time.
		b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
	} else {
		b = appendJSONText(b, rp.word(i))
	}
	return append(b, ' ')
}

func (rp *reply) appendUsage(b []byte) []byte {
	c := rp.generated()
	b = append(b, `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(rp.prompt), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(c), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(rp.prompt+c), 10)
	return append(b, '}')
}

// appendHead appends the fields every object of the reply starts with.
func (rp *reply) appendHead(b []byte, object string) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, rp.id...)
	b = append(b, `","object":"`...)
	b = append(b, object...)
	b = append(b, `","created":`...)
	b = strconv.AppendInt(b, rp.created, 10)
	b = append(b, `,"model":"`...)
	b = appendJSONText(b, rp.model)
	return append(b, `","choices":`...)
}

// pacer waits between chunks and gives up the moment the client leaves, so
// an abandoned stream never sleeps on. It reuses one timer per request.
type pacer struct {
	done <-chan struct{}
	t    *time.Timer
}

func (p *pacer) wait(d time.Duration) bool {
	if d <= 0 {
		select {
		case <-p.done:
			return false
		default:
			return true
		}
	}
	if p.t == nil {
		p.t = time.NewTimer(d)
	} else {
		p.t.Reset(d) // since Go 1.23 Reset leaves no stale tick behind
	}
	select {
	case <-p.t.C:
		return true
	case <-p.done:
		return false
	}
}

func (p *pacer) stop() {
	if p.t != nil {
		p.t.Stop()
	}
}

// events writes server-sent events, flushing each one. Every event is
// built in buf, which is reused, so a chunk costs no allocation.
type events struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	buf  []byte
	head []byte // `data: {"id":...,"choices":`
	tail []byte // what closes a chunk: `,"usage":null}` or `}`, then "\n\n"
}

// send writes buf. False means the client is gone.
func (e *events) send() bool {
	if _, err := e.w.Write(e.buf); err != nil {
		return false
	}
	return e.flush()
}

// flush pushes out what is buffered. A writer that cannot flush at all still
// gets the stream, only less promptly, so that is not a failure.
func (e *events) flush() bool {
	err := e.rc.Flush()
	return err == nil || errors.Is(err, http.ErrNotSupported)
}

func (e *events) raw(s string) bool {
	e.buf = append(e.buf[:0], s...)
	return e.send()
}

// begin starts a choice chunk; the caller appends the delta and calls end.
func (e *events) begin() {
	e.buf = append(e.buf[:0], e.head...)
	e.buf = append(e.buf, `[{"index":0,"delta":`...)
}

func (e *events) end(finish string) bool {
	e.buf = append(e.buf, `,"logprobs":null,"finish_reason":`...)
	if finish == "" {
		e.buf = append(e.buf, "null"...)
	} else {
		e.buf = append(e.buf, '"')
		e.buf = append(e.buf, finish...)
		e.buf = append(e.buf, '"')
	}
	e.buf = append(e.buf, "}]"...)
	e.buf = append(e.buf, e.tail...)
	return e.send()
}

func (s *Simulator) stream(w http.ResponseWriter, r *http.Request, rp *reply) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)

	p := pacer{done: r.Context().Done()}
	defer p.stop()
	e := &events{w: w, rc: http.NewResponseController(w), buf: make([]byte, 0, 512)}
	e.head = rp.appendHead(append(make([]byte, 0, 128), "data: "...), "chat.completion.chunk")
	if rp.usage {
		e.tail = []byte(",\"usage\":null}\n\n")
	} else {
		e.tail = []byte("}\n\n")
	}
	if !e.flush() {
		return
	}
	if rp.kind == stallFirst {
		<-p.done
		return
	}

	e.begin()
	e.buf = append(e.buf, `{"role":"assistant","content":""}`...)
	if !e.end("") {
		return
	}
	switch rp.kind {
	case reasoning:
		for _, piece := range reasoningPieces {
			if !p.wait(rp.pause()) {
				return
			}
			e.begin()
			e.buf = append(e.buf, `{"reasoning_content":"`...)
			e.buf = appendJSONText(e.buf, piece)
			e.buf = append(e.buf, `"}`...)
			if !e.end("") {
				return
			}
		}
	case tools:
		for _, d := range toolDeltas {
			if !p.wait(rp.pause()) {
				return
			}
			e.begin()
			e.buf = append(e.buf, d...)
			if !e.end("") {
				return
			}
		}
	}
	for i, n := 0, rp.sent(); i < n; i++ {
		if !p.wait(rp.pause()) {
			return
		}
		e.begin()
		e.buf = append(e.buf, `{"content":"`...)
		e.buf = rp.appendContent(e.buf, i)
		e.buf = append(e.buf, `"}`...)
		if !e.end("") {
			return
		}
	}

	if e.fault(rp, &p, errorEventSE, garbageSE+doneSE) {
		return
	}

	e.begin()
	e.buf = append(e.buf, "{}"...)
	if !e.end(rp.finish) {
		return
	}
	e.endStream(rp, func(b []byte) []byte { return append(b, e.head...) })
}

// endStream sends what closes a chat or legacy completion stream: the
// usage chunk when the request asked for it (head writes its start, up
// to "choices":), then [DONE] unless the reply leaves it out.
func (e *events) endStream(rp *reply, head func([]byte) []byte) {
	if rp.usage {
		e.buf = append(head(e.buf[:0]), `[],"usage":`...)
		e.buf = rp.appendUsage(e.buf)
		e.buf = append(e.buf, "}\n\n"...)
		if !e.send() {
			return
		}
	}
	if rp.kind != noDone {
		e.raw(doneSE)
	}
}

// complete answers a non-streaming request after as long as streaming the
// same reply would have taken.
func (s *Simulator) complete(w http.ResponseWriter, r *http.Request, rp *reply) {
	p := pacer{done: r.Context().Done()}
	defer p.stop()
	if !rp.wholeStart(w, &p) {
		return
	}
	b := rp.appendHead(make([]byte, 0, 256+16*rp.content), "chat.completion")
	b = append(b, `[{"index":0,"message":`...)
	if rp.kind == tools {
		b = append(b, toolMessage...)
	} else {
		b = append(b, `{"role":"assistant","content":"`...)
		for i := 0; i < rp.content; i++ {
			b = rp.appendContent(b, i)
		}
		b = append(b, '"')
		if rp.kind == reasoning {
			b = append(b, `,"reasoning_content":"`...)
			for _, piece := range reasoningPieces {
				b = appendJSONText(b, piece)
			}
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, `,"logprobs":null,"finish_reason":"`...)
	b = append(b, rp.finish...)
	b = append(b, `"}],"usage":`...)
	b = rp.appendUsage(b)
	b = append(b, "}\n"...)
	rp.writeWhole(w, &p, b)
}

// wholeStart plays what a whole reply does before its body: nothing at all
// (sim-stall-first), a 500 (sim-error-event), the time streaming it would
// have taken, a body that is not JSON (sim-garbage). It tells whether the
// body is to be written.
func (rp *reply) wholeStart(w http.ResponseWriter, p *pacer) bool {
	switch rp.kind {
	case stallFirst:
		<-p.done
		return false
	case errorEvent:
		writeError(w, http.StatusInternalServerError, "server_error", "", "simulated upstream error")
		return false
	}
	if !p.wait((rp.interval + rp.jitter/2) * time.Duration(rp.generated())) {
		return false
	}
	w.Header().Set("Content-Type", "application/json")
	if rp.kind == garbage {
		w.Write([]byte("{not json\n"))
		return false
	}
	return true
}

// writeWhole writes a whole reply's body b, or half of it and then breaks
// the connection (sim-reset) or goes silent (sim-stall).
func (rp *reply) writeWhole(w http.ResponseWriter, p *pacer, b []byte) {
	switch rp.kind {
	case reset, stall:
		w.Write(b[:len(b)/2])
		http.NewResponseController(w).Flush()
		if rp.kind == reset {
			panic(http.ErrAbortHandler)
		}
		<-p.done
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

// appendJSONText appends s as the inside of a JSON string. It exists because
// strconv.AppendQuote speaks Go, not JSON (\x00, \a, \U0001f642), and
// json.Marshal allocates per call. Invalid UTF-8 becomes U+FFFD, and
// U+2028/U+2029 are escaped as encoding/json does, for JavaScript readers.
func appendJSONText(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(b, s[start:]...)
}
