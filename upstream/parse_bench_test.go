package upstream

import (
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

var benchChunk = []byte(`{"id":"chatcmpl-AbC123","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":" streaming"},"logprobs":null,"finish_reason":null}],"usage":null}`)

func BenchmarkParseChunk(b *testing.B) {
	benchParse(b, (*ChunkParser).Parse)
}

// BenchmarkParseChunkJSONText is the jsontext walk alone, what Parse was
// before the scanner and is for what the scanner leaves: the figure to
// hold BenchmarkParseChunk against.
func BenchmarkParseChunkJSONText(b *testing.B) {
	benchParse(b, func(p *ChunkParser, data []byte, c *chunk.Chunk) error {
		c.Raw = append(c.Raw[:0], data...)
		return p.walk(c)
	})
}

func benchParse(b *testing.B, parse func(*ChunkParser, []byte, *chunk.Chunk) error) {
	var c chunk.Chunk
	var p ChunkParser
	b.ReportAllocs()
	b.SetBytes(int64(len(benchChunk)))
	for b.Loop() {
		c.Reset()
		if err := parse(&p, benchChunk, &c); err != nil {
			b.Fatal(err)
		}
	}
}

var benchResponsesEvents = [][]byte{
	[]byte(`{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67ccd3acc8d48190a77525dc6de64b4104becb25c5f6ebf1","output_index":0,"content_index":0,"delta":" streaming","logprobs":[]}`),
	[]byte(`{"type":"response.function_call_arguments.delta","sequence_number":5,"item_id":"fc_1","output_index":0,"delta":"{\"ci"}`),
}

// BenchmarkParseResponsesEvent: a Responses stream's deltas cost no
// allocation either, a function call's synthesized tool-call delta included.
func BenchmarkParseResponsesEvent(b *testing.B) {
	var c chunk.Chunk
	var p ResponsesParser
	typ := []byte("response.output_text.delta")
	if err := p.Parse(nil, []byte(`{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","call_id":"c","name":"f"}}`), &c); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchResponsesEvents[0])))
	for i := 0; b.Loop(); i++ {
		c.Reset()
		if err := p.Parse(typ, benchResponsesEvents[i%2], &c); err != nil {
			b.Fatal(err)
		}
	}
}
