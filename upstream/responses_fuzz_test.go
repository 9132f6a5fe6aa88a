package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// refResponses is a deliberately plain decoder of the same events, on
// encoding/json's maps, to check ResponsesParser against. It gives what a
// chunk should hold, decoded to Go values; ok is false for data the parser
// must refuse.
func refResponses(sseType string, data []byte, calls *[]int64) (fields map[string]any, isErr, ok bool) {
	ev, typ, ok := refEvent(sseType, data)
	if !ok {
		return nil, false, false
	}
	fields = map[string]any{}
	text := func(v any) {
		if v != nil && v != "" {
			fields["delta"] = v
		}
	}
	// An output index is a plain integer token, else unknown (-1).
	outputIndex := func(oi any) int64 {
		n, _ := oi.(json.Number)
		if len(n) == 0 || len(n) > 18 || strings.Trim(string(n), "0123456789") != "" {
			return -1
		}
		i, _ := strconv.ParseInt(string(n), 10, 64)
		return i
	}
	callIndex := func(oi any) int {
		at := outputIndex(oi)
		for i, c := range *calls {
			if c == at {
				return i
			}
		}
		*calls = append(*calls, at)
		return len(*calls) - 1
	}
	switch typ {
	case "response.output_text.delta", "response.reasoning_summary_text.delta", "response.reasoning_text.delta":
		text(ev["delta"])
	case "response.output_item.added":
		item, _ := ev["item"].(map[string]any)
		if item["type"] != "function_call" {
			break
		}
		*calls = append(*calls, outputIndex(ev["output_index"])) // a new call, whatever its output index
		fn := map[string]any{"arguments": ""}
		if item["name"] != nil {
			fn["name"] = item["name"]
		}
		if item["arguments"] != nil {
			fn["arguments"] = item["arguments"]
		}
		call := map[string]any{"index": json.Number(strconv.Itoa(len(*calls) - 1)), "type": "function", "function": fn}
		if item["call_id"] != nil {
			call["id"] = item["call_id"]
		}
		fields["tool_calls"] = []any{call}
	case "response.function_call_arguments.delta":
		if ev["delta"] == nil {
			break
		}
		fields["tool_calls"] = []any{map[string]any{"index": json.Number(strconv.Itoa(callIndex(ev["output_index"]))),
			"function": map[string]any{"arguments": ev["delta"]}}}
	case "error":
		return fields, true, true
	case "response.failed", "response.incomplete":
		isErr = true
	}
	return fields, isErr, true
}

// decoded is what the parser put in c, decoded to Go values.
func decoded(t *testing.T, c *chunk.Chunk) map[string]any {
	t.Helper()
	out := map[string]any{}
	for name, v := range map[string]json.RawMessage{"delta": c.Content, "tool_calls": c.ToolCalls} {
		if v == nil {
			continue
		}
		out[name] = decodeValue(t, v)
	}
	if c.Reasoning != nil {
		out["delta"] = decodeValue(t, c.Reasoning)
	}
	return out
}

func decodeValue(t *testing.T, v json.RawMessage) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var x any
	if err := dec.Decode(&x); err != nil || dec.More() {
		t.Fatalf("%q is not one JSON value: %v", v, err)
	}
	return x
}

// FuzzResponsesParser decodes two events with one parser (the second may
// depend on the first: a function call's arguments) and checks each against
// the reference: the same text, reasoning and tool calls, valid JSON for
// every field a framing copies, the same failures.
func FuzzResponsesParser(f *testing.F) {
	for _, s := range [][3]string{
		{"response.output_item.added", `{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","call_id":"c","name":"f","arguments":""}}`,
			`{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{\"a\":"}`},
		{"", `{"type":"response.output_text.delta","delta":"hi"}`, `{"type":"response.reasoning_summary_text.delta","delta":"r"}`},
		{"response.completed", `{"type":"response.completed","response":{"model":"m","usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3,"input_tokens_details":{"cached_tokens":0}}}}`, `{}`},
		{"response.failed", `{"type":"response.failed","response":{"error":{"code":"c","message":"m"}}}`, `{"type":"error","message":"x"}`},
		{"error", `[DONE]`, `{"type":"response.incomplete","response":{"incomplete_details":{"reason":"max_output_tokens"}}}`},
		{"response.output_text.delta", `{"delta":["not","a","string"],"type":null}`, `{"type":"response.output_item.added","output_index":-1,"item":{"type":"function_call","name":{"x":1}}}`},
		{"", `{"type":"response.created","response":[1]}`, `{"type":"response.output_text.delta","delta":"\u0000\ud800"}`},
		{"", "{\"type\":\"response.function_call_arguments.delta\",\n\"output_index\":1e3,\"delta\":{\n}}", `{"a":1}{}`},
	} {
		f.Add(s[0], []byte(s[1]), []byte(s[2]))
	}
	f.Fuzz(func(t *testing.T, sseType string, first, second []byte) {
		var rp ResponsesParser
		var calls []int64
		for _, data := range [][]byte{first, second} {
			var c chunk.Chunk
			err := rp.Parse([]byte(sseType), data, &c)
			want, wantErr, ok := refResponses(sseType, data, &calls)
			var failure *chunk.Error
			if errors.As(err, &failure) {
				if sseType != "error" || ok || failure.Message == "" {
					t.Fatalf("%q (%s): failure %v where the reference finds none", data, sseType, failure)
				}
				continue
			}
			if !ok || sseType == "error" && want == nil {
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
			if c.Err != nil && (c.Err.Message == "" || !json.Valid(c.Err.MarshalBody())) {
				t.Fatalf("%q: bad error %+v", data, c.Err)
			}
			if c.Usage != nil && !json.Valid(c.Usage) {
				t.Fatalf("%q: usage %q is not JSON", data, c.Usage)
			}
			if c.Err != nil {
				continue
			}
			if got := decoded(t, &c); !reflect.DeepEqual(got, want) {
				t.Fatalf("%q:\n got %s\nwant %s", data, show(got), show(want))
			}
		}
	})
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// refEvent decodes a typed event's data plainly: one JSON object and
// nothing after it, typed by its "type" or else by the SSE event's.
func refEvent(sseType string, data []byte) (ev map[string]any, typ string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if dec.Decode(&ev) != nil || ev == nil || dec.InputOffset() != int64(len(bytes.TrimRight(data, " \t\r\n"))) {
		return nil, "", false
	}
	typ = sseType
	if t, isStr := ev["type"].(string); isStr {
		typ = t
	}
	return ev, typ, true
}
