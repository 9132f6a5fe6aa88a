package upstream

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// parseSeeds are chunks of the shapes upstreams send, and of the ways a
// walk can go wrong: invalid JSON, duplicate names, deep nesting, escapes,
// invalid UTF-8, numbers, layout.
var parseSeeds = []string{
	string(benchChunk),
	`{"choices":[{"index":0,"delta":{"content":"hi","reasoning_content":"x","tool_calls":[{}]},"finish_reason":"stop"}],"usage":{"a":1}}`,
	`{"error":{"message":"m","type":"t","code":3}}`, `{"error":"s"}`, `{"choices":[{"index":0,"message":{"content":"x"}}]}`,
	`{"choices":[{"index":0,"delta":{"content":["not","a","string"]}}]}`, `{}`, `[]`, `x`, ``, ` `, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,}`,
	`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0}}}`,
	`{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]},"finish_reason":null}]}`,
	`{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`, `{"choices":[{"index":0,"delta":{},"finish_reason":"eos"}]}`,
	`{"object":"error","message":"context too long","type":"BadRequestError","param":null,"code":400}`,
	`{"model":"a","model":"b","usage":{"x":1},"usage":null,"error":{},"error":null,"object":"error","object":"x"}`,
	`{"choices":[{"index":0,"delta":{"content":"a"},"message":{"reasoning":"r"},"index":1}],"choices":[1,[],{"index":0}]}`,
	`{"choices":[{"index":0,"delta":{"content":"a"}},{"index":0,"delta":{"content":"b"}},{"index":"0"},{"index":0.0}]}`,
	`{"choices":[{"delta":{"content":"x"},"\u0069ndex":1}]}`, `{"cho\u0069ces":[{"index":0,"delta":{"content":"x"}}],"\u006dodel":"m"}`,
	`{"choices":[{"index":0,"delta":{"content":"\u00e9\ud800\"\\\/\b\f\n\r\t","reasoning":"\uDFFF"}}]}`,
	`{"choices":[{"index":0,"delta":{"content":"\x"}}]}`, `{"choices":[{"index":0,"delta":{"content":"\u12"}}]}`,
	"{\"model\":\"\xff\xfe\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xe2\x82\"}}]}", "{\"a\":\"\x01\"}", "{\"a\":\"\x7f\"}", "{\xff:1}",
	`{"a":[0,-0,1.5,-1e9,2E+3,3e-7,123456789012345678901234567890]}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":.5}`, `{"a":1e}`, `{"a":+1}`,
	`{"a":[true,false,null]}`, `{"a":tru}`, `{"a":nul}`, `{"a":nullx}`, `{"a":truefalse}`,
	" \t\r\n{ \"choices\" : [ { \"index\" : 0 , \"delta\" : { \"content\" : \"x\" } } ] , \"usage\" : { \"a\" :\n1 } }\n ",
	`{} `, `{}x`, `{}{}`, `{}]`, `{"a":1}}`, `{"a":[}`, `{"a":{]}`, `{"a":[1 2]}`, `{"a" 1}`, `{1:2}`, `{"a":1 "b":2}`,
	`{"usage":` + strings.Repeat(`[`, 300) + strings.Repeat(`]`, 300) + `}`,
	`{"usage":` + strings.Repeat(`{"a":`, 300) + `1` + strings.Repeat(`}`, 300) + `}`,
	`{"a":` + strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001) + `}`,
	`{"choices":[{"index":0,"delta":{"content":"a"}}]}` + "\x00" + `{"choices":[{"index":0,"delta":{"content":"a"` + "\x00" + `{"model":"n"}`,
}

// FuzzParseChunk: any event data either fails cleanly or gives fields that
// the framings can copy verbatim as JSON, and the scanner gives what the
// jsontext walk gives (the fields, the error), for each of the pieces of
// the data between NUL bytes parsed in turn into one chunk, as a stream
// does. What jsontext takes the scanner takes too, short of escaped names
// and deep nesting.
func FuzzParseChunk(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, want ChunkParser
		var c, w chunk.Chunk
		for _, piece := range bytes.Split(data, []byte{0}) {
			// As Stream.Next does: a chunk is reset before each parse,
			// which fills in only what the data has.
			c.Reset()
			w.Reset()
			err := got.Parse(piece, &c)
			w.Raw = append(w.Raw[:0], piece...)
			wantErr := want.walk(&w)
			if errString(err) != errString(wantErr) {
				t.Fatalf("%q: error %v, jsontext's %v", piece, err, wantErr)
			}
			if !sameChunk(&c, &w) {
				t.Fatalf("%q: chunk\n%s\njsontext's\n%s", piece, dumpChunk(&c), dumpChunk(&w))
			}
			if !bytes.Equal(got.model, want.model) || got.modelStr != want.modelStr {
				t.Fatalf("%q: model %q %q, jsontext's %q %q", piece, got.model, got.modelStr, want.model, want.modelStr)
			}
			if wantErr == nil && !bytes.Contains(piece, []byte(`\`)) && len(piece) < maxScanDepth {
				s := chunk.Chunk{Raw: piece}
				if !new(ChunkParser).scan(&s) {
					t.Fatalf("%q: the scanner leaves to jsontext what it takes", piece)
				}
			}
			if err != nil {
				continue
			}
			for _, v := range []json.RawMessage{c.Content, c.Reasoning, c.ToolCalls, c.Usage} {
				if v != nil && !json.Valid(v) {
					t.Fatalf("field %q is not valid JSON", v)
				}
			}
			if c.Err != nil {
				if c.Err.Message == "" || !json.Valid(c.Err.MarshalBody()) {
					t.Fatalf("bad error %+v", c.Err)
				}
			}
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return "error: " + err.Error()
}

// sameChunk compares two chunks field by field, the capacity of the raw
// fields too: a framing may append to them.
func sameChunk(a, b *chunk.Chunk) bool {
	for _, f := range [][2][]byte{{a.Content, b.Content}, {a.Reasoning, b.Reasoning}, {a.ToolCalls, b.ToolCalls}, {a.Usage, b.Usage}} {
		if (f[0] == nil) != (f[1] == nil) || cap(f[0]) != cap(f[1]) {
			return false
		}
	}
	return reflect.DeepEqual(a, b)
}

func dumpChunk(c *chunk.Chunk) string {
	j, _ := json.Marshal(c)
	return string(j)
}
