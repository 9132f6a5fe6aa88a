package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// messagesStack starts caddy with llm_simulator on a port of its own and
// `llm_proxy /v1/*` in front of it as an Anthropic-style upstream (auth
// x-api-key), with max_tokens capped, heartbeats more often than the
// simulator's chunks (5ms apart), under `encode zstd gzip`.
func messagesStack(t *testing.T) *caddy {
	return apiStack(t, "to {SIM}\n\t\tauth x-api-key\n\t\tmax_tokens 2000\n\t\theartbeat 2ms")
}

// TestClientsAnthropicNode runs e2e/node/messages.test.mjs: the official
// Anthropic Node SDK's messages.stream and finalMessage, a tool call,
// thinking, the beta namespace, a whole Message, and its typed errors.
func TestClientsAnthropicNode(t *testing.T) {
	nodeTest(t, "messages.test.mjs", messagesStack(t))
}

// messagesAnswer is what a client makes of one Messages stream: its text,
// reasoning, tool call, finish and usage, however it was framed.
type messagesAnswer struct {
	text, reasoning            string
	toolID, toolName, toolArgs string
	prompt, completion         int64
	finish                     string
}

// readTyped reads the Anthropic framing: the upstream's own events.
func readTyped(t *testing.T, body io.Reader) messagesAnswer {
	t.Helper()
	var a messagesAnswer
	sc := bufio.NewScanner(body)
	sc.Buffer(nil, 1<<20)
	var event string
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			event = v
			continue
		}
		v, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Type    string
			Message struct {
				Usage struct {
					InputTokens int64 `json:"input_tokens"`
				}
			}
			Block struct{ Type, ID, Name string } `json:"content_block"`
			Delta struct {
				Text        string
				Thinking    string
				StopReason  string `json:"stop_reason"`
				PartialJSON string `json:"partial_json"`
			}
			Usage struct {
				OutputTokens int64 `json:"output_tokens"`
			}
		}
		if err := json.Unmarshal([]byte(v), &ev); err != nil || ev.Type != event {
			t.Fatalf("event %s data %s: %v", event, v, err)
		}
		switch ev.Type {
		case "message_start":
			a.prompt = ev.Message.Usage.InputTokens
		case "content_block_start":
			if ev.Block.Type == "tool_use" {
				a.toolID, a.toolName = ev.Block.ID, ev.Block.Name
			}
		case "content_block_delta":
			a.text += ev.Delta.Text
			a.reasoning += ev.Delta.Thinking
			a.toolArgs += ev.Delta.PartialJSON
		case "message_delta":
			a.completion = ev.Usage.OutputTokens
			a.finish = map[string]string{"end_turn": "stop", "tool_use": "tool_calls"}[ev.Delta.StopReason]
		case "error":
			t.Fatalf("error event %s", v)
		}
	}
	return a
}

// readNeutral reads the sse or ndjson framing's objects.
func readNeutral(t *testing.T, body io.Reader) messagesAnswer {
	t.Helper()
	var a messagesAnswer
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		line := strings.TrimPrefix(sc.Text(), "data: ")
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var obj struct {
			Content   string
			Reasoning string
			ToolCalls []struct {
				ID       string
				Function struct{ Name, Arguments string }
			} `json:"tool_calls"`
			FinishReason string `json:"finish_reason"`
			Usage        *struct {
				Prompt     int64 `json:"prompt_tokens"`
				Completion int64 `json:"completion_tokens"`
				Total      int64 `json:"total_tokens"`
			}
			Error json.RawMessage
		}
		if err := json.Unmarshal([]byte(line), &obj); err != nil || obj.Error != nil {
			t.Fatalf("line %s: %v", line, err)
		}
		a.text += obj.Content
		a.reasoning += obj.Reasoning
		for _, tc := range obj.ToolCalls {
			a.toolID += tc.ID
			a.toolName += tc.Function.Name
			a.toolArgs += tc.Function.Arguments
		}
		if obj.Usage != nil {
			if obj.Usage.Total != obj.Usage.Prompt+obj.Usage.Completion {
				t.Errorf("usage %+v", obj.Usage)
			}
			a.prompt, a.completion, a.finish = obj.Usage.Prompt, obj.Usage.Completion, obj.FinishReason
		}
	}
	return a
}

// TestMessagesReframedAsTyped: a Messages stream re-framed as sse, ndjson
// or text carries the same text, thinking, tool call, finish and usage as the
// upstream's typed events in the default framing.
func TestMessagesReframedAsTyped(t *testing.T) {
	c := messagesStack(t)
	for _, model := range []string{"claude-sonnet-4-5", "sim-tools", "sim-reasoning"} {
		body := `{"model":"` + model + `","max_tokens":512,"stream":true,"messages":[{"role":"user","content":"hi claude"}]}`
		resp := post(t, c.URL+"/v1/messages", body, "Anthropic-Version", "2023-06-01", "Accept-Encoding", "gzip")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("%s: %d %v", model, resp.StatusCode, resp.Header)
		}
		dec, err := decoder(resp.Header.Get("Content-Encoding"), resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		typed := readTyped(t, dec)
		resp.Body.Close()
		if typed.prompt == 0 || typed.completion == 0 || typed.finish == "" || (typed.text == "") == (typed.toolName == "") ||
			(typed.reasoning != "") != (model == "sim-reasoning") {
			t.Fatalf("%s: typed %+v", model, typed)
		}
		for _, format := range []string{"sse", "ndjson", "text"} {
			resp := post(t, c.URL+"/v1/messages?format="+format, body, "Anthropic-Version", "2023-06-01")
			var got messagesAnswer
			if format == "text" {
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				got = messagesAnswer{text: string(b)}
				want := messagesAnswer{text: typed.text}
				if got != want {
					t.Errorf("%s %s: %+v, want %+v", model, format, got, want)
				}
			} else if got = readNeutral(t, resp.Body); got != typed {
				t.Errorf("%s %s: %+v, want %+v", model, format, got, typed)
			}
			resp.Body.Close()
		}
	}
}

// TestMessagesRefusedInAnthropicShape: a refusal of the proxy's on
// /v1/messages, before any upstream call, is Anthropic's error shape with
// the refusal's status.
func TestMessagesRefusedInAnthropicShape(t *testing.T) {
	c := messagesStack(t)
	for _, tt := range []struct {
		body, typ string
		status    int
	}{
		{`{"model":`, "invalid_request_error", 400},
		{`{"model":"m","max_tokens":5000,"messages":[]}`, "invalid_request_error", 400},
		{`{"model":"sim-error-429","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`, "rate_limit_error", 429},
		{`{"model":"sim-error-503","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`, "api_error", 502},
	} {
		resp := post(t, c.URL+"/v1/messages", tt.body)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct {
			Type  string
			Error struct{ Type, Message string }
		}
		if json.Unmarshal(b, &e) != nil || resp.StatusCode != tt.status || e.Type != "error" || e.Error.Type != tt.typ || e.Error.Message == "" {
			t.Errorf("%s: %d %s", tt.body, resp.StatusCode, b)
		}
	}
	resp := post(t, c.URL+"/v1/messages", `{"model":"m","max_tokens":5,"messages":[]}`, "Content-Type", "text/plain", "Origin", "https://evil.example")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.HasPrefix(string(b), `{"type":"error","error":{"type":"permission_error"`) {
		t.Errorf("cross-site: %d %s", resp.StatusCode, b)
	}
}
