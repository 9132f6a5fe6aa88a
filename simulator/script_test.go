package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestReasoning(t *testing.T) {
	h := newHarness(t, Config{Chunks: 5})
	resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody("sim-reasoning", "hi", true, ""))
	defer resp.Body.Close()
	s := readStream(resp.Body)
	d := decode(t, s.data)
	if d.reasoning != strings.Join(reasoningPieces, "") || d.content != expected("hi", 5) || d.finish != "stop" || !s.done {
		t.Fatalf("reasoning %q content %q finish %q done %v", d.reasoning, d.content, d.finish, s.done)
	}
	// All reasoning comes before any content.
	seenContent := false
	for _, c := range d.chunks {
		dl := c.Choices[0].Delta
		if dl.Content != nil && *dl.Content != "" {
			seenContent = true
		}
		if dl.ReasoningContent != nil && seenContent {
			t.Fatal("reasoning after content")
		}
	}
}

func TestTools(t *testing.T) {
	h := newHarness(t, Config{})
	resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody("sim-tools", "weather?", true, ""))
	defer resp.Body.Close()
	s := readStream(resp.Body)
	d := decode(t, s.data)
	if d.args != `{"city":"Paris"}` || d.finish != "tool_calls" || d.content != "" || !s.done {
		t.Fatalf("args %q finish %q content %q done %v", d.args, d.finish, d.content, s.done)
	}
	head := d.chunks[1].Choices[0].Delta.ToolCalls
	if len(head) != 1 || head[0].ID != "call_sim_1" || head[0].Type != "function" ||
		head[0].Function.Name != "get_weather" || head[0].Function.Arguments != "" {
		t.Fatalf("first tool delta %s", s.data[1])
	}
	if len(d.chunks) < 5 {
		t.Fatalf("arguments not streamed in pieces: %d chunks", len(d.chunks))
	}
}

func TestErrorStatus(t *testing.T) {
	h := newHarness(t, Config{})
	tests := []struct {
		status int
		typ    string
	}{
		{400, "invalid_request_error"},
		{401, "authentication_error"},
		{429, "rate_limit_exceeded"},
		{500, "server_error"},
		{503, "server_error"},
	}
	for _, tc := range tests {
		for _, stream := range []bool{true, false} {
			model := "sim-error-" + strconv.Itoa(tc.status)
			t.Run(model+"/stream="+strconv.FormatBool(stream), func(t *testing.T) {
				resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody(model, "x", stream, ""))
				defer resp.Body.Close()
				if ra := resp.Header.Get("Retry-After"); (tc.status == 429) != (ra == "1") {
					t.Errorf("Retry-After %q", ra)
				}
				checkErrorBody(t, resp, tc.status, tc.typ)
			})
		}
	}
}

func TestErrorEvent(t *testing.T) {
	h := newHarness(t, Config{})
	resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody("sim-error-event", "x", true, ""))
	defer resp.Body.Close()
	s := readStream(resp.Body)
	if s.done || s.err != nil {
		t.Fatalf("done %v err %v", s.done, s.err)
	}
	last := s.data[len(s.data)-1]
	if last != `{"error":{"message":"simulated upstream error","type":"server_error","code":null}}` {
		t.Fatalf("last event %s", last)
	}
	if d := decode(t, s.data[:len(s.data)-1]); len(d.contents) != faultAfter {
		t.Errorf("%d content chunks before the error, want %d", len(d.contents), faultAfter)
	}
}

func TestReset(t *testing.T) {
	for _, stream := range []bool{true, false} {
		t.Run("stream="+strconv.FormatBool(stream), func(t *testing.T) {
			h := newHarness(t, Config{})
			resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody("sim-reset", "x", stream, ""))
			defer resp.Body.Close()
			s := readStream(resp.Body)
			if s.err == nil || errors.Is(s.err, io.EOF) {
				t.Fatalf("read error %v, want a broken body", s.err)
			}
			if stream && len(s.data) != 1+faultAfter {
				t.Errorf("%d events before the reset, want %d", len(s.data), 1+faultAfter)
			}
			h.waitExit(t)
		})
	}
}

func TestStallsEndWhenClientLeaves(t *testing.T) {
	tests := []struct {
		model  string
		stream bool
		events int // to read before leaving
	}{
		{"sim-stall", true, 1 + faultAfter},
		{"sim-stall-first", true, 0},
		{"sim-stall", false, 0},
		{"sim-long-1000000", true, 50},
		{"sim-slow-10000", true, 1},
	}
	for _, tc := range tests {
		t.Run(tc.model+"/stream="+strconv.FormatBool(tc.stream), func(t *testing.T) {
			h := newHarness(t, Config{})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			resp := h.post(t, ctx, "/v1/chat/completions", chatBody(tc.model, "x", tc.stream, ""))
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			buf := make([]byte, 1)
			for seen := 0; seen < tc.events; {
				if _, err := io.ReadFull(resp.Body, buf); err != nil {
					t.Fatal(err)
				}
				if buf[0] == '\n' {
					// Events end with a blank line: count the second newline.
					if _, err := io.ReadFull(resp.Body, buf); err != nil {
						t.Fatal(err)
					}
					if buf[0] == '\n' {
						seen++
					}
				}
			}
			if h.live.Load() != 1 {
				t.Fatalf("%d live handlers, want 1", h.live.Load())
			}
			cancel()
			h.waitExit(t)
		})
	}
}

func TestStallFirstNonStreamingSendsNothing(t *testing.T) {
	h := newHarness(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.srv.URL+"/v1/chat/completions",
			strings.NewReader(chatBody("sim-stall-first", "x", false, "")))
		resp, err := h.srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		got <- err
	}()
	// Give the request time to arrive; then it must still be waiting.
	for h.live.Load() == 0 {
		select {
		case err := <-got:
			t.Fatalf("request ended before reaching the handler: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	select {
	case err := <-got:
		t.Fatalf("response arrived: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Errorf("client error %v, want context.Canceled", err)
	}
	h.waitExit(t)
}

// unwrapOnly hides http.Flusher the way many middleware writers do, while
// still letting http.ResponseController reach the real writer.
type unwrapOnly struct{ rw http.ResponseWriter }

func (u unwrapOnly) Header() http.Header         { return u.rw.Header() }
func (u unwrapOnly) Write(b []byte) (int, error) { return u.rw.Write(b) }
func (u unwrapOnly) WriteHeader(code int)        { u.rw.WriteHeader(code) }
func (u unwrapOnly) Unwrap() http.ResponseWriter { return u.rw }

func TestFlushesThroughWrappers(t *testing.T) {
	sim := New(Config{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sim.ServeHTTP(unwrapOnly{w}, r)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/chat/completions",
		strings.NewReader(chatBody("sim-stall", "x", true, "")))
	// Do returns only once the headers are flushed; the chunks before the
	// stall arrive only if each one is flushed.
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	want := 0
	buf := make([]byte, 4096)
	var got strings.Builder
	for want < 1+faultAfter {
		n, err := resp.Body.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got.Write(buf[:n])
		want = strings.Count(got.String(), "\n\n")
	}
}

func TestGarbage(t *testing.T) {
	h := newHarness(t, Config{})
	resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody("sim-garbage", "x", true, ""))
	defer resp.Body.Close()
	s := readStream(resp.Body)
	if !s.done || s.err != nil {
		t.Fatalf("done %v err %v", s.done, s.err)
	}
	last := s.data[len(s.data)-1]
	if last != "{not json" || json.Valid([]byte(last)) {
		t.Fatalf("last data %q", last)
	}
	if !strings.HasSuffix(s.bytes, "data: {not json\n\ndata: [DONE]\n\n") {
		t.Errorf("tail %q", s.bytes)
	}
	decode(t, s.data[:len(s.data)-1])

	resp2 := h.post(t, context.Background(), "/v1/chat/completions", chatBody("sim-garbage", "x", false, ""))
	defer resp2.Body.Close()
	raw, err := io.ReadAll(resp2.Body)
	if err != nil || resp2.StatusCode != 200 || json.Valid(raw) {
		t.Errorf("non-streaming: status %d, body %q, err %v", resp2.StatusCode, raw, err)
	}
}

func TestNoDone(t *testing.T) {
	h := newHarness(t, Config{Chunks: 4})
	resp := h.post(t, context.Background(), "/v1/chat/completions",
		chatBody("sim-no-done", "x", true, `"stream_options":{"include_usage":true}`))
	defer resp.Body.Close()
	s := readStream(resp.Body)
	d := decode(t, s.data)
	if s.done || s.err != nil || d.finish != "stop" || d.content != expected("x", 4) {
		t.Fatalf("done %v err %v finish %q content %q", s.done, s.err, d.finish, d.content)
	}
	if d.chunks[len(d.chunks)-1].Usage == nil {
		t.Error("no usage chunk")
	}
}

func TestMaxTokensLength(t *testing.T) {
	h := newHarness(t, Config{Chunks: 10})
	for _, field := range []string{"max_tokens", "max_completion_tokens"} {
		t.Run(field, func(t *testing.T) {
			resp := h.post(t, context.Background(), "/v1/chat/completions",
				chatBody("m", "a b c", true, `"`+field+`":3,"n":4`))
			defer resp.Body.Close()
			d := decode(t, readStream(resp.Body).data)
			if len(d.contents) != 3 || d.finish != "length" || d.content != expected("a b c", 3) {
				t.Fatalf("%d chunks, finish %q, content %q", len(d.contents), d.finish, d.content)
			}
		})
	}
	// A cap above the reply's length changes nothing.
	resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody("m", "a", true, `"max_tokens":100`))
	defer resp.Body.Close()
	if d := decode(t, readStream(resp.Body).data); len(d.contents) != 10 || d.finish != "stop" {
		t.Fatalf("%d chunks, finish %q", len(d.contents), d.finish)
	}
}

func TestPacing(t *testing.T) {
	tests := []struct {
		name, model string
		cfg         Config
		min         time.Duration
	}{
		{"chunk interval", "m", Config{ChunkInterval: 20 * time.Millisecond, Chunks: 5}, 80 * time.Millisecond},
		{"sim-slow overrides it", "sim-slow-30", Config{ChunkInterval: time.Millisecond, Chunks: 4}, 90 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.cfg)
			start := time.Now()
			resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody(tc.model, "x", true, ""))
			defer resp.Body.Close()
			s := readStream(resp.Body)
			if took := time.Since(start); took < tc.min {
				t.Errorf("stream took %v, want at least %v", took, tc.min)
			}
			if !s.done {
				t.Error("no [DONE]")
			}
		})
	}
}

// TestPauseRange checks that a chunk_interval range draws each pause from
// the whole range, and that sim-slow-<ms> fixes the pause again.
func TestPauseRange(t *testing.T) {
	s := New(Config{ChunkInterval: 20 * time.Millisecond, ChunkIntervalMax: 50 * time.Millisecond})
	rp, why := s.plan(&chatRequest{Messages: []chatMessage{{Role: "user", Content: []byte(`"x"`)}}}, nil)
	if rp == nil {
		t.Fatal(why)
	}
	var low, high bool
	for range 1000 {
		d := rp.pause()
		if d < 20*time.Millisecond || d > 50*time.Millisecond {
			t.Fatalf("pause %v outside 20ms..50ms", d)
		}
		low = low || d < 30*time.Millisecond
		high = high || d > 40*time.Millisecond
	}
	if !low || !high {
		t.Errorf("pauses do not spread over the range (below 30ms: %v, above 40ms: %v)", low, high)
	}
	rp.apply(parseModel("sim-slow-7"))
	if d := rp.pause(); d != 7*time.Millisecond {
		t.Errorf("sim-slow-7 pause %v, want 7ms", d)
	}
	// A maximum below the interval is no range.
	if s := New(Config{ChunkInterval: 20 * time.Millisecond, ChunkIntervalMax: time.Millisecond}); s.cfg.ChunkIntervalMax != 20*time.Millisecond {
		t.Errorf("max %v, want it raised to the interval", s.cfg.ChunkIntervalMax)
	}
}

func TestStamp(t *testing.T) {
	h := newHarness(t, Config{ChunkInterval: time.Millisecond, Chunks: 5})
	before := time.Now().UnixNano()
	resp := h.post(t, context.Background(), "/v1/chat/completions", chatBody("sim-stamp", "x", true, ""))
	defer resp.Body.Close()
	d := decode(t, readStream(resp.Body).data)
	if len(d.contents) != 5 {
		t.Fatalf("%d content chunks", len(d.contents))
	}
	prev := before
	for _, c := range d.contents {
		v, ok := strings.CutSuffix(c, " ")
		ns, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			t.Fatalf("content %q is not a stamp", c)
		}
		if ns <= prev {
			t.Fatalf("stamp %d does not increase past %d", ns, prev)
		}
		prev = ns
	}
}

func TestParseModel(t *testing.T) {
	tests := []struct {
		name string
		want spec
	}{
		{"gpt-4o", spec{}},
		{"sim-error-429", spec{status: 429}},
		{"sim-error-200", spec{}},
		{"sim-error-+429", spec{}},
		{"sim-slow-0", spec{slow: true}},
		{"sim-slow-99999999999999999999", spec{slow: true, interval: MaxSlow}},
		{"sim-long-0", spec{}},
		{"sim-long-5000000", spec{chunks: MaxLong}},
		{"sim-stall-first", spec{kind: stallFirst}},
	}
	for _, tc := range tests {
		if got := parseModel(tc.name); got != tc.want {
			t.Errorf("parseModel(%q) = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func FuzzAppendJSONText(f *testing.F) {
	for _, s := range []string{"", "plain", `"quoted" \back\`, "\x00\x01\x1f\x7f", "tab\tnl\ncr\r",
		"流式 naïve 🙂", "\u2028\u2029", "bad \xff\xfe utf8 \xe6\xb5", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := append(appendJSONText([]byte{'"'}, s), '"')
		var back, want string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q: not a JSON string: %v", got, err)
		}
		std, _ := json.Marshal(s)
		if err := json.Unmarshal(std, &want); err != nil {
			t.Fatal(err)
		}
		if back != want {
			t.Fatalf("%q decodes to %q, want %q", s, back, want)
		}
	})
}

// BenchmarkStream measures the simulator's own cost per streamed chunk.
func BenchmarkStream(b *testing.B) {
	sim := New(Config{Chunks: 1000})
	body := chatBody("m", "benchmark the simulator please", true, `"stream_options":{"include_usage":true}`)
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
		sim.ServeHTTP(discard{h: http.Header{}}, r)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/chunk")
}

type discard struct{ h http.Header }

func (d discard) Header() http.Header         { return d.h }
func (d discard) Write(b []byte) (int, error) { return len(b), nil }
func (d discard) WriteHeader(int)             {}
func (d discard) Flush()                      {}
