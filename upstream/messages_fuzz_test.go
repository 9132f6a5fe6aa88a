package upstream

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// refMessages is a deliberately plain decoder of Messages events on
// encoding/json's maps, to check MessagesParser against: it keeps the
// stream's state in the open fields and gives what a chunk should hold,
// decoded to Go values; ok is false for data the parser must refuse.
type refMessages struct {
	open            int64 // the open tool_use block's index + 1
	calls           int64
	in, cw, cr, out int64
	startUsage      bool
}

// plainInt is a JSON number token of digits alone (18 at most), else -1.
func plainInt(v any) int64 {
	n, _ := v.(json.Number)
	if len(n) == 0 || len(n) > 18 || strings.Trim(string(n), "0123456789") != "" {
		return -1
	}
	i, _ := strconv.ParseInt(string(n), 10, 64)
	return i
}

func (rm *refMessages) usage() map[string]any {
	p := rm.in + rm.cw + rm.cr
	u := map[string]any{"prompt_tokens": num(p), "completion_tokens": num(rm.out), "total_tokens": num(p + rm.out)}
	if rm.cr > 0 {
		u["prompt_tokens_details"] = map[string]any{"cached_tokens": num(rm.cr)}
	}
	return u
}

func num(n int64) json.Number { return json.Number(strconv.FormatInt(n, 10)) }

func (rm *refMessages) readUsage(u any) {
	m, _ := u.(map[string]any)
	for name, dst := range map[string]*int64{"input_tokens": &rm.in, "cache_creation_input_tokens": &rm.cw,
		"cache_read_input_tokens": &rm.cr, "output_tokens": &rm.out} {
		if v, ok := m[name]; ok {
			if k := plainInt(v); k >= 0 {
				*dst = k
			}
		}
	}
}

func (rm *refMessages) decode(sseType string, data []byte) (fields map[string]any, isErr, ok bool) {
	ev, typ, ok := refEvent(sseType, data)
	if !ok {
		return nil, false, false
	}
	fields = map[string]any{}
	text := func(name string, v any) {
		if s, isStr := v.(string); isStr && s != "" {
			fields[name] = s
		}
	}
	switch typ {
	case "message_start":
		msg, _ := ev["message"].(map[string]any)
		if u, set := msg["usage"]; set && u != nil {
			rm.readUsage(u)
			rm.startUsage = true
		}
	case "content_block_start":
		block, _ := ev["content_block"].(map[string]any)
		rm.open = 0
		switch block["type"] {
		case "text":
			text("content", block["text"])
		case "thinking":
			text("reasoning", block["thinking"])
		case "tool_use":
			rm.open = plainInt(ev["index"]) + 1
			fn := map[string]any{"arguments": ""}
			if block["name"] != nil {
				fn["name"] = block["name"]
			}
			call := map[string]any{"index": num(rm.calls), "type": "function", "function": fn}
			if block["id"] != nil {
				call["id"] = block["id"]
			}
			rm.calls++
			fields["tool_calls"] = []any{call}
		}
	case "content_block_delta":
		delta, _ := ev["delta"].(map[string]any)
		switch delta["type"] {
		case "text_delta":
			text("content", delta["text"])
		case "thinking_delta":
			text("reasoning", delta["thinking"])
		case "input_json_delta":
			if s, isStr := delta["partial_json"].(string); isStr && s != "" && rm.open > 0 && plainInt(ev["index"])+1 == rm.open {
				fields["tool_calls"] = []any{map[string]any{"index": num(rm.calls - 1), "function": map[string]any{"arguments": s}}}
			}
		}
	case "message_delta":
		delta, _ := ev["delta"].(map[string]any)
		switch r, _ := delta["stop_reason"].(string); r {
		case "end_turn", "stop_sequence", "":
			fields["finish"] = "stop"
		case "max_tokens", "model_context_window_exceeded":
			fields["finish"] = "length"
		case "tool_use":
			fields["finish"] = "tool_calls"
		case "refusal":
			fields["finish"] = "content_filter"
		default:
			fields["finish"] = r
		}
		if u, set := ev["usage"]; set && u != nil {
			rm.readUsage(u)
			rm.startUsage = false
			fields["usage"] = rm.usage()
		}
	case "error":
		return fields, true, true
	}
	if rm.startUsage && (fields["content"] != nil || fields["reasoning"] != nil || fields["tool_calls"] != nil) {
		rm.startUsage = false
		if fields["usage"] == nil {
			fields["usage"] = rm.usage()
		}
	}
	return fields, false, true
}

// decodedMessage is what the parser put in c, decoded to Go values.
func decodedMessage(t *testing.T, c *chunk.Chunk) map[string]any {
	t.Helper()
	out := map[string]any{}
	for name, v := range map[string]json.RawMessage{"content": c.Content, "reasoning": c.Reasoning, "tool_calls": c.ToolCalls, "usage": c.Usage} {
		if v != nil {
			out[name] = decodeValue(t, v)
		}
	}
	if c.FinishReason != "" {
		out["finish"] = c.FinishReason
	}
	return out
}

// FuzzMessagesParser decodes three events with one parser (later ones
// depend on earlier ones: a tool call's input, the usage of message_start)
// and checks each against the reference: the same text, thinking, tool
// calls, finish reason and usage, valid JSON for every field a framing
// copies, the same failures.
func FuzzMessagesParser(f *testing.F) {
	for _, s := range [][4]string{
		{"content_block_start", `{"type":"message_start","message":{"model":"m","usage":{"input_tokens":3,"cache_read_input_tokens":2,"output_tokens":1}}}`,
			`{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}`,
			`{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}`},
		{"", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}`,
			`{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"r"}}`,
			`{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":9}}`},
		{"error", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`, `[DONE]`, `{"type":"message_stop"}`},
		{"content_block_delta", `{"delta":{"type":"text_delta","text":["no"]},"type":null}`,
			`{"type":"content_block_start","index":-1,"content_block":{"type":"tool_use","name":{"x":1}}}`,
			`{"type":"content_block_delta","index":-1,"delta":{"type":"input_json_delta","partial_json":"x"}}`},
		{"", `{"type":"message_start","message":[1]}`, `{"type":"content_block_delta","delta":{"type":"text_delta","text":"\u0000\ud800"}}`,
			"{\"type\":\"message_delta\",\n\"delta\":{\"stop_reason\":\"\\u0074ool_use\"},\"usage\":{\"output_tokens\":1e3}}"},
		{"ping", `{"type": "ping"}`, `{"a":1}{}`, `{"type":"content_block_start","content_block":{"type":"text","text":"x"}}`},
	} {
		f.Add(s[0], []byte(s[1]), []byte(s[2]), []byte(s[3]))
	}
	f.Fuzz(func(t *testing.T, sseType string, first, second, third []byte) {
		var mp MessagesParser
		var ref refMessages
		for _, data := range [][]byte{first, second, third} {
			var c chunk.Chunk
			err := mp.Parse([]byte(sseType), data, &c)
			want, wantErr, ok := ref.decode(sseType, data)
			var failure *chunk.Error
			if errors.As(err, &failure) {
				if sseType != "error" || ok || failure.Message == "" {
					t.Fatalf("%q (%s): failure %v where the reference finds none", data, sseType, failure)
				}
				continue
			}
			if !ok {
				if err == nil {
					t.Fatalf("%q: accepted data the reference refuses", data)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%q: %v, the reference accepts it", data, err)
			}
			if (c.Err != nil) != wantErr {
				t.Fatalf("%q: failure %v, want one: %v", data, c.Err, wantErr)
			}
			if c.Err != nil {
				if c.Err.Message == "" || !json.Valid(c.Err.MarshalBody()) {
					t.Fatalf("%q: bad error %+v", data, c.Err)
				}
				continue
			}
			if got := decodedMessage(t, &c); !reflect.DeepEqual(got, want) {
				t.Fatalf("%q:\n got %s\nwant %s", data, show(got), show(want))
			}
		}
	})
}
