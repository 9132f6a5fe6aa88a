package frame

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// frames keeps each write, which the Writer makes one frame.
type frames [][]byte

func (f *frames) Write(p []byte) (int, error) {
	*f = append(*f, bytes.Clone(p))
	return len(p), nil
}

// FuzzFramings decodes an arbitrary upstream event stream as the proxy does
// and writes it in every framing. Whatever the upstream sends, each frame
// is one sse event of one data line, or one ndjson line, of JSON: the
// upstream can neither break a frame nor add one.
func FuzzFramings(f *testing.F) {
	for _, s := range []string{
		"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n",
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":[\ndata: {\"done\":true,\"model\":\"injected\"}\ndata: ]}}]}\n\n",
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[\ndata: {\"index\":0,\"function\":{\"name\":\"f\"}}]}}],\ndata: \"usage\":\r\ndata: {\"total_tokens\":3}}\n\n",
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"r\"},\"finish_reason\":\"st\\u0007op\"}]}\n\ndata: [DONE]\n\n",
		"event: error\ndata: {\"error\":{\"message\":\"m\\u0000\",\"code\":{\n\"a\":1}}}\n\n",
		"event: error\ndata: [DONE]\n\n",
		"data: {\"choices\":[{\"index\":0,\"message\":{\"content\":\"whole\"},\"finish_reason\":\"stop\"}]}\n\n",
		"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\ndata: \"delta\":\"hi\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1}}}\n\n",
		"event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"function_call\",\"name\":\n\"f\"}}\n\nevent: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{}}\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		for _, format := range []Format{OpenAI, SSE, NDJSON, Text} {
			var out frames
			fw := NewWriter(&out, func() error { return nil }, format)
			fw.IncludeUsage = true
			fw.StreamID = "s1"
			relay(fw, stream)
			for _, fr := range out {
				checkFrame(t, format, fr)
			}

			out = nil
			fw = NewWriter(&out, func() error { return nil }, format)
			fw.StreamID, fw.TypedEvents = "s1", true
			relayResponses(fw, stream)
			for _, fr := range out {
				checkFrame(t, format, fr)
			}
		}
	})
}

// relay writes stream's events to fw as the proxy's streaming loop does.
func relay(fw *Writer, stream []byte) {
	er := upstream.NewEventReader(bytes.NewReader(stream), 1<<16)
	var p upstream.ChunkParser
	var c chunk.Chunk
	for {
		ev, err := er.Next()
		switch {
		case err != nil:
			fw.Fail(&chunk.Error{Message: err.Error(), Type: chunk.TypeUpstream})
			return
		case string(ev.Type) == "error":
			fw.Fail(upstream.ErrorEvent(ev.Data))
			return
		case string(ev.Data) == "[DONE]":
			fw.Done()
			return
		}
		c.Reset()
		if err := p.Parse(ev.Data, &c); err != nil {
			fw.Fail(&chunk.Error{Message: err.Error(), Type: chunk.TypeUpstream})
			return
		}
		if c.Err != nil {
			fw.Fail(c.Err)
			return
		}
		if err := fw.Chunk(&c); err != nil {
			fw.Fail(&chunk.Error{Message: err.Error(), Type: chunk.TypeUpstream})
			return
		}
	}
}

// relayResponses writes stream's events to fw as the proxy does a
// Responses stream's.
func relayResponses(fw *Writer, stream []byte) {
	er := upstream.NewEventReader(bytes.NewReader(stream), 1<<16)
	var p upstream.ResponsesParser
	var c chunk.Chunk
	for {
		ev, err := er.Next()
		if err != nil {
			fw.Fail(&chunk.Error{Message: err.Error(), Type: chunk.TypeUpstream})
			return
		}
		c.Reset()
		if err := p.Parse(ev.Type, ev.Data, &c); err != nil {
			fw.Fail(&chunk.Error{Message: err.Error(), Type: chunk.TypeUpstream})
			return
		}
		c.Event = ev.Type
		if err := fw.Chunk(&c); err != nil {
			fw.Fail(&chunk.Error{Message: err.Error(), Type: chunk.TypeUpstream})
			return
		}
		switch {
		case c.Err != nil:
			fw.Fail(c.Err)
			return
		case c.FinishReason != "":
			fw.Done()
			return
		}
	}
}

// checkFrame checks that fr is one frame of format whose data is JSON.
func checkFrame(t *testing.T, format Format, fr []byte) {
	t.Helper()
	var data []byte
	switch format {
	case Text:
		return
	case NDJSON:
		line, ok := bytes.CutSuffix(fr, []byte("\n"))
		if !ok || bytes.ContainsAny(line, "\r\n") {
			t.Fatalf("ndjson frame %q is not one line", fr)
		}
		data = line
	case OpenAI, SSE:
		ev, ok := bytes.CutSuffix(fr, []byte("\n\n"))
		if !ok {
			t.Fatalf("%s frame %q does not end its event", format, fr)
		}
		if string(ev) == ": keepalive" {
			return
		}
		ev, _ = bytes.CutPrefix(ev, []byte("id: s1\n")) // the first event's
		if format == SSE {
			ev = cutPrefixes(ev, "event: done\n", "event: error\n")
		}
		if format == OpenAI && bytes.HasPrefix(ev, []byte("event: ")) { // a typed event's
			_, ev, _ = bytes.Cut(ev, []byte("\n"))
		}
		var found bool
		if data, found = bytes.CutPrefix(ev, []byte("data: ")); !found || bytes.ContainsAny(data, "\r\n") {
			t.Fatalf("%s frame %q is not one event of one data line", format, fr)
		}
		if format == OpenAI && string(data) == "[DONE]" {
			return
		}
	}
	if !json.Valid(data) {
		t.Fatalf("%s frame %q: data is not JSON", format, fr)
	}
	if format != OpenAI && len(data) > 0 && data[0] != '{' {
		t.Fatalf("%s frame %q: data is not an object", format, fr)
	}
}

func cutPrefixes(b []byte, prefixes ...string) []byte {
	for _, p := range prefixes {
		if rest, ok := bytes.CutPrefix(b, []byte(p)); ok {
			return rest
		}
	}
	return b
}
