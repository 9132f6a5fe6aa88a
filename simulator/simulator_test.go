package simulator

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// harness is a simulator behind an httptest.Server that counts handler
// exits, so tests can tell that a handler returned once its client left.
type harness struct {
	srv    *httptest.Server
	exited chan struct{}
	live   atomic.Int64
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{exited: make(chan struct{}, 1024)}
	sim := New(cfg)
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.live.Add(1)
		defer func() {
			h.live.Add(-1)
			h.exited <- struct{}{}
		}()
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *harness) post(t *testing.T, ctx context.Context, path, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// waitExit fails the test if no handler returns. The bound only catches a
// hung handler; it asserts nothing about speed.
func (h *harness) waitExit(t *testing.T) {
	t.Helper()
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not return after the client left")
	}
}

// stream is a parsed SSE body.
type stream struct {
	data  []string // data payloads, [DONE] excluded
	done  bool     // saw data: [DONE]
	err   error    // read error other than a clean io.EOF
	bytes string
}

func readStream(r io.Reader) stream {
	var s stream
	var all strings.Builder
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		all.WriteString(line)
		if p, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "data: "); ok {
			if p == "[DONE]" {
				s.done = true
			} else {
				s.data = append(s.data, p)
			}
		}
		if err != nil {
			if err != io.EOF {
				s.err = err
			}
			s.bytes = all.String()
			return s
		}
	}
}

type chunkJSON struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role             *string        `json:"role"`
			Content          *string        `json:"content"`
			ReasoningContent *string        `json:"reasoning_content"`
			ToolCalls        []toolCallJSON `json:"tool_calls"`
		} `json:"delta"`
		Logprobs     json.RawMessage `json:"logprobs"`
		FinishReason *string         `json:"finish_reason"`
	} `json:"choices"`
	Usage json.RawMessage `json:"usage"`
}

type toolCallJSON struct {
	Index    int    `json:"index"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// decoded is a stream's chunks with their text gathered.
type decoded struct {
	chunks    []chunkJSON
	content   string
	reasoning string
	args      string
	finish    string
	contents  []string
}

func decode(t *testing.T, datas []string) decoded {
	t.Helper()
	var d decoded
	for _, raw := range datas {
		var c chunkJSON
		if err := json.Unmarshal([]byte(raw), &c); err != nil {
			t.Fatalf("event is not JSON: %v: %s", err, raw)
		}
		if c.Object != "chat.completion.chunk" {
			t.Fatalf("object %q, want chat.completion.chunk", c.Object)
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content != nil && *ch.Delta.Content != "" {
				d.content += *ch.Delta.Content
				d.contents = append(d.contents, *ch.Delta.Content)
			}
			if ch.Delta.ReasoningContent != nil {
				d.reasoning += *ch.Delta.ReasoningContent
			}
			for _, tc := range ch.Delta.ToolCalls {
				d.args += tc.Function.Arguments
			}
			if ch.FinishReason != nil {
				d.finish = *ch.FinishReason
			}
		}
		d.chunks = append(d.chunks, c)
	}
	return d
}

func chatBody(model, prompt string, stream bool, extra string) string {
	b, _ := json.Marshal(prompt)
	s := `{"model":"` + model + `","messages":[{"role":"system","content":"be brief"},{"role":"user","content":` +
		string(b) + `}],"stream":` + strconv.FormatBool(stream)
	if extra != "" {
		s += "," + extra
	}
	return s + "}"
}

// expected builds the reply text independently of the simulator's code.
func expected(prompt string, n int) string {
	words := append([]string{"Echo:"}, strings.Fields(prompt)...)
	for i := 0; len(words) < n; i++ {
		words = append(words, filler[i%len(filler)])
	}
	return strings.Join(words[:n], " ") + " "
}

func TestStreamText(t *testing.T) {
	tests := []struct {
		name, model, prompt string
		chunks              int
		wantModel           string
		wantChunks          int
	}{
		{"default model", "", "hello world", 0, DefaultModel, DefaultChunks},
		{"named model", "gpt-4o-mini", "hello world", 6, "gpt-4o-mini", 6},
		{"prompt longer than reply", "x", "one two three four five six seven", 4, "x", 4},
		{"escapes", "x", "say \"hi\" \\ \x01 <b> \u2028", 8, "x", 8},
		{"long", "sim-long-300", "hi", 5, "sim-long-300", 300},
		{"malformed family is a plain name", "sim-long-x", "hi", 5, "sim-long-x", 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{Chunks: tc.chunks})
			resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody(tc.model, tc.prompt, true, ""))
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
				t.Errorf("Content-Type %q", ct)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
				t.Errorf("Cache-Control %q", cc)
			}
			s := readStream(resp.Body)
			if s.err != nil || !s.done {
				t.Fatalf("err %v, done %v", s.err, s.done)
			}
			d := decode(t, s.data)
			if want := expected(tc.prompt, tc.wantChunks); d.content != want {
				t.Errorf("content\n got %q\nwant %q", d.content, want)
			}
			if len(d.contents) != tc.wantChunks {
				t.Errorf("%d content chunks, want %d", len(d.contents), tc.wantChunks)
			}
			if d.finish != "stop" {
				t.Errorf("finish %q", d.finish)
			}
			first := d.chunks[0].Choices[0].Delta
			if first.Role == nil || *first.Role != "assistant" || first.Content == nil || *first.Content != "" {
				t.Errorf("first delta is not the role chunk: %s", s.data[0])
			}
			last := d.chunks[len(d.chunks)-1]
			if last.Choices[0].FinishReason == nil || last.Choices[0].Delta.Content != nil {
				t.Errorf("last chunk should be an empty delta with a finish reason: %s", s.data[len(s.data)-1])
			}
			for i, c := range d.chunks {
				if c.Model != tc.wantModel || !strings.HasPrefix(c.ID, "chatcmpl-sim-") || c.Created == 0 {
					t.Fatalf("chunk %d: model %q id %q created %d", i, c.Model, c.ID, c.Created)
				}
				if c.Usage != nil {
					t.Fatalf("chunk %d has usage without include_usage: %s", i, s.data[i])
				}
				if string(c.Choices[0].Logprobs) != "null" {
					t.Fatalf("chunk %d: logprobs %s", i, c.Choices[0].Logprobs)
				}
			}
			if !strings.HasSuffix(s.bytes, "}\n\ndata: [DONE]\n\n") {
				t.Errorf("stream does not end with [DONE]: %q", s.bytes[max(0, len(s.bytes)-60):])
			}
		})
	}
}

func TestDeterministicAndUTF8(t *testing.T) {
	h := newHarness(t, Config{})
	created := regexp.MustCompile(`"created":\d+`)
	run := func() string {
		resp := h.post(t, context.Background(), "/x/v1/chat/completions",
			chatBody("m", "héllo wörld", true, `"stream_options":{"include_usage":true}`))
		defer resp.Body.Close()
		return created.ReplaceAllString(readStream(resp.Body).bytes, `"created":0`)
	}
	a, b := run(), run()
	if a != b {
		t.Fatalf("two runs differ:\n%s\n%s", a, b)
	}
	for _, w := range []string{"流式", "naïve", "🙂", "héllo"} {
		if !strings.Contains(a, w) {
			t.Errorf("stream lacks %q", w)
		}
	}
	if !utf8.ValidString(a) {
		t.Error("stream is not valid UTF-8")
	}
}

func TestIncludeUsage(t *testing.T) {
	h := newHarness(t, Config{Chunks: 7})
	resp := h.post(t, context.Background(), "/v1/chat/completions",
		chatBody("m", "one two three", true, `"stream_options":{"include_usage":true}`))
	defer resp.Body.Close()
	s := readStream(resp.Body)
	d := decode(t, s.data)
	n := len(d.chunks)
	for i, c := range d.chunks[:n-1] {
		if string(c.Usage) != "null" {
			t.Fatalf("chunk %d: usage %s, want null", i, c.Usage)
		}
	}
	last := d.chunks[n-1]
	if last.Choices == nil || len(last.Choices) != 0 || !strings.Contains(s.data[n-1], `"choices":[]`) {
		t.Fatalf("usage chunk should have empty choices: %s", s.data[n-1])
	}
	var u struct{ PromptTokens, CompletionTokens, TotalTokens int }
	if err := json.Unmarshal(last.Usage, &struct {
		P *int `json:"prompt_tokens"`
		C *int `json:"completion_tokens"`
		T *int `json:"total_tokens"`
	}{&u.PromptTokens, &u.CompletionTokens, &u.TotalTokens}); err != nil {
		t.Fatal(err)
	}
	// "be brief" + "one two three"
	if u.PromptTokens != 5 || u.CompletionTokens != 7 || u.TotalTokens != 12 {
		t.Errorf("usage %+v, want 5/7/12", u)
	}
	if !s.done {
		t.Error("no [DONE]")
	}
}

type completionJSON struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role             string         `json:"role"`
			Content          *string        `json:"content"`
			ReasoningContent string         `json:"reasoning_content"`
			ToolCalls        []toolCallJSON `json:"tool_calls"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

func complete(t *testing.T, h *harness, body string) (*http.Response, completionJSON) {
	t.Helper()
	resp := h.post(t, context.Background(), "/v1/chat/completions", body)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var c completionJSON
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatalf("body is not JSON: %v: %s", err, raw)
		}
	}
	return resp, c
}

func TestNonStreaming(t *testing.T) {
	h := newHarness(t, Config{Chunks: 6})
	tests := []struct {
		name, model, extra string
		content, finish    string
		completion         int
	}{
		{"normal", "m", "", expected("a b", 6), "stop", 6},
		{"length", "m", `"max_tokens":2`, expected("a b", 2), "length", 2},
		{"reasoning", "sim-reasoning", "", expected("a b", 6), "stop", 11},
		{"tools", "sim-tools", "", "", "tool_calls", 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, c := complete(t, h, chatBody(tc.model, "a b", false, tc.extra))
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if c.Object != "chat.completion" || c.Model != tc.model || !strings.HasPrefix(c.ID, "chatcmpl-sim-") || len(c.Choices) != 1 {
				t.Fatalf("bad shape: %+v", c)
			}
			ch := c.Choices[0]
			if ch.Message.Role != "assistant" || ch.FinishReason != tc.finish {
				t.Errorf("role %q finish %q", ch.Message.Role, ch.FinishReason)
			}
			if tc.model == "sim-tools" {
				if ch.Message.Content != nil || len(ch.Message.ToolCalls) != 1 ||
					ch.Message.ToolCalls[0].Function.Arguments != `{"city":"Paris"}` {
					t.Errorf("tool message %+v", ch.Message)
				}
			} else if ch.Message.Content == nil || *ch.Message.Content != tc.content {
				t.Errorf("content %v, want %q", ch.Message.Content, tc.content)
			}
			if tc.model == "sim-reasoning" && ch.Message.ReasoningContent == "" {
				t.Error("no reasoning_content")
			}
			u := c.Usage
			if u.PromptTokens != 4 || u.CompletionTokens != tc.completion || u.TotalTokens != 4+tc.completion {
				t.Errorf("usage %+v, want 4/%d", u, tc.completion)
			}
		})
	}
}

func TestModels(t *testing.T) {
	h := newHarness(t, Config{Model: "my-default"})
	resp, err := h.srv.Client().Get(h.srv.URL + "/sim/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			Created int64  `json:"created"`
			OwnedBy string `json:"owned_by"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || list.Object != "list" {
		t.Fatalf("status %d, %+v", resp.StatusCode, list)
	}
	ids := map[string]bool{}
	for _, m := range list.Data {
		if m.Object != "model" || m.Created == 0 || m.OwnedBy != "llm-simulator" {
			t.Errorf("bad entry %+v", m)
		}
		ids[m.ID] = true
	}
	if list.Data[0].ID != "my-default" {
		t.Errorf("first model %q, want the default", list.Data[0].ID)
	}
	for _, m := range Models {
		if !ids[m.Example] {
			t.Errorf("/models lacks %s", m.Example)
		}
		if parseModel(m.Example) == (spec{}) {
			t.Errorf("example %s selects no behaviour", m.Example)
		}
	}
}

func TestRequestErrors(t *testing.T) {
	h := newHarness(t, Config{})
	tests := []struct {
		name, method, path, body string
		status                   int
	}{
		{"bad json", "POST", "/v1/chat/completions", `{"model":`, 400},
		{"no messages", "POST", "/v1/chat/completions", `{"model":"m"}`, 400},
		{"empty messages", "POST", "/v1/chat/completions", `{"messages":[]}`, 400},
		{"bad content", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":5}]}`, 400},
		{"zero max_tokens", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":0}`, 400},
		{"unknown path", "POST", "/v1/files", `{}`, 404},
		{"root", "GET", "/", "", 404},
		{"GET chat", "GET", "/v1/chat/completions", "", 405},
		{"POST models", "POST", "/v1/models", "{}", 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, h.srv.URL+tc.path, strings.NewReader(tc.body))
			resp, err := h.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			checkErrorBody(t, resp, tc.status, "invalid_request_error")
			if tc.status == 405 && resp.Header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
		})
	}
}

func checkErrorBody(t *testing.T, resp *http.Response, status int, typ string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d", resp.StatusCode, status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var e struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("error body: %v", err)
	}
	if e.Error.Message == "" || e.Error.Type != typ {
		t.Errorf("error %+v, want type %s", e.Error, typ)
	}
}

func TestContentParts(t *testing.T) {
	h := newHarness(t, Config{Chunks: 4})
	body := `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"alpha"},` +
		`{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"beta"}]},` +
		`{"role":"assistant","content":null}]}`
	_, c := complete(t, h, body)
	if got := *c.Choices[0].Message.Content; got != "Echo: alpha beta This " {
		t.Errorf("content %q", got)
	}
}

// The README's model table is Models, written once: every row says what
// Models says, and it lists no name Models lacks.
func TestREADMEListsModels(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(readme), "\n") {
		if name, rest, ok := strings.Cut(strings.TrimPrefix(line, "| `"), "` | "); ok && strings.HasPrefix(line, "| `sim-") {
			rows[name] = strings.TrimSuffix(rest, " |")
		}
	}
	for _, m := range Models {
		if rows[m.Name] != m.Behaviour {
			t.Errorf("README row for %s says %q, Models says %q", m.Name, rows[m.Name], m.Behaviour)
		}
		delete(rows, m.Name)
	}
	for name := range rows {
		t.Errorf("README lists %s, which Models lacks", name)
	}
}
