package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// TestMessagesParserEvents: one case per event the proxy reads, and the
// content-free rest. Each case starts a parser afresh, after the events
// of its prefix.
func TestMessagesParserEvents(t *testing.T) {
	const start = `{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}}`
	const toolStart = `{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}`
	for _, tt := range []struct {
		name     string
		prefix   []string
		typ      string
		data     string
		want     want
		noTyping bool
	}{
		{name: "message_start: the model, and the usage kept for later", typ: "message_start", data: start,
			want: want{model: "claude-x"}},
		{name: "text delta, with the prompt's usage first", prefix: []string{start}, typ: "content_block_delta",
			data: `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \u00e9"}}`,
			want: want{content: `"Hi \u00e9"`, usage: `{"prompt_tokens":15,"completion_tokens":1,"total_tokens":16,"prompt_tokens_details":{"cached_tokens":5}}`}},
		{name: "text delta", typ: "content_block_delta",
			data: `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}`, want: want{content: `"Hi"`}},
		{name: "empty text delta", typ: "content_block_delta",
			data: `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}`},
		{name: "thinking delta", typ: "content_block_delta",
			data: `{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}`, want: want{reasoning: `"hmm"`}},
		{name: "signature delta", typ: "content_block_delta",
			data: `{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}`},
		{name: "text block start", typ: "content_block_start",
			data: `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`},
		{name: "tool_use block start", prefix: []string{`{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_0","name":"a","input":{}}}`},
			typ: "content_block_start", data: toolStart,
			want: want{tools: `[{"index":1,"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":""}}]`}},
		{name: "tool input delta", prefix: []string{toolStart}, typ: "content_block_delta",
			data: `{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}`,
			want: want{tools: `[{"index":0,"function":{"arguments":"{\"city\": "}}]`}},
		{name: "empty tool input delta", prefix: []string{toolStart}, typ: "content_block_delta",
			data: `{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}`},
		{name: "input delta of a block that is no tool_use (a server tool)", prefix: []string{toolStart,
			`{"type":"content_block_start","index":3,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}`},
			typ: "content_block_delta", data: `{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{}"}}`},
		{name: "message_delta end_turn", prefix: []string{start}, typ: "message_delta",
			data: `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":7}}`,
			want: want{finish: "stop", model: "claude-x", usage: `{"prompt_tokens":15,"completion_tokens":7,"total_tokens":22,"prompt_tokens_details":{"cached_tokens":5}}`}},
		{name: "message_delta max_tokens", typ: "message_delta",
			data: `{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":3,"output_tokens":2}}`,
			want: want{finish: "length", usage: `{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}`}},
		{name: "message_delta tool_use", typ: "message_delta", data: `{"type":"message_delta","delta":{"stop_reason":"tool_use"}}`,
			want: want{finish: "tool_calls"}},
		{name: "message_delta stop_sequence", typ: "message_delta", data: `{"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"}}`,
			want: want{finish: "stop"}},
		{name: "message_delta of a reason the proxy does not know", typ: "message_delta", data: `{"type":"message_delta","delta":{"stop_reason":"pause_turn"}}`,
			want: want{finish: "pause_turn"}},
		{name: "ping", typ: "ping", data: `{"type": "ping"}`},
		{name: "content_block_stop", typ: "content_block_stop", data: `{"type":"content_block_stop","index":0}`},
		{name: "message_stop", typ: "message_stop", data: `{"type":"message_stop"}`},
		{name: "an event newer than the proxy", typ: "content_block_surprise", data: `{"type":"content_block_surprise","delta":{"type":"text_delta","text":"x"}}`},
		{name: "error event", typ: "error", data: `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
			want: want{errMsg: "Overloaded"}},
		{name: "error event without details", typ: "error", data: `{"type":"error"}`, want: want{errMsg: "upstream reported an error"}},
		{name: "the type in the data alone", typ: "", noTyping: true,
			data: `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}`, want: want{content: `"x"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var mp MessagesParser
			var c chunk.Chunk
			for _, p := range tt.prefix {
				var pt struct{ Type string }
				_ = json.Unmarshal([]byte(p), &pt)
				if err := mp.Parse([]byte(pt.Type), []byte(p), &c); err != nil {
					t.Fatal(err)
				}
			}
			c.Reset()
			if err := mp.Parse([]byte(tt.typ), []byte(tt.data), &c); err != nil {
				t.Fatal(err)
			}
			if g := got(&c); g != tt.want {
				t.Errorf("\n got %+v\nwant %+v", g, tt.want)
			}
			if string(c.Raw) != tt.data {
				t.Errorf("raw %s", c.Raw)
			}
			if tt.want.errMsg == "" && c.Err != nil {
				t.Errorf("error %v", c.Err)
			}
		})
	}
}

// TestMessagesParserRefusesNonJSON: data that is no JSON object is a
// broken stream, but in an event typed error, the upstream's failure.
func TestMessagesParserRefusesNonJSON(t *testing.T) {
	var mp MessagesParser
	var c chunk.Chunk
	for _, data := range []string{`{not json`, `[1]`, `{"a":1}{}`, `"x"`} {
		if err := mp.Parse([]byte("content_block_delta"), []byte(data), &c); err == nil {
			t.Errorf("%q accepted", data)
		}
		var e *chunk.Error
		if err := mp.Parse([]byte("error"), []byte(data), &c); !errors.As(err, &e) || e.Message == "" {
			t.Errorf("error event %q: %v", data, err)
		}
	}
}

// TestMessagesRecordedStream decodes a stream in Anthropic's shape of
// extended thinking with a tool call (testdata/messages_thinking_tool.sse,
// every field as the API sends it) through the Stream: the events in
// order, the thinking, the text, the tool call in the chat shape, the
// finish reason and the usage, and the end at message_stop.
func TestMessagesRecordedStream(t *testing.T) {
	stream, err := os.ReadFile("testdata/messages_thinking_tool.sse")
	if err != nil {
		t.Fatal(err)
	}
	var hdr http.Header
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		hdr = r.Header.Clone()
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write(stream)
		w.(http.Flusher).Flush()
		<-r.Context().Done() // message_stop is the end, not the body's
	})
	c.Auth = AuthXAPIKey
	client := http.Header{"Anthropic-Version": {"2023-06-01"}, "Anthropic-Beta": {"interleaved-thinking-2025-05-14"}, "X-Api-Key": {"client-key"}}
	req, err := (*Limits)(nil).FromMessagesJSON([]byte(`{"model":"claude-sonnet-4-5","max_tokens":2048,"stream":true,"messages":[{"role":"user","content":"weather in Paris?"}]}`), client, false, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if hdr.Get("X-Api-Key") != "sk-secret-key" || hdr.Get("Anthropic-Beta") != "interleaved-thinking-2025-05-14" || hdr.Get("Anthropic-Version") != "2023-06-01" {
		t.Errorf("upstream headers %v", hdr)
	}
	var ch chunk.Chunk
	var events []string
	var text, thinking, args strings.Builder
	var tools []string
	var usage, finish, model string
	firstUsage := ""
	for {
		err := s.Next(&ch)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, string(ch.Event))
		text.WriteString(unquoted(t, ch.Content))
		thinking.WriteString(unquoted(t, ch.Reasoning))
		if ch.ToolCalls != nil {
			tools = append(tools, string(ch.ToolCalls))
			var calls []struct {
				Function struct{ Arguments string }
			}
			if err := json.Unmarshal(ch.ToolCalls, &calls); err != nil || len(calls) != 1 {
				t.Fatalf("tool_calls %s: %v", ch.ToolCalls, err)
			}
			args.WriteString(calls[0].Function.Arguments)
		}
		if ch.Usage != nil {
			if usage == "" {
				firstUsage = string(ch.Usage)
			}
			usage = string(ch.Usage)
		}
		if ch.FinishReason != "" {
			finish = ch.FinishReason
		}
		if ch.Model != "" {
			model = ch.Model
		}
	}
	wantEvents := "message_start content_block_start ping content_block_delta content_block_delta content_block_delta content_block_stop " +
		"content_block_start content_block_delta content_block_delta content_block_stop content_block_start content_block_delta content_block_delta content_block_delta content_block_stop " +
		"message_delta message_stop"
	if strings.Join(events, " ") != wantEvents {
		t.Errorf("events %v", events)
	}
	if thinking.String() != `The user wants the weather in Paris. I should call get_weather with "Paris".` {
		t.Errorf("thinking %q", thinking.String())
	}
	if text.String() != "I'll check the weather in Paris — un instant." {
		t.Errorf("text %q", text.String())
	}
	if len(tools) != 3 || tools[0] != `[{"index":0,"id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","type":"function","function":{"name":"get_weather","arguments":""}}]` {
		t.Errorf("tool calls %v", tools)
	}
	if args.String() != `{"location": "Paris, France", "unit": "celsius"}` {
		t.Errorf("arguments %q", args.String())
	}
	if firstUsage != `{"prompt_tokens":2560,"completion_tokens":4,"total_tokens":2564,"prompt_tokens_details":{"cached_tokens":2048}}` ||
		usage != `{"prompt_tokens":2560,"completion_tokens":89,"total_tokens":2649,"prompt_tokens_details":{"cached_tokens":2048}}` {
		t.Errorf("usage %s, then %s", firstUsage, usage)
	}
	if finish != "tool_calls" || model != "claude-sonnet-4-5-20250929" {
		t.Errorf("finish %q model %q", finish, model)
	}
}

func unquoted(t *testing.T, v json.RawMessage) string {
	t.Helper()
	if v == nil {
		return ""
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		t.Fatalf("%s: %v", v, err)
	}
	return s
}

// TestMessagesStreamEnds: only message_stop ends a Messages stream; a body
// that ends before it (or with a chat stream's [DONE]) is broken, and an
// error event comes as a chunk first, then as the stream's error.
func TestMessagesStreamEnds(t *testing.T) {
	const head = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n"
	for _, tt := range []struct {
		tail string
		want string // the last Next's error
	}{
		{"", "unexpected EOF"},
		{"data: [DONE]\n\n", "unexpected EOF"},
		{"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n", "overloaded_error: Overloaded"},
		{"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", "EOF"},
	} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, head+tt.tail)
		})
		req, _ := (*Limits)(nil).FromMessagesJSON([]byte(`{"model":"m","max_tokens":5,"messages":[]}`), nil, true, "")
		s, err := c.Open(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		var ch chunk.Chunk
		var events []string
		for err == nil {
			if err = s.Next(&ch); err == nil {
				events = append(events, string(ch.Event))
			}
		}
		if err.Error() != tt.want {
			t.Errorf("tail %q: %v after %v, want %s", tt.tail, err, events, tt.want)
		}
		if strings.Contains(tt.tail, "error") && events[len(events)-1] != "error" {
			t.Errorf("the error event was not relayed: %v", events)
		}
		s.Close()
	}
}

// TestMessagesEarlyError: an overloaded_error or api_error event before
// anything to show is the stream's error at once, with the status that
// lets another upstream answer; any other one, or one after content, is
// relayed first.
func TestMessagesEarlyError(t *testing.T) {
	const start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n"
	const text = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n"
	errorEvent := func(typ string) string {
		return "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"" + typ + "\",\"message\":\"m\"}}\n\n"
	}
	for _, tt := range []struct {
		stream   string
		relayed  bool
		failOver bool
	}{
		{start + errorEvent("overloaded_error"), false, true},
		{start + errorEvent("api_error"), false, true},
		{start + errorEvent("invalid_request_error"), true, false},
		{start + text + errorEvent("overloaded_error"), true, false},
	} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, tt.stream)
		})
		req, _ := (*Limits)(nil).FromMessagesJSON([]byte(`{"model":"m","max_tokens":5,"messages":[]}`), nil, true, "")
		s, err := c.Open(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		var ch chunk.Chunk
		relayed := false
		for err == nil {
			if err = s.Next(&ch); err == nil && ch.Err != nil {
				relayed = true
			}
		}
		var e *chunk.Error
		if !errors.As(err, &e) || e.Message != "m" || relayed != tt.relayed || MayFailOver(err, false) != tt.failOver {
			t.Errorf("%q: %v (relayed %v, fails over %v)", tt.stream, err, relayed, MayFailOver(err, false))
		}
		s.Close()
	}
}

// TestParseMessage decodes whole Messages and the errors a whole body is.
func TestParseMessage(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		want       want
	}{
		{"text", `{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"},{"type":"text","text":" there"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}`,
			want{content: `"Hi there"`, finish: "stop", model: "claude-x", usage: `{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}`}},
		{"thinking and a tool call", `{"type":"message","content":[{"type":"thinking","thinking":"hm","signature":"s"},{"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}}],"stop_reason":"tool_use"}`,
			want{reasoning: `"hm"`, tools: `[{"function":{"arguments":"{\"a\":1}","name":"f"},"id":"toolu_1","index":0,"type":"function"}]`, finish: "tool_calls"}},
		{"an error body", `{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}`,
			want{errMsg: "max_tokens: Field required"}},
		{"a gateway's error", `{"error":{"message":"nope","type":"x"}}`, want{errMsg: "nope"}},
	} {
		var c chunk.Chunk
		if err := ParseMessage([]byte(tt.body), &c); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if g := got(&c); g != tt.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.name, g, tt.want)
		}
	}
}

// TestFromMessagesJSON: the limits hold for a Messages request, and the
// body is rewritten only when something changed.
func TestFromMessagesJSON(t *testing.T) {
	body := `{"model":"claude-x","max_tokens":100,"system":"be brief","messages":[{"role":"user","content":"hello"}]}`
	for _, tt := range []struct {
		name   string
		l      Limits
		body   string
		force  bool
		def    string
		status int    // of the refusal, 0: none
		sent   string // the body sent, "" for the client's own
		max    int
	}{
		{name: "as it came", body: body, max: 100},
		{name: "stream forced", body: body, force: true, max: 100,
			sent: `{"max_tokens":100,"messages":[{"role":"user","content":"hello"}],"model":"claude-x","stream":true,"system":"be brief"}`},
		{name: "default model", body: `{"max_tokens":1,"messages":[]}`, def: "claude-d", max: 1, sent: `{"max_tokens":1,"messages":[],"model":"claude-d"}`},
		{name: "over the cap", l: Limits{MaxTokens: 50}, body: body, status: 400},
		{name: "clamped", l: Limits{MaxTokens: 50, Clamp: true}, body: body, max: 50,
			sent: `{"max_tokens":50,"messages":[{"role":"user","content":"hello"}],"model":"claude-x","system":"be brief"}`},
		{name: "clamped, and the thinking budget below it", l: Limits{MaxTokens: 2000, Clamp: true},
			body: `{"model":"m","max_tokens":32000,"thinking":{"type":"enabled","budget_tokens":31999},"messages":[]}`, max: 2000,
			sent: `{"max_tokens":2000,"messages":[],"model":"m","thinking":{"budget_tokens":1999,"type":"enabled"}}`},
		{name: "clamped, a thinking budget below it kept", l: Limits{MaxTokens: 2000, Clamp: true},
			body: `{"model":"m","max_tokens":32000,"thinking":{"type":"enabled","budget_tokens":1500},"messages":[]}`, max: 2000,
			sent: `{"max_tokens":2000,"messages":[],"model":"m","thinking":{"type":"enabled","budget_tokens":1500}}`},
		{name: "max_tokens set to the cap", l: Limits{MaxTokens: 50}, body: `{"model":"m","messages":[]}`, max: 50,
			sent: `{"max_tokens":50,"messages":[],"model":"m"}`},
		{name: "model not allowed", l: Limits{Models: []string{"claude-y"}}, body: body, status: 404},
		{name: "too many messages", l: Limits{MaxMessages: 1}, body: `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}`, status: 400},
		{name: "prompt too long, with the system prompt", l: Limits{MaxPrompt: 10}, body: body, status: 400},
		{name: "not JSON", body: `{"model":`, status: 400},
		{name: "messages not an array", body: `{"messages":{}}`, status: 400},
		{name: "stream not a boolean", body: `{"stream":"yes","max_tokens":1}`, status: 400},
		{name: "no max_tokens, and no cap to send", body: `{"model":"m","messages":[]}`, status: 400},
	} {
		req, err := tt.l.FromMessagesJSON([]byte(tt.body), nil, tt.force, tt.def)
		if tt.status != 0 {
			var e *chunk.Error
			if !errors.As(err, &e) || e.Status != tt.status {
				t.Errorf("%s: %v, want %d", tt.name, err, tt.status)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		sent := tt.sent
		if sent == "" {
			sent = tt.body
		}
		if string(req.Body) != sent || req.MaxTokens != tt.max || req.API != Messages || req.Path != "messages" {
			t.Errorf("%s: sent %s (max %d)", tt.name, req.Body, req.MaxTokens)
		}
	}
	req, _ := (*Limits)(nil).FromMessagesJSON([]byte(body), http.Header{"X-Api-Key": {"k"}, "Authorization": {"b"}, "Anthropic-Version": {"v"}}, false, "")
	if len(req.Header) != 1 || req.Header.Get("Anthropic-Version") != "v" {
		t.Errorf("headers kept %v", req.Header)
	}
	if req.PromptChars != len("be brief")+len("hello") {
		t.Errorf("prompt chars %d", req.PromptChars)
	}
}

// TestMessagesParserAllocates nothing per event once its buffers have
// grown, the synthesized tool-call deltas and usage included, as the
// Responses parser.
func TestMessagesParserAllocates(t *testing.T) {
	stream, err := os.ReadFile("testdata/messages_thinking_tool.sse")
	if err != nil {
		t.Fatal(err)
	}
	type event struct{ typ, data []byte }
	var evs []event
	for _, block := range strings.Split(strings.TrimSpace(string(stream)), "\n\n") {
		typ, data, _ := strings.Cut(block, "\ndata: ")
		evs = append(evs, event{[]byte(strings.TrimPrefix(typ, "event: ")), []byte(data)})
	}
	var mp MessagesParser
	var c chunk.Chunk
	run := func() {
		mp = MessagesParser{rp: mp.rp} // a new stream, the buffers kept
		for _, ev := range evs {
			c.Reset()
			if err := mp.Parse(ev.typ, ev.data, &c); err != nil {
				t.Fatal(err)
			}
		}
	}
	run()
	if n := testing.AllocsPerRun(20, run); n > 0 {
		t.Errorf("%v allocations for a stream of %d events", n, len(evs))
	}
}
