package upstream

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

func TestLimits(t *testing.T) {
	reject := &Limits{Models: []string{"a", "b"}, MaxTokens: 100, MaxN: 2, MaxMessages: 3, MaxPrompt: 10}
	clamp := *reject
	clamp.Clamp = true
	msgs := func(contents ...string) string {
		var m []map[string]any
		for _, c := range contents {
			m = append(m, map[string]any{"role": "user", "content": c})
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	for _, tt := range []struct {
		name, body string
		lim        *Limits
		status     int    // 0: accepted
		param      string // of the refusal
		want       map[string]string
	}{
		{"within", `{"model":"a","messages":` + msgs("hi") + `,"max_tokens":50,"n":2}`, reject, 0, "",
			map[string]string{"max_tokens": "50", "n": "2"}},
		{"no max_tokens gets the cap", `{"model":"b","messages":` + msgs("hi") + `}`, reject, 0, "",
			map[string]string{"max_tokens": "100"}},
		{"max_completion_tokens counts as one", `{"model":"a","messages":` + msgs("hi") + `,"max_completion_tokens":7}`, reject, 0, "",
			map[string]string{"max_completion_tokens": "7", "max_tokens": ""}},
		{"null max_tokens gets the cap", `{"model":"a","messages":` + msgs("hi") + `,"max_tokens":null}`, reject, 0, "",
			map[string]string{"max_tokens": "100"}},
		{"model outside the list", `{"model":"gpt-5","messages":` + msgs("hi") + `}`, reject, 404, "model", nil},
		{"no model, no default", `{"messages":` + msgs("hi") + `}`, reject, 400, "model", nil},
		{"max_tokens over the cap", `{"model":"a","messages":` + msgs("hi") + `,"max_tokens":101}`, reject, 400, "max_tokens", nil},
		{"max_completion_tokens over the cap", `{"model":"a","messages":` + msgs("hi") + `,"max_completion_tokens":5000}`, reject, 400, "max_completion_tokens", nil},
		{"max_tokens not an integer", `{"model":"a","messages":` + msgs("hi") + `,"max_tokens":"lots"}`, reject, 400, "max_tokens", nil},
		{"clamped", `{"model":"a","messages":` + msgs("hi") + `,"max_tokens":5000,"max_completion_tokens":101}`, &clamp, 0, "",
			map[string]string{"max_tokens": "100", "max_completion_tokens": "100"}},
		{"n over", `{"model":"a","messages":` + msgs("hi") + `,"n":3}`, &clamp, 400, "n", nil},
		{"n not a number", `{"model":"a","messages":` + msgs("hi") + `,"n":"x"}`, reject, 400, "n", nil},
		{"too many messages", `{"model":"a","messages":` + msgs("a", "b", "c", "d") + `}`, reject, 400, "messages", nil},
		{"prompt too long", `{"model":"a","messages":` + msgs("héllo", "wörld!") + `}`, reject, 400, "messages", nil},
		{"prompt at the limit, in characters", `{"model":"a","messages":` + msgs("héllo", "wörld") + `}`, reject, 0, "", nil},
		{"text parts count", `{"model":"a","messages":[{"role":"user","content":[{"type":"text","text":"0123456789"},{"type":"text","text":"x"}]}]}`, reject, 400, "messages", nil},
		{"prompt shorthand", `{"model":"a","prompt":"01234567890"}`, reject, 400, "messages", nil},
		{"no limits pass anything", `{"model":"z","messages":` + msgs("a", "b", "c", "d") + `,"max_tokens":"lots","n":9}`, nil, 0, "",
			map[string]string{"max_tokens": `"lots"`, "n": "9"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := tt.lim.FromJSON([]byte(tt.body), true, "")
			if tt.status != 0 {
				var e *chunk.Error
				if !errors.As(err, &e) || e.Status != tt.status || e.Type != chunk.TypeInvalidRequest || e.Param != tt.param || e.Message == "" {
					t.Fatalf("got %v (%+v), want %d on %s", err, e, tt.status, tt.param)
				}
				var shape struct {
					Error map[string]json.RawMessage `json:"error"`
				}
				if json.Unmarshal(e.MarshalBody(), &shape) != nil || len(shape.Error["code"]) == 0 || string(shape.Error["param"]) != strconv.Quote(tt.param) {
					t.Errorf("body %s: want OpenAI's message, type, param and code", e.MarshalBody())
				}
				if tt.status == 404 && string(shape.Error["code"]) != `"model_not_found"` {
					t.Errorf("body %s: want code model_not_found", e.MarshalBody())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]json.RawMessage
			json.Unmarshal(req.Body, &m)
			for k, v := range tt.want {
				if string(m[k]) != v {
					t.Errorf("%s = %s, want %q in %s", k, m[k], v, req.Body)
				}
			}
		})
	}
}

func TestLimitsNoteTheRequest(t *testing.T) {
	lim := &Limits{MaxTokens: 100, MaxN: 4}
	req, err := lim.FromJSON([]byte(`{"messages":[{"role":"user","content":"héllo"},{"role":"user","content":[{"type":"text","text":"ab"},{"type":"image_url"}]}],"max_tokens":30,"max_completion_tokens":20,"n":3}`), true, "")
	if err != nil {
		t.Fatal(err)
	}
	if req.MaxTokens != 20 || req.N != 3 || req.PromptChars != 7 {
		t.Errorf("MaxTokens %d N %d PromptChars %d, want 20 3 7", req.MaxTokens, req.N, req.PromptChars)
	}
	req, err = lim.FromPrompt("hi 流", "m")
	if err != nil {
		t.Fatal(err)
	}
	if req.MaxTokens != 100 || req.N != 1 || req.PromptChars != 4 || !strings.Contains(string(req.Body), `"max_tokens":100`) {
		t.Errorf("FromPrompt: %+v %s", req, req.Body)
	}
	for _, tt := range []struct {
		lim    *Limits
		prompt string
		model  string
		status int
	}{
		{&Limits{MaxPrompt: 3}, "abcd", "", 400},
		{&Limits{Models: []string{"a"}}, "x", "b", 404},
		{&Limits{Models: []string{"a"}}, "x", "a", 0},
	} {
		_, err := tt.lim.FromPrompt(tt.prompt, tt.model)
		var e *chunk.Error
		if (tt.status == 0) != (err == nil) || (err != nil && (!errors.As(err, &e) || e.Status != tt.status)) {
			t.Errorf("FromPrompt(%q, %q) under %+v: %v, want status %d", tt.prompt, tt.model, tt.lim, err, tt.status)
		}
	}
}

// FuzzLimits: within limits, any body is refused in OpenAI's shape (400,
// or 404 for a model) or goes out within every limit.
func FuzzLimits(f *testing.F) {
	for _, s := range []string{
		`{"model":"a","messages":[{"role":"user","content":"hi"}],"max_tokens":500,"n":1}`,
		`{"model":"b","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":5}`,
		`{"model":"c","prompt":"hi","n":2}`, `{"messages":[{"role":"user","content":"hi"}],"max_tokens":1e2}`,
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	lim := &Limits{Models: []string{"a", "b"}, MaxTokens: 100, MaxN: 1, MaxMessages: 2, MaxPrompt: 50}
	f.Fuzz(func(t *testing.T, body []byte, clamp bool) {
		l := *lim
		l.Clamp = clamp
		req, err := l.FromJSON(body, true, "")
		if err != nil {
			var e *chunk.Error
			if !errors.As(err, &e) || (e.Status != http.StatusBadRequest && e.Status != http.StatusNotFound) || e.Message == "" {
				t.Fatalf("error %v is not a 400 or 404", err)
			}
			return
		}
		var m struct {
			Model               string            `json:"model"`
			Messages            []json.RawMessage `json:"messages"`
			MaxTokens           *int              `json:"max_tokens"`
			MaxCompletionTokens *int              `json:"max_completion_tokens"`
			N                   *int              `json:"n"`
		}
		if err := json.Unmarshal(req.Body, &m); err != nil {
			t.Fatalf("upstream body %s: %v", req.Body, err)
		}
		if (m.Model != "a" && m.Model != "b") || len(m.Messages) > 2 || req.PromptChars > 50 ||
			(m.N != nil && *m.N > 1) || req.MaxTokens > 100 || (m.MaxTokens == nil && m.MaxCompletionTokens == nil) ||
			(m.MaxTokens != nil && *m.MaxTokens > 100) || (m.MaxCompletionTokens != nil && *m.MaxCompletionTokens > 100) {
			t.Fatalf("out of limits: %s", req.Body)
		}
	})
}
