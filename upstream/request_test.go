package upstream

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("body %s: %v", b, err)
	}
	return m
}

func TestFromJSONKeepsFields(t *testing.T) {
	body := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.2,
		"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
		"response_format":{"type":"json_object"},"stream":true,"stream_options":{"include_usage":false,"x":1}}`
	req, err := FromJSON([]byte(body), false, "default")
	if err != nil {
		t.Fatal(err)
	}
	m := decode(t, req.Body)
	if m["temperature"] != 0.2 || m["tools"] == nil || m["response_format"] == nil || m["model"] != "gpt-4o" {
		t.Errorf("fields lost: %s", req.Body)
	}
	so := m["stream_options"].(map[string]any)
	if so["include_usage"] != true || so["x"] != 1.0 {
		t.Errorf("stream_options %v: usage must always be asked for, other options kept", so)
	}
	if !req.Stream || req.IncludeUsage || req.Model != "gpt-4o" {
		t.Errorf("req = %+v", req)
	}
}

func TestFromJSONStreamAndModel(t *testing.T) {
	// openai framing without stream: passed through as a non-streamed call,
	// and no stream_options (OpenAI rejects them without stream).
	req, err := FromJSON([]byte(`{"messages":[{"role":"user","content":"hi"}]}`), false, "m1")
	if err != nil {
		t.Fatal(err)
	}
	m := decode(t, req.Body)
	if req.Stream || m["stream"] != nil || m["stream_options"] != nil || m["model"] != "m1" {
		t.Errorf("non-streamed request: %s", req.Body)
	}
	// Other framings force streaming.
	req, err = FromJSON([]byte(`{"messages":[{"role":"user","content":"hi"}],"stream":false,"stream_options":{"include_usage":true}}`), true, "")
	if err != nil {
		t.Fatal(err)
	}
	m = decode(t, req.Body)
	if !req.Stream || m["stream"] != true || !req.IncludeUsage {
		t.Errorf("forced stream: %s %+v", req.Body, req)
	}
	if _, ok := m["model"]; ok {
		t.Errorf("model invented: %s", req.Body)
	}
	// prompt shorthand.
	req, err = FromJSON([]byte(`{"prompt":"hello"}`), true, "")
	if err != nil {
		t.Fatal(err)
	}
	m = decode(t, req.Body)
	msgs := m["messages"].([]any)
	if len(msgs) != 1 || msgs[0].(map[string]any)["content"] != "hello" || m["prompt"] != nil {
		t.Errorf("prompt: %s", req.Body)
	}
}

func TestFromJSONRejects(t *testing.T) {
	for _, body := range []string{
		``, `null`, `[]`, `{`, `"x"`, `{}`, `{"messages":[]}`, `{"messages":{}}`, `{"prompt":""}`,
		`{"prompt":3}`, `{"messages":[{}],"model":3}`, `{"messages":[{}],"stream":"yes"}`,
		`{"messages":[{}],"stream":true,"stream_options":[]}`, `{"messages":[{}]} {}`,
	} {
		_, err := FromJSON([]byte(body), true, "")
		var e *chunk.Error
		if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Type != chunk.TypeInvalidRequest || e.Message == "" {
			t.Errorf("FromJSON(%q) = %v, want a 400 invalid_request_error", body, err)
		}
	}
}

func TestFromPrompt(t *testing.T) {
	req, err := FromPrompt("hi \"there\"", "m")
	if err != nil {
		t.Fatal(err)
	}
	m := decode(t, req.Body)
	if m["model"] != "m" || m["stream"] != true || m["messages"].([]any)[0].(map[string]any)["content"] != "hi \"there\"" {
		t.Errorf("body %s", req.Body)
	}
	if req.IncludeUsage {
		t.Error("GET clients did not ask for the usage chunk")
	}
	if _, err := FromPrompt("", "m"); err == nil {
		t.Error("empty prompt accepted")
	}
}

func TestParseChunk(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want chunk.Chunk
	}{
		{"content", `{"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}`,
			chunk.Chunk{Model: "m", HasChoices: true, Content: raw(`"hi"`)}},
		{"role only", `{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`,
			chunk.Chunk{HasChoices: true}},
		{"null content", `{"choices":[{"index":0,"delta":{"content":null}}]}`,
			chunk.Chunk{HasChoices: true}},
		{"deepseek reasoning", `{"choices":[{"index":0,"delta":{"reasoning_content":"hmm","content":null}}]}`,
			chunk.Chunk{HasChoices: true, Reasoning: raw(`"hmm"`)}},
		{"openrouter reasoning", `{"choices":[{"index":0,"delta":{"reasoning":"hmm"}}]}`,
			chunk.Chunk{HasChoices: true, Reasoning: raw(`"hmm"`)}},
		{"tools", `{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}`,
			chunk.Chunk{HasChoices: true, ToolCalls: raw(`[{"index":0,"function":{"arguments":"{"}}]`)}},
		{"empty tools", `{"choices":[{"index":0,"delta":{"tool_calls":[]}}]}`,
			chunk.Chunk{HasChoices: true}},
		{"finish", `{"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null}`,
			chunk.Chunk{HasChoices: true, FinishReason: "length"}},
		{"usage only", `{"choices":[],"usage":{"prompt_tokens":1}}`,
			chunk.Chunk{Usage: raw(`{"prompt_tokens":1}`)}},
		{"second choice ignored", `{"choices":[{"index":1,"delta":{"content":"x"}}]}`,
			chunk.Chunk{HasChoices: true}},
		{"whole completion", `{"choices":[{"index":0,"message":{"role":"assistant","content":"all"},"finish_reason":"stop"}]}`,
			chunk.Chunk{HasChoices: true, Content: raw(`"all"`), FinishReason: "stop"}},
		{"error object", `{"error":{"message":"overloaded","type":"server_error","code":"x"}}`,
			chunk.Chunk{Err: &chunk.Error{Message: "overloaded", Type: "server_error", Code: raw(`"x"`)}}},
		{"error string", `{"error":"bad"}`,
			chunk.Chunk{Err: &chunk.Error{Message: "bad", Type: chunk.TypeUpstream}}},
		{"vllm error object", `{"object":"error","message":"context too long","type":"BadRequestError","param":null,"code":400}`,
			chunk.Chunk{Err: &chunk.Error{Message: "context too long", Type: "BadRequestError", Code: raw(`400`)}}},
		{"error empty", `{"error":{}}`,
			chunk.Chunk{Err: &chunk.Error{Message: "upstream reported an error", Type: chunk.TypeUpstream}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c chunk.Chunk
			if err := ParseChunk([]byte(tt.in), &c); err != nil {
				t.Fatal(err)
			}
			if string(c.Raw) != tt.in {
				t.Errorf("Raw = %s", c.Raw)
			}
			tt.want.Raw = c.Raw
			gotJ, _ := json.Marshal(c)
			wantJ, _ := json.Marshal(tt.want)
			if string(gotJ) != string(wantJ) || (c.Err == nil) != (tt.want.Err == nil) {
				t.Errorf("got  %s\nwant %s", gotJ, wantJ)
			}
		})
	}
	var c chunk.Chunk
	for _, bad := range []string{`{not json`, `[1]`, ``} {
		if err := ParseChunk([]byte(bad), &c); err == nil {
			t.Errorf("ParseChunk(%q) accepted", bad)
		}
	}
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

// TestFromJSONRejectsBadMessages: a message that is not an object with a
// string role is refused before any upstream call, with its index, however
// deep it nests.
func TestFromJSONRejectsBadMessages(t *testing.T) {
	deep := strings.Repeat("[", 5000) + strings.Repeat("]", 5000)
	for msg, bad := range map[string]string{
		deep:                       "messages[1]",
		`1`:                        "messages[1]",
		`"hi"`:                     "messages[1]",
		`null`:                     "messages[1]",
		`{"content":"x"}`:          "messages[1]",
		`{"role":3,"content":"x"}`: "messages[1]",
		`{"role":null}`:            "messages[1]",
		`{"role":["user"]}`:        "messages[1]",
		`{"Role":"user"}`:          "messages[1]",
	} {
		body := `{"messages":[{"role":"user","content":"hi"},` + msg + `]}`
		_, err := FromJSON([]byte(body), true, "m")
		var e *chunk.Error
		if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Type != chunk.TypeInvalidRequest || !strings.Contains(e.Message, bad) {
			t.Errorf("message %.40s: FromJSON = %v, want a 400 invalid_request_error naming %s", msg, err, bad)
		}
	}
	if _, err := FromJSON([]byte(`{"messages":[ {"role":"system","content":"s"} ,`+"\n\t"+`{"content":[{"type":"text","text":"x"}],"role":"user"}]}`), true, ""); err != nil {
		t.Errorf("good messages refused: %v", err)
	}
}
