package frame

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// recorder counts flushes and checks each write is followed by one.
type recorder struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	writes  int
	flushes int
	fail    error
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return 0, r.fail
	}
	r.writes++
	return r.buf.Write(p)
}

func (r *recorder) Flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushes++
	return nil
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

var stream = []chunk.Chunk{
	{Raw: []byte(`{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`), HasChoices: true, Model: "m"},
	{Raw: []byte(`{"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}`), HasChoices: true, Reasoning: raw(`"think"`)},
	{Raw: []byte(`{"choices":[{"index":0,"delta":{"content":"Hel"}}]}`), HasChoices: true, Content: raw(`"Hel"`)},
	{Raw: []byte(`{"choices":[{"index":0,"delta":{"content":"lo \"流\"\n"}}]}`), HasChoices: true, Content: raw(`"lo \"流\"\n"`)},
	{Raw: []byte(`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}`), HasChoices: true, ToolCalls: raw(`[{"index":0}]`)},
	{Raw: []byte(`{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`), HasChoices: true, FinishReason: "stop"},
	{Raw: []byte(`{"choices":[],"usage":{"total_tokens":3}}`), Usage: raw(`{"total_tokens":3}`)},
}

func TestWriterFramings(t *testing.T) {
	tests := []struct {
		format       Format
		includeUsage bool
		want         string
	}{
		{OpenAI, false, `id: s1
data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}

data: {"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}

data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}

data: {"choices":[{"index":0,"delta":{"content":"lo \"流\"\n"}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}

data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

data: [DONE]

`},
		{OpenAI, true, `id: s1
data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}

data: {"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}

data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}

data: {"choices":[{"index":0,"delta":{"content":"lo \"流\"\n"}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}

data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

data: {"choices":[],"usage":{"total_tokens":3}}

data: [DONE]

`},
		{SSE, false, `id: s1
data: {"reasoning":"think"}

data: {"content":"Hel"}

data: {"content":"lo \"流\"\n"}

data: {"tool_calls":[{"index":0}]}

event: done
data: {"finish_reason":"stop","usage":{"total_tokens":3},"model":"m"}

`},
		{NDJSON, false, `{"reasoning":"think"}
{"content":"Hel"}
{"content":"lo \"流\"\n"}
{"tool_calls":[{"index":0}]}
{"done":true,"finish_reason":"stop","usage":{"total_tokens":3},"model":"m"}
`},
		{Text, false, "Hello \"流\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.format.String(), func(t *testing.T) {
			rec := &recorder{}
			fw := NewWriter(rec, rec.Flush, tt.format)
			fw.IncludeUsage = tt.includeUsage
			fw.StreamID = "s1"
			if err := fw.Start(); err != nil {
				t.Fatal(err)
			}
			for i := range stream {
				if err := fw.Chunk(&stream[i]); err != nil {
					t.Fatal(err)
				}
			}
			if err := fw.Done(); err != nil {
				t.Fatal(err)
			}
			if got := rec.String(); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
			if rec.flushes < rec.writes {
				t.Errorf("%d writes but %d flushes: every frame must be flushed", rec.writes, rec.flushes)
			}
			if !fw.WroteDelta() {
				t.Error("WroteDelta false after content")
			}
		})
	}
}

func TestWriterFail(t *testing.T) {
	e := &chunk.Error{Message: "boom", Type: "server_error"}
	tests := []struct {
		format Format
		want   string
	}{
		{OpenAI, "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n"},
		{SSE, "event: error\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n"},
		{NDJSON, "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n"},
	}
	for _, tt := range tests {
		rec := &recorder{}
		fw := NewWriter(rec, rec.Flush, tt.format)
		if err := fw.Fail(e); err != nil {
			t.Fatal(err)
		}
		if got := rec.String(); got != tt.want {
			t.Errorf("%s: got %q want %q", tt.format, got, tt.want)
		}
		if strings.Contains(rec.String(), "[DONE]") || strings.Contains(rec.String(), "done") {
			t.Errorf("%s: error signal looks like an end", tt.format)
		}
	}
	rec := &recorder{}
	if err := NewWriter(rec, rec.Flush, Text).Fail(e); !errors.Is(err, ErrAbort) {
		t.Errorf("text framing Fail = %v, want ErrAbort", err)
	}
}

func TestWriterCompactsMultilineJSON(t *testing.T) {
	rec := &recorder{}
	fw := NewWriter(rec, rec.Flush, OpenAI)
	c := chunk.Chunk{Raw: []byte("{\n \"choices\": [\r\n]}"), HasChoices: true}
	if err := fw.Chunk(&c); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.String(), "data: {\"choices\":[]}\n\n"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
}

func TestWriterDownstreamError(t *testing.T) {
	rec := &recorder{fail: errors.New("broken pipe")}
	fw := NewWriter(rec, rec.Flush, SSE)
	err := fw.Chunk(&stream[2])
	var de *DownstreamError
	if !errors.As(err, &de) {
		t.Fatalf("got %v, want a DownstreamError", err)
	}
}

func TestHeartbeat(t *testing.T) {
	for _, f := range []Format{OpenAI, SSE, NDJSON} {
		rec := &recorder{}
		fw := NewWriter(rec, rec.Flush, f)
		fw.KeepAlive(5 * time.Millisecond)
		deadline := time.Now().Add(5 * time.Second)
		for strings.Count(rec.String(), "\n") < 4 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		fw.Close()
		got := rec.String()
		n := len(got)
		time.Sleep(20 * time.Millisecond)
		if rec.String() != got[:n] {
			t.Errorf("%s: heartbeat after Close", f)
		}
		want := ": keepalive\n" // a comment line ends no event
		if f == NDJSON {
			want = "\n"
		}
		if got == "" || strings.ReplaceAll(got, want, "") != "" {
			t.Errorf("%s: heartbeats %q, want repeats of %q", f, got, want)
		}
	}
	// Text has no in-band keepalive.
	rec := &recorder{}
	fw := NewWriter(rec, rec.Flush, Text)
	fw.KeepAlive(time.Millisecond)
	time.Sleep(10 * time.Millisecond)
	fw.Close()
	if rec.String() != "" {
		t.Errorf("text heartbeat wrote %q", rec.String())
	}
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		query, accept string
		def           Format
		want          Format
		err           bool
	}{
		{"", "", OpenAI, OpenAI, false},
		{"sse", "application/x-ndjson", OpenAI, SSE, false},
		{"ndjson", "", OpenAI, NDJSON, false},
		{"bogus", "", OpenAI, 0, true},
		{"", "application/x-ndjson", OpenAI, NDJSON, false},
		{"", "text/plain", SSE, Text, false},
		{"", "text/event-stream", SSE, SSE, false},
		{"", "text/event-stream", OpenAI, OpenAI, false},
		{"", "text/event-stream", NDJSON, SSE, false},
		{"", "application/json, text/plain;q=0.5", OpenAI, Text, false},
		{"", "*/*", NDJSON, NDJSON, false},
	}
	for _, tt := range tests {
		got, err := Negotiate(tt.query, tt.accept, tt.def)
		if (err != nil) != tt.err || (!tt.err && got != tt.want) {
			t.Errorf("Negotiate(%q, %q, %s) = %s, %v; want %s, err %v", tt.query, tt.accept, tt.def, got, err, tt.want, tt.err)
		}
	}
}

func TestSetHeaders(t *testing.T) {
	h := http.Header{}
	SetHeaders(h, NDJSON)
	if h.Get("Content-Type") != "application/x-ndjson" || h.Get("Cache-Control") != "no-cache" || h.Get("X-Accel-Buffering") != "no" ||
		h.Get("Incremental") != "?1" {
		t.Errorf("headers %v", h)
	}
	// Only where Caddy's encode would not stream by itself (see SetHeaders).
	for f, want := range map[Format]string{OpenAI: "", SSE: "", Text: "?1"} {
		h := http.Header{}
		SetHeaders(h, f)
		if got := h.Get("Incremental"); got != want {
			t.Errorf("%s: Incremental %q, want %q", f, got, want)
		}
	}
}

func BenchmarkWriterChunk(b *testing.B) {
	c := stream[2]
	for _, f := range []Format{OpenAI, SSE, NDJSON, Text} {
		b.Run(f.String(), func(b *testing.B) {
			fw := NewWriter(discard{}, func() error { return nil }, f)
			b.ReportAllocs()
			for b.Loop() {
				if err := fw.Chunk(&c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWriterToolCalls: a tool-call delta is an array, compacted on
// every chunk; that must cost no allocation either.
func BenchmarkWriterToolCalls(b *testing.B) {
	c := chunk.Chunk{HasChoices: true, ToolCalls: raw(`[{"index":0,"function":{"arguments":"{\"location\": \"Par"}}]`)}
	for _, f := range []Format{SSE, NDJSON} {
		b.Run(f.String(), func(b *testing.B) {
			fw := NewWriter(discard{}, func() error { return nil }, f)
			b.ReportAllocs()
			for b.Loop() {
				if err := fw.Chunk(&c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestTextContentParts checks that the text framing reads content given as
// an array of parts, and refuses content that is no text at all rather than
// dropping it.
func TestTextContentParts(t *testing.T) {
	rec := &recorder{}
	fw := NewWriter(rec, rec.Flush, Text)
	parts := chunk.Chunk{Content: []byte(`[{"type":"text","text":"Hel"},{"type":"image_url","image_url":{}},{"text":"lo"}]`)}
	if err := fw.Chunk(&parts); err != nil {
		t.Fatal(err)
	}
	if got := rec.String(); got != "Hello" {
		t.Errorf("got %q, want %q", got, "Hello")
	}
	for _, bad := range []string{`5`, `{"text":"x"}`, `[1]`} {
		if err := fw.Chunk(&chunk.Chunk{Content: []byte(bad)}); !errors.Is(err, ErrContent) {
			t.Errorf("content %s: err %v, want ErrContent", bad, err)
		}
	}
}

// TestDoneStringsAreJSON: the done event carries the upstream's finish
// reason and model; whatever bytes they hold (control characters, DEL,
// quotes, invalid UTF-8), the event's data is JSON that gives them back.
func TestDoneStringsAreJSON(t *testing.T) {
	finish, model := "st\a\x7f\x00op\"\\\n", "m\x01</script>\u2028"
	for _, f := range []Format{SSE, NDJSON} {
		rec := &recorder{}
		fw := NewWriter(rec, rec.Flush, f)
		c := chunk.Chunk{Content: raw(`"x"`), HasChoices: true, FinishReason: finish, Model: model}
		if err := fw.Chunk(&c); err != nil {
			t.Fatal(err)
		}
		if err := fw.Done(); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(rec.String(), "\n"), "\n")
		last := strings.TrimPrefix(lines[len(lines)-1], "data: ")
		if f == SSE {
			last = strings.TrimPrefix(lines[len(lines)-2], "data: ")
		}
		var done struct {
			FinishReason string `json:"finish_reason"`
			Model        string `json:"model"`
		}
		if err := json.Unmarshal([]byte(last), &done); err != nil {
			t.Fatalf("%s: done event %q is not JSON: %v", f, last, err)
		}
		if done.FinishReason != finish || done.Model != model {
			t.Errorf("%s: done event %q gives finish %q model %q", f, last, done.FinishReason, done.Model)
		}
	}
	// Invalid UTF-8 cannot be given back, but the event stays JSON.
	rec := &recorder{}
	fw := NewWriter(rec, rec.Flush, NDJSON)
	fw.Chunk(&chunk.Chunk{HasChoices: true, FinishReason: "\xff\xfe", Model: "\xc3"})
	fw.Done()
	if line := strings.TrimSuffix(rec.String(), "\n"); !json.Valid([]byte(line)) {
		t.Errorf("done line %q is not JSON", line)
	}
}

// TestFailStringsAreJSON: the error signal's message, type and code come
// from the upstream too.
func TestFailStringsAreJSON(t *testing.T) {
	e := &chunk.Error{Message: "bad\a\x00\x7f\xff\n\"", Type: "t\x01\n", Code: raw("{\n\"a\":\r\n1}")}
	for _, f := range []Format{OpenAI, SSE, NDJSON} {
		rec := &recorder{}
		if err := NewWriter(rec, rec.Flush, f).Fail(e); err != nil {
			t.Fatal(err)
		}
		out := strings.TrimSuffix(rec.String(), "\n")
		if f != NDJSON {
			out = strings.TrimSuffix(out, "\n")
		}
		lines := strings.Split(out, "\n")
		data := strings.TrimPrefix(lines[len(lines)-1], "data: ")
		if len(lines) != map[Format]int{OpenAI: 1, SSE: 2, NDJSON: 1}[f] || !json.Valid([]byte(data)) {
			t.Errorf("%s: error signal %q is not one line of JSON", f, rec.String())
		}
	}
}

// TestWriterCompactsFields: an upstream may spread its JSON over several
// data lines, which join with "\n", so the raw values of a chunk can hold
// line breaks. The sse and ndjson framings write them compacted: each
// frame is one line of JSON, and no line of the upstream's (here a forged
// end) becomes a frame of its own.
func TestWriterCompactsFields(t *testing.T) {
	forged := "[\n{\"done\":true,\"model\":\"injected\"}\r\n]"
	c := chunk.Chunk{
		Raw:        []byte("{\"choices\":[{\"index\":0,\"delta\":{\"content\":" + forged + "}}],\n\"usage\":{\n\"total_tokens\": 3}}"),
		HasChoices: true,
		Content:    raw(forged),
		ToolCalls:  raw("[\n {\"index\": 0,\n  \"function\": {\"name\": \"f\\n\"}}\n]"),
		Usage:      raw("{\n\"total_tokens\": 3}"),
		Model:      "m",
	}
	want := map[Format]string{
		OpenAI: "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":[{\"done\":true,\"model\":\"injected\"}]}}],\"usage\":{\"total_tokens\":3}}\n\n" +
			"data: [DONE]\n\n",
		SSE: "data: {\"content\":[{\"done\":true,\"model\":\"injected\"}],\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\\n\"}}]}\n\n" +
			"event: done\ndata: {\"finish_reason\":null,\"usage\":{\"total_tokens\":3},\"model\":\"m\"}\n\n",
		NDJSON: "{\"content\":[{\"done\":true,\"model\":\"injected\"}],\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\\n\"}}]}\n" +
			"{\"done\":true,\"finish_reason\":null,\"usage\":{\"total_tokens\":3},\"model\":\"m\"}\n",
	}
	for f, want := range want {
		rec := &recorder{}
		fw := NewWriter(rec, rec.Flush, f)
		fw.IncludeUsage = true
		if err := fw.Chunk(&c); err != nil {
			t.Fatal(err)
		}
		if err := fw.Done(); err != nil {
			t.Fatal(err)
		}
		if got := rec.String(); got != want {
			t.Errorf("%s: got\n%s\nwant\n%s", f, got, want)
		}
	}
}

// TestWriterRefusesNonJSON: a value that is not JSON cannot be made one
// line of JSON; the chunk is refused rather than written across lines.
func TestWriterRefusesNonJSON(t *testing.T) {
	both := []Format{SSE, NDJSON}
	for _, tc := range []struct {
		c       chunk.Chunk
		formats []Format
	}{
		{chunk.Chunk{Raw: []byte("{\"choices\":\n[}"), HasChoices: true}, []Format{OpenAI}},
		{chunk.Chunk{HasChoices: true, ToolCalls: raw("[\n{\"done\":true}")}, both},
		{chunk.Chunk{HasChoices: true, Content: raw("\"a\nb\"")}, both},
		{chunk.Chunk{Usage: raw("{\n")}, both},
	} {
		for _, f := range tc.formats {
			rec := &recorder{}
			if err := NewWriter(rec, rec.Flush, f).Chunk(&tc.c); !errors.Is(err, ErrContent) {
				t.Errorf("%s: Chunk(%q %q %q %q) = %v, want ErrContent", f, tc.c.Raw, tc.c.Content, tc.c.ToolCalls, tc.c.Usage, err)
			}
			if rec.String() != "" {
				t.Errorf("%s: wrote %q", f, rec.String())
			}
		}
	}
}

// TestWriterNumberEvents: with NumberEvents every frame of the SSE framings
// carries <stream>.<n>, done and error included, and heartbeats carry none
// and are not counted.
func TestWriterNumberEvents(t *testing.T) {
	for _, f := range []Format{OpenAI, SSE, NDJSON} {
		rec := new(recorder)
		fw := NewWriter(rec, rec.Flush, f)
		fw.StreamID, fw.NumberEvents, fw.Retry = "s", true, 1500*time.Millisecond
		c := chunk.Chunk{Raw: []byte(`{"choices":[{"index":0,"delta":{"content":"a"}}]}`), Content: []byte(`"a"`), HasChoices: true}
		if err := fw.Chunk(&c); err != nil {
			t.Fatal(err)
		}
		if err := fw.Heartbeat(); err != nil {
			t.Fatal(err)
		}
		if err := fw.Chunk(&c); err != nil {
			t.Fatal(err)
		}
		if err := fw.Fail(&chunk.Error{Type: chunk.TypeUpstream, Message: "x"}); err != nil {
			t.Fatal(err)
		}
		if fw.Frames() != 3 {
			t.Errorf("%s: %d frames, want 3", f, fw.Frames())
		}
		out := rec.buf.String()
		ids := strings.Count(out, "id: ")
		switch f {
		case NDJSON:
			if ids != 0 {
				t.Errorf("ndjson carries ids: %q", out)
			}
		default:
			if ids != 3 || !strings.HasPrefix(out, "retry: 1500\nid: s.1\n") || strings.Count(out, "retry:") != 1 || !strings.Contains(out, ": keepalive\nid: s.2\n") || !strings.Contains(out, "id: s.3\n") {
				t.Errorf("%s: %q", f, out)
			}
		}
	}
}

// TestHeadersSentStartsWithoutFlush: a writer told the headers went out
// (Caddy's encode flushed them for an Incremental response) flushes nothing
// before its first frame, so a text reply with no text leaves the encoder
// unstarted; one not told flushes the headers at Start.
func TestHeadersSentStartsWithoutFlush(t *testing.T) {
	h := http.Header{}
	SetHeaders(h, Text)
	if HeadersSent(h) {
		t.Fatal("HeadersSent without Content-Encoding")
	}
	h.Set("Content-Encoding", "gzip")
	if !HeadersSent(h) {
		t.Fatal("not HeadersSent for an encoded Incremental response")
	}
	for _, sent := range []bool{false, true} {
		rec := new(recorder)
		fw := NewWriter(rec, rec.Flush, Text)
		fw.HeadersSent = sent
		if err := fw.Start(); err != nil {
			t.Fatal(err)
		}
		if err := fw.Done(); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{false: 1, true: 0}[sent]; rec.flushes != want {
			t.Errorf("HeadersSent %v: %d flushes, want %d", sent, rec.flushes, want)
		}
	}
}
