package upstream

import (
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// commonChunks are the shapes of a stream's chunks, as OpenAI, DeepSeek,
// vLLM and OpenRouter send them.
var commonChunks = []string{
	string(benchChunk),
	`{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}`,
	`{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}`,
	`{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0}}}`,
	`{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}]}`,
	`{"id":"c","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"Hmm\n"},"logprobs":null,"finish_reason":null}]}`,
	`{"id":"c","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"all of it"},"finish_reason":"length"}]}`,
	`{"error":{"message":"overloaded","type":"server_error","code":null}}`,
}

// TestScanTakesCommonChunks: the chunks upstreams send go through the
// scanner, not jsontext, and cost no allocation.
func TestScanTakesCommonChunks(t *testing.T) {
	var p ChunkParser
	var c chunk.Chunk
	for _, s := range commonChunks {
		c = chunk.Chunk{Raw: []byte(s)}
		if !p.scan(&c) {
			t.Errorf("the scanner left %s to jsontext", s)
		}
		if s[2] == 'e' {
			continue // an error's message is a new string
		}
		data := []byte(s)
		if n := testing.AllocsPerRun(100, func() {
			c.Reset()
			if err := p.Parse(data, &c); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%d allocations parsing %s", int(n), s)
		}
	}
}

// TestParseRestoresChunkForJSONText: what the scanner set before it gave
// up is what the jsontext walk would set, nothing more. Here the scanner,
// had it kept the choice it gave up in as the first, would leave its
// content, and jsontext finds it is not the first.
func TestParseRestoresChunkForJSONText(t *testing.T) {
	var c chunk.Chunk
	if err := new(ChunkParser).Parse([]byte(`{"choices":[{"delta":{"content":"x"},"\u0069ndex":1}]}`), &c); err != nil {
		t.Fatal(err)
	}
	if c.Content != nil || !c.HasChoices {
		t.Errorf("chunk %s, want the second choice's content dropped", dumpChunk(&c))
	}
}
