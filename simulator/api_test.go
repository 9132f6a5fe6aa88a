package simulator

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
)

type embeddingList struct {
	Object string `json:"object"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Model string `json:"model"`
	Usage struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

func (l *embeddingList) vector(t *testing.T, i int) []float32 {
	t.Helper()
	var v []float32
	if json.Unmarshal(l.Data[i].Embedding, &v) == nil {
		return v
	}
	var s string
	if err := json.Unmarshal(l.Data[i].Embedding, &s); err != nil {
		t.Fatalf("embedding %s", l.Data[i].Embedding)
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(raw)%4 != 0 {
		t.Fatalf("base64 embedding %q: %v", s, err)
	}
	for j := 0; j < len(raw); j += 4 {
		v = append(v, math.Float32frombits(binary.LittleEndian.Uint32(raw[j:])))
	}
	return v
}

func embedList(t *testing.T, h *harness, body string) *embeddingList {
	t.Helper()
	resp := h.post(t, context.Background(), "/v1/embeddings", body)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var l embeddingList
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		t.Fatal(err)
	}
	return &l
}

func TestEmbeddings(t *testing.T) {
	h := newHarness(t, Config{})
	l := embedList(t, h, `{"model":"text-embedding-3-small","input":["hello world","other text","hello world"]}`)
	if l.Object != "list" || len(l.Data) != 3 || l.Model != "text-embedding-3-small" || l.Usage.PromptTokens != 6 || l.Usage.TotalTokens != 6 {
		t.Fatalf("list %+v", l)
	}
	a, b, c := l.vector(t, 0), l.vector(t, 1), l.vector(t, 2)
	var norm float64
	for _, x := range a {
		norm += float64(x) * float64(x)
	}
	if len(a) != DefaultDimensions || math.Abs(norm-1) > 1e-5 || l.Data[1].Index != 1 || l.Data[0].Object != "embedding" {
		t.Errorf("%d dimensions, norm %v, entry %+v", len(a), norm, l.Data[1])
	}
	if !equal(a, c) || equal(a, b) {
		t.Error("the same text must get the same vector, and another text another")
	}

	// base64 is the same vector; dimensions and token input are taken.
	l = embedList(t, h, `{"model":"m","input":"hello world","encoding_format":"base64","dimensions":3}`)
	if v := l.vector(t, 0); len(v) != 3 {
		t.Errorf("base64 vector %v", v)
	}
	full := embedList(t, h, `{"model":"m","input":"hello world","dimensions":3}`).vector(t, 0)
	if !equal(l.vector(t, 0), full) {
		t.Error("base64 and float differ")
	}
	if l := embedList(t, h, `{"model":"m","input":[[1,2],[3]]}`); len(l.Data) != 2 {
		t.Errorf("token arrays: %+v", l)
	}
}

func equal(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAPIRequestErrors(t *testing.T) {
	h := newHarness(t, Config{})
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		typ                      string
	}{
		{"empty input", "POST", "/v1/embeddings", `{"model":"m","input":""}`, 400, "invalid_request_error"},
		{"bad dimensions", "POST", "/v1/embeddings", `{"model":"m","input":"x","dimensions":0}`, 400, "invalid_request_error"},
		{"bad format", "POST", "/v1/embeddings", `{"model":"m","input":"x","encoding_format":"int8"}`, 400, "invalid_request_error"},
		{"embeddings sim-error", "POST", "/v1/embeddings", `{"model":"sim-error-503","input":"x"}`, 503, "server_error"},
		{"GET embeddings", "GET", "/v1/embeddings", ``, 405, "invalid_request_error"},
		{"no prompt", "POST", "/v1/completions", `{"model":"m"}`, 400, "invalid_request_error"},
		{"completions sim-error", "POST", "/v1/completions", `{"model":"sim-error-429","prompt":"x"}`, 429, "rate_limit_exceeded"},
		{"bad json", "POST", "/v1/completions", `{`, 400, "invalid_request_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, h.srv.URL+tc.path, strings.NewReader(tc.body))
			resp, err := h.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			checkErrorBody(t, resp, tc.status, tc.typ)
		})
	}
}

type textCompletionJSON struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Text         string  `json:"text"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

func TestCompletions(t *testing.T) {
	h := newHarness(t, Config{Chunks: 6})
	resp := h.post(t, context.Background(), "/v1/completions",
		`{"model":"gpt-3.5-turbo-instruct","prompt":"hello there","stream":true,"stream_options":{"include_usage":true}}`)
	defer resp.Body.Close()
	s := readStream(resp.Body)
	if resp.Header.Get("Content-Type") != "text/event-stream" || s.err != nil || !s.done {
		t.Fatalf("stream %q", s.bytes)
	}
	var text, finish string
	usage := 0
	for _, d := range s.data {
		var c textCompletionJSON
		if err := json.Unmarshal([]byte(d), &c); err != nil || c.Object != "text_completion" || !strings.HasPrefix(c.ID, "cmpl-sim-") {
			t.Fatalf("chunk %s: %v", d, err)
		}
		for _, ch := range c.Choices {
			text += ch.Text
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
		if c.Usage != nil {
			usage = c.Usage.CompletionTokens
		}
	}
	if want := expected("hello there", 6); text != want || finish != "stop" || usage != 6 || len(s.data) != 8 {
		t.Errorf("text %q finish %q usage %d, %d events; want %q", text, finish, usage, len(s.data), want)
	}

	resp = h.post(t, context.Background(), "/v1/completions", `{"model":"m","prompt":["hello"],"max_tokens":2}`)
	defer resp.Body.Close()
	var c textCompletionJSON
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || c.Choices[0].Text != "Echo: hello " ||
		*c.Choices[0].FinishReason != "length" || c.Usage.CompletionTokens != 2 {
		t.Errorf("whole completion %+v, %v", c, err)
	}
}

// sseEvent is one event of a typed stream.
type sseEvent struct{ typ, data string }

func readEvents(t *testing.T, r io.Reader) []sseEvent {
	t.Helper()
	var out []sseEvent
	var ev sseEvent
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.data != "" {
				out = append(out, ev)
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			ev.typ = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[len("data: "):]
		}
	}
	return out
}

// messageStream gathers a typed stream: its event types in order, the text
// of its text deltas, and the other deltas by type.
func messageStream(t *testing.T, evs []sseEvent) (types []string, deltas map[string]string, stop string) {
	t.Helper()
	deltas = map[string]string{}
	for _, ev := range evs {
		var d struct {
			Type  string `json:"type"`
			Delta struct {
				Type        string `json:"type"`
				Text        string `json:"text"`
				Thinking    string `json:"thinking"`
				PartialJSON string `json:"partial_json"`
				StopReason  string `json:"stop_reason"`
			} `json:"delta"`
		}
		if err := json.Unmarshal([]byte(ev.data), &d); err != nil || (d.Type != ev.typ) {
			t.Fatalf("event %s: %s (%v)", ev.typ, ev.data, err)
		}
		if len(types) == 0 || types[len(types)-1] != ev.typ {
			types = append(types, ev.typ)
		}
		deltas[d.Delta.Type] += d.Delta.Text + d.Delta.Thinking + d.Delta.PartialJSON
		if d.Delta.StopReason != "" {
			stop = d.Delta.StopReason
		}
	}
	return types, deltas, stop
}

func TestMessagesStream(t *testing.T) {
	h := newHarness(t, Config{Chunks: 5})
	body := func(model string) string {
		return `{"model":"` + model + `","max_tokens":1024,"stream":true,"system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"hi claude"}]}]}`
	}
	for _, tc := range []struct {
		model, types, stop string
		deltas             map[string]string
	}{
		{"claude-sonnet-4", "message_start content_block_start content_block_delta content_block_stop message_delta message_stop", "end_turn",
			map[string]string{"text_delta": expected("hi claude", 5)}},
		{"sim-reasoning", "message_start content_block_start content_block_delta content_block_stop content_block_start content_block_delta content_block_stop message_delta message_stop", "end_turn",
			map[string]string{"text_delta": expected("hi claude", 5), "thinking_delta": strings.Join(reasoningPieces, "")}},
		{"sim-tools", "message_start content_block_start content_block_delta content_block_stop message_delta message_stop", "tool_use",
			map[string]string{"input_json_delta": `{"city": "Paris"}`}},
		{"sim-error-event", "message_start content_block_start content_block_delta error", "", nil},
	} {
		t.Run(tc.model, func(t *testing.T) {
			resp := h.post(t, context.Background(), "/v1/messages", body(tc.model))
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			types, deltas, stop := messageStream(t, readEvents(t, resp.Body))
			if strings.Join(types, " ") != tc.types || stop != tc.stop {
				t.Errorf("events %v stop %q", types, stop)
			}
			for k, want := range tc.deltas {
				if deltas[k] != want {
					t.Errorf("%s %q, want %q", k, deltas[k], want)
				}
			}
		})
	}
}

func TestMessagesWholeAndErrors(t *testing.T) {
	h := newHarness(t, Config{Chunks: 5})
	resp := h.post(t, context.Background(), "/v1/messages", `{"model":"claude","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	var m struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Role    string `json:"role"`
		Content []struct {
			Type, Text string
		} `json:"content"`
		StopReason string `json:"stop_reason"`
		Usage      struct {
			InputTokens  int `json:"input_tokens"`
			OutputTokens int `json:"output_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || m.Type != "message" || m.Role != "assistant" ||
		!strings.HasPrefix(m.ID, "msg_sim_") || len(m.Content) != 1 || m.Content[0].Text != expected("hi", 3) ||
		m.StopReason != "max_tokens" || m.Usage.InputTokens != 1 || m.Usage.OutputTokens != 3 {
		t.Errorf("message %+v, %v", m, err)
	}

	for _, tc := range []struct {
		body   string
		status int
		typ    string
	}{
		{`{"model":"claude","messages":[{"role":"user","content":"hi"}]}`, 400, "invalid_request_error"},
		{`{"model":"sim-error-429","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, 429, "rate_limit_error"},
		{`{"model":"sim-error-529","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, 529, "overloaded_error"},
	} {
		resp := h.post(t, context.Background(), "/v1/messages", tc.body)
		defer resp.Body.Close()
		var e struct {
			Type  string `json:"type"`
			Error struct{ Type, Message string }
		}
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != tc.status ||
			e.Type != "error" || e.Error.Type != tc.typ || e.Error.Message == "" {
			t.Errorf("%s: %d %+v %v", tc.body, resp.StatusCode, e, err)
		}
	}
}
