package upstream

import (
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

var benchChunk = []byte(`{"id":"chatcmpl-AbC123","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":" streaming"},"logprobs":null,"finish_reason":null}],"usage":null}`)

func BenchmarkParseChunk(b *testing.B) {
	var c chunk.Chunk
	var p ChunkParser
	b.ReportAllocs()
	b.SetBytes(int64(len(benchChunk)))
	for b.Loop() {
		c.Reset()
		if err := p.Parse(benchChunk, &c); err != nil {
			b.Fatal(err)
		}
	}
}
