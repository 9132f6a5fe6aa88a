package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// What a request may ask of a public endpoint: a model outside models, a
// max_tokens over the cap, n or messages over their limits are refused in
// OpenAI's error shape before any upstream call; under clamp the upstream
// sees the cap, and a request without max_tokens is sent with it.
func TestRequestLimits(t *testing.T) {
	up := newUpstream(t, completeStream)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy /v1/chat/completions {
		to %[1]s
		model gpt-4o-mini
		models gpt-4o-mini gpt-4o
		max_tokens 100
		max_messages 2
		max_prompt 50
	}
	llm_proxy /clamp/v1/chat/completions {
		to %[1]s
		max_tokens 100 clamp
	}
	llm_proxy /chat {
		to %[1]s
		format sse
		models gpt-4o-mini
		max_tokens 100
	}
}`, up.URL))
	chat := func(fields string) string {
		return `{"messages":[{"role":"user","content":"hi"}],"stream":true` + fields + `}`
	}
	for _, tt := range []struct {
		name, method, path, body string
		status                   int
		param, code, message     string
	}{
		{"a model outside models", "POST", "/v1/chat/completions", chat(`,"model":"gpt-5"`),
			404, "model", "model_not_found", `the model "gpt-5" does not exist on this endpoint: it serves gpt-4o-mini, gpt-4o`},
		{"a model outside models, by GET", "GET", "/chat?prompt=hi&model=o3", "",
			404, "model", "model_not_found", `the model "o3" does not exist on this endpoint: it serves gpt-4o-mini`},
		{"no model, and no default", "GET", "/chat?prompt=hi", "",
			400, "model", "", "request names no model: this endpoint serves gpt-4o-mini"},
		{"max_tokens over the cap", "POST", "/v1/chat/completions", chat(`,"max_tokens":101`),
			400, "max_tokens", "integer_above_max_value", "max_tokens is 101, more than this endpoint allows (at most 100)"},
		{"max_completion_tokens over the cap", "POST", "/v1/chat/completions", chat(`,"max_completion_tokens":4096`),
			400, "max_completion_tokens", "integer_above_max_value", "max_completion_tokens is 4096, more than this endpoint allows (at most 100)"},
		{"n over 1, the default", "POST", "/v1/chat/completions", chat(`,"n":2`),
			400, "n", "integer_above_max_value", "n is 2, more than this endpoint allows (at most 1)"},
		{"n under clamp too", "POST", "/clamp/v1/chat/completions", chat(`,"n":3`),
			400, "n", "integer_above_max_value", "n is 3, more than this endpoint allows (at most 1)"},
		{"too many messages", "POST", "/v1/chat/completions", `{"messages":[{"role":"system","content":"a"},{"role":"user","content":"b"},{"role":"user","content":"c"}]}`,
			400, "messages", "array_above_max_length", "messages: 3 messages, more than this endpoint allows (at most 2)"},
		{"a prompt too long", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"` + strings.Repeat("é", 51) + `"}]}`,
			400, "messages", "string_above_max_length", "prompt of 51 characters, more than this endpoint allows (at most 50)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, c.URL+tt.path, strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			resp := do(t, req)
			b, _ := io.ReadAll(resp.Body)
			var shape struct {
				Error struct {
					Message, Type, Param, Code string
				}
			}
			if err := json.Unmarshal(b, &shape); err != nil || resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != "application/json" ||
				shape.Error != (struct{ Message, Type, Param, Code string }{tt.message, "invalid_request_error", tt.param, tt.code}) {
				t.Errorf("%d %s\nwant %d with message %q, param %s, code %s", resp.StatusCode, b, tt.status, tt.message, tt.param, tt.code)
			}
		})
	}
	if n := up.calls.Load(); n != 0 {
		t.Fatalf("refused requests made %d upstream calls", n)
	}

	sent := func() map[string]json.RawMessage {
		var m map[string]json.RawMessage
		json.Unmarshal([]byte(*up.body.Load()), &m)
		return m
	}
	for _, tt := range []struct {
		name, method, path, body string
		want                     map[string]string
	}{
		{"within the cap", "POST", "/v1/chat/completions", chat(`,"max_tokens":7`), map[string]string{"max_tokens": "7", "model": `"gpt-4o-mini"`}},
		{"without max_tokens: the cap", "POST", "/v1/chat/completions", chat(`,"model":"gpt-4o"`), map[string]string{"max_tokens": "100", "model": `"gpt-4o"`}},
		{"without max_tokens, by GET: the cap", "GET", "/chat?prompt=hi&model=gpt-4o-mini", "", map[string]string{"max_tokens": "100"}},
		{"clamped", "POST", "/clamp/v1/chat/completions", chat(`,"max_tokens":5000`), map[string]string{"max_tokens": "100"}},
		{"clamped, the new name", "POST", "/clamp/v1/chat/completions", chat(`,"max_completion_tokens":5000`),
			map[string]string{"max_completion_tokens": "100", "max_tokens": ""}},
	} {
		req, _ := http.NewRequest(tt.method, c.URL+tt.path, strings.NewReader(tt.body))
		req.Header.Set("Content-Type", "application/json")
		resp := do(t, req)
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d", tt.name, resp.StatusCode)
			continue
		}
		m := sent()
		for k, v := range tt.want {
			if string(m[k]) != v {
				t.Errorf("%s: the upstream saw %s %s, want %s", tt.name, k, m[k], v)
			}
		}
	}
}
