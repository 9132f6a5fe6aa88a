package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// messagesEvents is a Messages stream with thinking, text, a tool call and
// usage, as Anthropic sends one.
var messagesEvents = []string{
	"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
	"event: ping\ndata: {\"type\": \"ping\"}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}\n\n",
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
	"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n",
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
}

// messagesUpstream serves events (or a status and body); last is
// "METHOD /path x-api-key anthropic-version anthropic-beta body".
type messagesUpstream = eventsUpstream

func newMessagesUpstream(t *testing.T, status int, events ...string) *messagesUpstream {
	t.Helper()
	return newEventsUpstream(t, func(r *http.Request, b []byte) string {
		h := r.Header
		return r.Method + " " + r.URL.RequestURI() + " " + h.Get("X-Api-Key") + h.Get("Authorization") + " " +
			h.Get("Anthropic-Version") + " " + h.Get("Anthropic-Beta") + " " + string(b)
	}, status, events...)
}

func messagesProxy(t *testing.T, opts string, ups ...*messagesUpstream) *httptest.Server {
	t.Helper()
	block := "llm_proxy {\n\tapi_key sk-server\n\tauth x-api-key\n\tto"
	for _, u := range ups {
		block += " " + u.URL + "/v1"
	}
	return serveProxy(t, provisionProxy(t, block+"\n"+opts+"}"))
}

// postMessages posts body to the proxy as the Anthropic SDK does; a body
// that breaks ends in <broken: ...>.
func postMessages(t *testing.T, srv *httptest.Server, path, body string, header ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
	header = append([]string{"Content-Type", "application/json", "X-Api-Key", "client-key", "Anthropic-Version", "2023-06-01"}, header...)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, string(b) + "<broken: " + err.Error() + ">"
	}
	return resp, string(b)
}

const messagesBody = `{"model":"claude-x","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`

// TestMessagesTypedFraming: in the default framing the upstream's events
// reach the client byte for byte (no id line, no end of the proxy's), with
// the server's key as x-api-key, the client's anthropic headers and its
// query (the SDKs' beta namespace asks messages?beta=true); the client's
// own key stays behind.
func TestMessagesTypedFraming(t *testing.T) {
	up := newMessagesUpstream(t, 0, messagesEvents...)
	srv := messagesProxy(t, "", up)
	resp, body := postMessages(t, srv, "/v1/messages?beta=true&format=openai", messagesBody, "Anthropic-Beta", "fine-grained-tool-streaming-2025-05-14")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || body != strings.Join(messagesEvents, "") {
		t.Errorf("%d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if got := up.last.Load().(string); got != "POST /v1/messages?beta=true sk-server 2023-06-01 fine-grained-tool-streaming-2025-05-14 "+messagesBody {
		t.Errorf("upstream asked %s", got)
	}
}

// TestMessagesReframed: sse, ndjson and text carry a Messages stream's
// thinking, text, tool call, finish reason and usage as they carry a chat
// stream's, stream forced on.
func TestMessagesReframed(t *testing.T) {
	up := newMessagesUpstream(t, 0, messagesEvents...)
	srv := messagesProxy(t, "", up)
	usage := `{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}`
	tools := `{"tool_calls":[{"index":0,"id":"toolu_1","type":"function","function":{"name":"f","arguments":""}}]}`
	args := `{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}`
	for format, want := range map[string]string{
		"sse": "id: llmstream\ndata: {\"reasoning\":\"hm\"}\n\ndata: {\"content\":\"Hel\"}\n\ndata: {\"content\":\"lo\"}\n\ndata: " + tools + "\n\ndata: " + args + "\n\n" +
			"event: done\ndata: {\"finish_reason\":\"tool_calls\",\"usage\":" + usage + ",\"model\":\"claude-x\"}\n\n",
		"ndjson": "{\"reasoning\":\"hm\"}\n{\"content\":\"Hel\"}\n{\"content\":\"lo\"}\n" + tools + "\n" + args + "\n" +
			"{\"done\":true,\"finish_reason\":\"tool_calls\",\"usage\":" + usage + ",\"model\":\"claude-x\"}\n",
		"text": "Hello",
	} {
		_, body := postMessages(t, srv, "/v1/messages?format="+format, `{"model":"m","max_tokens":9,"messages":[]}`)
		if body != want {
			t.Errorf("%s:\n%s\nwant\n%s", format, body, want)
		}
		if got := up.last.Load().(string); !strings.HasSuffix(got, ` {"max_tokens":9,"messages":[],"model":"m","stream":true}`) {
			t.Errorf("%s: stream not forced on: %s", format, got)
		}
	}
}

// TestMessagesFailures: the upstream's error event is relayed as it came
// in the default framing and is the error signal of the others; a failure
// of the proxy's is Anthropic's error event there.
func TestMessagesFailures(t *testing.T) {
	overloaded := "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
	head := messagesEvents[5:7:7]
	up := newMessagesUpstream(t, 0, append(append(messagesEvents[:1:1], head...), overloaded)...)
	srv := messagesProxy(t, "", up)
	for format, want := range map[string]string{
		"openai": messagesEvents[0] + strings.Join(head, "") + overloaded,
		"sse":    "id: llmstream\ndata: {\"content\":\"Hel\"}\n\nevent: error\ndata: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\"}}\n\n",
		"ndjson": "{\"content\":\"Hel\"}\n{\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\"}}\n",
		"text":   "Hel<broken: unexpected EOF>",
	} {
		_, body := postMessages(t, srv, "/v1/messages?format="+format, messagesBody)
		if body != want {
			t.Errorf("%s:\n%q\nwant\n%q", format, body, want)
		}
	}

	broken := newMessagesUpstream(t, 0, append(append(messagesEvents[:1:1], head...), "RESET")...)
	srv = messagesProxy(t, "", broken)
	_, body := postMessages(t, srv, "/v1/messages", messagesBody)
	want := messagesEvents[0] + strings.Join(head, "") +
		"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream stream ended abnormally\"}}\n\n"
	if body != want {
		t.Errorf("a broken stream:\n%q\nwant\n%q", body, want)
	}
	cut := newMessagesUpstream(t, 0, messagesEvents[:7]...)
	srv = messagesProxy(t, "", cut)
	if _, body := postMessages(t, srv, "/v1/messages", messagesBody); !strings.HasSuffix(body, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream stream ended abnormally\"}}\n\n") {
		t.Errorf("a stream that ends before message_stop: %q", body)
	}
}

// anthropicError decodes a body in Anthropic's error shape.
func anthropicError(t *testing.T, body string) (typ, msg string) {
	t.Helper()
	var e struct {
		Type  string
		Error struct{ Type, Message string }
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Type != "error" || e.Error.Message == "" {
		t.Fatalf("not Anthropic's error shape: %s", body)
	}
	return e.Error.Type, e.Error.Message
}

// TestMessagesRefusals: what the proxy refuses before the first byte is
// told in Anthropic's error shape, with the status of the refusal, and
// reaches no upstream; an upstream's own refusal keeps its message.
func TestMessagesRefusals(t *testing.T) {
	up := newMessagesUpstream(t, 0, messagesEvents...)
	srv := messagesProxy(t, "\tmodels claude-x\n\tmax_tokens 100\n\tmax_messages 1\n", up)
	for _, tt := range []struct {
		name, body string
		status     int
		typ, msg   string
	}{
		{"bad JSON", `{"model":`, 400, "invalid_request_error", "not a JSON object"},
		{"model not allowed", `{"model":"claude-y","max_tokens":1,"messages":[]}`, 404, "not_found_error", `"claude-y" does not exist`},
		{"max_tokens over the cap", `{"model":"claude-x","max_tokens":1000,"messages":[]}`, 400, "invalid_request_error", "max_tokens is 1000"},
		{"too many messages", `{"model":"claude-x","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}`, 400, "invalid_request_error", "at most 1"},
	} {
		resp, body := postMessages(t, srv, "/v1/messages", tt.body)
		typ, msg := anthropicError(t, body)
		if resp.StatusCode != tt.status || typ != tt.typ || !strings.Contains(msg, tt.msg) {
			t.Errorf("%s: %d %s", tt.name, resp.StatusCode, body)
		}
	}
	if up.calls.Load() != 0 {
		t.Error("a refused request reached the upstream")
	}
	postMessages(t, srv, "/v1/messages", `{"model":"claude-x","messages":[]}`)
	if got := up.last.Load().(string); !strings.HasSuffix(got, ` {"max_tokens":100,"messages":[],"model":"claude-x"}`) {
		t.Errorf("max_tokens not set to the cap: %s", got)
	}

	for _, tt := range []struct {
		status     int
		body       string
		wantStatus int
		typ, msg   string
	}{
		{400, `{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}`, 400, "invalid_request_error", "max_tokens: Field required"},
		{529, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`, 502, "api_error", "status 529"},
		{429, `{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`, 429, "rate_limit_error", "slow down"},
	} {
		up := newMessagesUpstream(t, tt.status, tt.body)
		resp, body := postMessages(t, messagesProxy(t, "", up), "/v1/messages", messagesBody)
		typ, msg := anthropicError(t, body)
		if resp.StatusCode != tt.wantStatus || typ != tt.typ || !strings.Contains(msg, tt.msg) {
			t.Errorf("upstream %d: %d %s", tt.status, resp.StatusCode, body)
		}
	}

	// Without a cap to send, a request without max_tokens is refused as
	// Anthropic would refuse it, without asking it.
	bare := newMessagesUpstream(t, 0, messagesEvents...)
	resp, body := postMessages(t, messagesProxy(t, "", bare), "/v1/messages", `{"model":"claude-x","messages":[]}`)
	if typ, msg := anthropicError(t, body); resp.StatusCode != 400 || typ != "invalid_request_error" || msg != "max_tokens: Field required" || bare.calls.Load() != 0 {
		t.Errorf("no max_tokens: %d %s", resp.StatusCode, body)
	}

	// count_tokens is passed through, and refused in the same shape.
	resp, body = postMessages(t, srv, "/v1/messages/count_tokens", `{"model":"claude-y","messages":[]}`)
	if typ, _ := anthropicError(t, body); resp.StatusCode != 404 || typ != "not_found_error" {
		t.Errorf("count_tokens: %d %s", resp.StatusCode, body)
	}
	// Chat keeps OpenAI's shape.
	resp, body = call(t, srv, "POST", "/v1/chat/completions", `{"model":`)
	wantOpenAIError(t, resp, body, 400, "invalid_request_error")
}

// TestMessagesFailover: another upstream answers while nothing of the
// first one's answer reached the client: in the default framing its
// message_start is held back until the next event, and an overloaded
// stream fails over as an overloaded status does.
func TestMessagesFailover(t *testing.T) {
	broken := newMessagesUpstream(t, 0, messagesEvents[0], "RESET")
	good := newMessagesUpstream(t, 0, messagesEvents...)
	srv := messagesProxy(t, "\tlb_policy first\n", broken, good)
	if _, body := postMessages(t, srv, "/v1/messages", messagesBody); body != strings.Join(messagesEvents, "") {
		t.Errorf("did not fail over cleanly: %q", body)
	}
	// Anthropic's overloaded_error at the start of a stream fails over as
	// its 529 would; with no other upstream, the client reads it.
	overloaded := "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
	busy := newMessagesUpstream(t, 0, messagesEvents[0], overloaded)
	srv = messagesProxy(t, "\tlb_policy first\n", busy, good)
	if _, body := postMessages(t, srv, "/v1/messages", messagesBody); body != strings.Join(messagesEvents, "") {
		t.Errorf("an early overloaded_error did not fail over: %q", body)
	}
	srv = messagesProxy(t, "", busy)
	if _, body := postMessages(t, srv, "/v1/messages", messagesBody); body != overloaded {
		t.Errorf("an early overloaded_error, alone: %q", body)
	}

	down := newMessagesUpstream(t, 500, `{"type":"error","error":{"type":"api_error","message":"x"}}`)
	srv = messagesProxy(t, "\tlb_policy first\n", down, good)
	if _, body := postMessages(t, srv, "/v1/messages?format=ndjson", messagesBody); !strings.Contains(body, `"done":true`) {
		t.Errorf("a 500 before the first byte did not fail over: %q", body)
	}
}

// TestMessagesWhole: a request that does not stream gets the upstream's
// Message whole, and its usage is charged to the client's token budget.
func TestMessagesWhole(t *testing.T) {
	const whole = `{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":900,"output_tokens":2}}`
	up := newMessagesUpstream(t, 200, whole)
	srv := messagesProxy(t, "\trate_limit 100-M {\n\t\ttokens 1000-H\n\t}\n", up)
	body := `{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`
	resp, got := postMessages(t, srv, "/v1/messages", body)
	if resp.StatusCode != 200 || got != whole || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("%d %s", resp.StatusCode, got)
	}
	postMessages(t, srv, "/v1/messages", body) // 1804 of 1000: this one went over
	resp, got = postMessages(t, srv, "/v1/messages", body)
	if typ, _ := anthropicError(t, got); resp.StatusCode != 429 || typ != "rate_limit_error" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("the budget spent by whole answers: %d %s", resp.StatusCode, got)
	}

	// A 200 whose body is an error is no answer.
	bad := newMessagesUpstream(t, 200, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
	resp, got = postMessages(t, messagesProxy(t, "", bad), "/v1/messages", body)
	if typ, msg := anthropicError(t, got); resp.StatusCode != 502 || typ != "api_error" || msg != "Overloaded" {
		t.Errorf("an error body: %d %s", resp.StatusCode, got)
	}
}

// TestMessagesBudgetCountsThePrompt: a stream's usage counts against the
// token budget as it goes: message_start's input tokens with the first
// delta, so a stream over the budget is cut at once, with Anthropic's
// error event.
func TestMessagesBudgetCountsThePrompt(t *testing.T) {
	big := strings.Replace(messagesEvents[0], `"input_tokens":3`, `"input_tokens":5000`, 1)
	up := newMessagesUpstream(t, 0, append([]string{big}, messagesEvents[1:]...)...)
	srv := messagesProxy(t, "\trate_limit 100-M {\n\t\ttokens 1000-H\n\t}\n", up)
	_, body := postMessages(t, srv, "/v1/messages", messagesBody)
	want := big + strings.Join(messagesEvents[1:3], "") + "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":"
	if !strings.HasPrefix(body, want) || strings.Contains(body, "thinking_delta") {
		t.Errorf("not cut at the first delta:\n%q", body)
	}
}

// TestMessagesFromPrompt: GET /v1/messages?prompt= is one user message,
// streamed, with max_tokens, which Anthropic requires.
func TestMessagesFromPrompt(t *testing.T) {
	up := newMessagesUpstream(t, 0, messagesEvents...)
	srv := messagesProxy(t, "\tmodel claude-d\n", up)
	resp, body := call(t, srv, "GET", "/v1/messages?prompt=hi&format=ndjson", "")
	if resp.StatusCode != 200 || !strings.Contains(body, "{\"content\":\"Hel\"}\n") {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
	if got := up.last.Load().(string); !strings.HasSuffix(got, ` {"max_tokens":4096,"messages":[{"content":"hi","role":"user"}],"model":"claude-d","stream":true}`) {
		t.Errorf("upstream asked %s", got)
	}
}

// TestMessagesLogLine: the log line and the span name the API a stream was
// for, not the chat path every stream once was.
func TestMessagesLogLine(t *testing.T) {
	up := newMessagesUpstream(t, 0, messagesEvents...)
	h := provisionProxy(t, "llm_proxy {\n\tapi_key sk-server\n\tauth x-api-key\n\tto "+up.URL+"/v1\n}")
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	srv := serveProxy(t, h)
	if resp, body := postMessages(t, srv, "/v1/messages", messagesBody); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	line := logs.FilterMessage("stream finished").All()
	if len(line) != 1 || line[0].ContextMap()["api"] != "messages" {
		t.Fatalf("log lines %v", line)
	}
	for api, op := range map[string]string{"messages": "chat", "chat/completions": "chat", "responses": "chat", "responses/resp_1": "chat", "embeddings": "embeddings"} {
		if got := genAIOperation(api); got != op {
			t.Errorf("genAIOperation(%q) = %q, want %q", api, got, op)
		}
	}
}
