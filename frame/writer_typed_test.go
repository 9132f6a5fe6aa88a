package frame

import (
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// typedStream is a Responses stream as the upstream decoder gives it.
var typedStream = []chunk.Chunk{
	{Event: []byte("response.created"), Raw: []byte(`{"type":"response.created","sequence_number":0,"response":{"usage":null}}`), Model: "m"},
	{Event: []byte("response.output_text.delta"), Raw: []byte("{\"type\":\"response.output_text.delta\",\n\"sequence_number\":1,\"delta\":\"Hi\"}"), Content: raw(`"Hi"`)},
	{Raw: []byte(`{"type":"response.completed","sequence_number":2,"response":{"usage":{"input_tokens":1}}}`),
		FinishReason: "stop", Usage: raw(`{"prompt_tokens":1}`)},
}

// TestWriterTypedEvents: the openai framing relays a Responses stream's
// events as they came (the event line, the data compacted to one line),
// every one, and adds no end of its own.
func TestWriterTypedEvents(t *testing.T) {
	rec := &recorder{}
	fw := NewWriter(rec, rec.Flush, OpenAI)
	fw.TypedEvents, fw.StreamID = true, "s1"
	for i := range typedStream {
		if err := fw.Chunk(&typedStream[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.Done(); err != nil {
		t.Fatal(err)
	}
	want := "id: s1\nevent: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"usage\":null}}\n\n" +
		"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Hi\"}\n\n" +
		"data: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"usage\":{\"input_tokens\":1}}}\n\n"
	if got := rec.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if string(fw.Usage()) != `{"prompt_tokens":1}` || fw.FinishReason() != "stop" || fw.Model() != "m" {
		t.Errorf("summary: usage %s finish %q model %q", fw.Usage(), fw.FinishReason(), fw.Model())
	}
}

// TestWriterTypedFailures: the upstream's own failure event is relayed and
// Fail adds nothing after it; a failure of the proxy's is an error event in
// the Responses shape, numbered after the events relayed.
func TestWriterTypedFailures(t *testing.T) {
	failed := chunk.Chunk{Event: []byte("response.failed"), Raw: []byte(`{"type":"response.failed","sequence_number":1}`),
		Err: &chunk.Error{Message: "boom", Type: chunk.TypeUpstream}}
	rec := &recorder{}
	fw := NewWriter(rec, rec.Flush, OpenAI)
	fw.TypedEvents = true
	if err := fw.Chunk(&typedStream[0]); err != nil {
		t.Fatal(err)
	}
	if err := fw.Chunk(&failed); err != nil {
		t.Fatal(err)
	}
	if err := fw.Fail(failed.Err); err != nil {
		t.Fatal(err)
	}
	want := "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"usage\":null}}\n\n" +
		"event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":1}\n\n"
	if got := rec.String(); got != want {
		t.Errorf("upstream failure: got\n%s\nwant\n%s", got, want)
	}

	for _, tt := range []struct {
		e    *chunk.Error
		want string
	}{
		{&chunk.Error{Message: "upstream sent nothing for too long", Type: chunk.TypeTimeout},
			`{"type":"error","code":"timeout_error","message":"upstream sent nothing for too long","param":null,"sequence_number":1}`},
		{&chunk.Error{Message: "m", Type: chunk.TypeUpstream, Code: raw(`"server_error"`)},
			`{"type":"error","code":"server_error","message":"m","param":null,"sequence_number":1}`},
		{&chunk.Error{Message: "m", Type: chunk.TypeUpstream, Code: raw("{\n}")},
			`{"type":"error","code":"upstream_error","message":"m","param":null,"sequence_number":1}`},
	} {
		rec := &recorder{}
		fw := NewWriter(rec, rec.Flush, OpenAI)
		fw.TypedEvents = true
		if err := fw.Chunk(&typedStream[0]); err != nil {
			t.Fatal(err)
		}
		if err := fw.Fail(tt.e); err != nil {
			t.Fatal(err)
		}
		want := "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"usage\":null}}\n\n" +
			"event: error\ndata: " + tt.want + "\n\n"
		if got := rec.String(); got != want {
			t.Errorf("proxy failure: got\n%s\nwant\n%s", got, want)
		}
	}
}

// TestWriterTypedOtherFramings: the other framings carry a Responses
// stream's deltas as they carry a chat stream's.
func TestWriterTypedOtherFramings(t *testing.T) {
	for format, want := range map[Format]string{
		SSE:    "data: {\"content\":\"Hi\"}\n\nevent: done\ndata: {\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1},\"model\":\"m\"}\n\n",
		NDJSON: "{\"content\":\"Hi\"}\n{\"done\":true,\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1},\"model\":\"m\"}\n",
		Text:   "Hi",
	} {
		rec := &recorder{}
		fw := NewWriter(rec, rec.Flush, format)
		fw.TypedEvents = true
		for i := range typedStream {
			if err := fw.Chunk(&typedStream[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := fw.Done(); err != nil {
			t.Fatal(err)
		}
		if got := rec.String(); got != want {
			t.Errorf("%s: got %q want %q", format, got, want)
		}
	}
}
