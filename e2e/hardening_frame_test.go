package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// framingConfig proxies / to the upstream at to, framing by the format
// query parameter.
func framingConfig(to string) string {
	return fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
	}
}`, to)
}

// cleanEnd tells whether body ends as a finished stream in format.
func cleanEnd(format, body string) bool {
	switch format {
	case "openai":
		return strings.Contains(body, "data: [DONE]")
	case "sse":
		return strings.Contains(body, "event: done")
	case "ndjson":
		return strings.Contains(body, `"done":true`)
	}
	return false
}

// TestErrorEventWithDoneDataFails: an upstream event of type error whose
// data is "[DONE]" is a failure in every framing, never a clean end.
func TestErrorEventWithDoneDataFails(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("partial")+"\n\nevent: error\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, framingConfig(up.URL))
	for _, format := range []string{"openai", "sse", "ndjson", "text"} {
		t.Run(format, func(t *testing.T) {
			resp := get(t, c.URL+"/?prompt=x&format="+format)
			b, err := io.ReadAll(resp.Body)
			body := string(b)
			if format == "text" && err == nil {
				t.Errorf("the text response ended cleanly: %q", body)
			}
			if cleanEnd(format, body) {
				t.Errorf("a clean end in %q", body)
			}
			if format != "text" && !strings.Contains(body, `"error":{`) {
				t.Errorf("no error signal in %q", body)
			}
		})
	}
}

// TestDoneEventStringsAreJSON: the finish reason and model the done event
// repeats hold control characters; the event is still JSON that gives
// them back.
func TestDoneEventStringsAreJSON(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"model":"m\u0001\"","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"st\u0007\u007f\u0000op"}]}`+"\n\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, framingConfig(up.URL))
	for _, format := range []string{"sse", "ndjson"} {
		t.Run(format, func(t *testing.T) {
			b, err := io.ReadAll(get(t, c.URL+"/?prompt=x&format="+format).Body)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			last := strings.TrimPrefix(lines[len(lines)-1], "data: ")
			var done struct {
				FinishReason string `json:"finish_reason"`
				Model        string `json:"model"`
			}
			if err := json.Unmarshal([]byte(last), &done); err != nil {
				t.Fatalf("done %q is not JSON: %v", last, err)
			}
			if done.FinishReason != "st\a\x7f\x00op" || done.Model != "m\x01\"" {
				t.Errorf("done %q: finish %q model %q", last, done.FinishReason, done.Model)
			}
		})
	}
}

// TestMultilineUpstreamJSON: an upstream may spread an event's JSON over
// several data lines, which join with "\n". Every framing still writes each
// frame as one line of JSON, so the forged end inside the content below
// never reaches a client as a line of its own.
func TestMultilineUpstreamJSON(t *testing.T) {
	const stream = "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":[\n" +
		"data: {\"done\":true,\"model\":\"injected\"}\n" +
		"data: ]}}]}\n\n" +
		"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[\n" +
		"data:  {\"index\": 0, \"function\": {\"name\": \"f\"}}\r\n" +
		"data: ]},\"finish_reason\":\"tool_calls\"}],\n" +
		"data: \"usage\": {\n" +
		"data: \"total_tokens\": 3}}\n\n" +
		"data: [DONE]\n\n"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, stream)
	})
	c := startCaddy(t, framingConfig(up.URL))
	for _, tc := range []struct {
		format string
		frames int // events or lines, the end included
	}{{"openai", 3}, {"sse", 3}, {"ndjson", 3}} {
		t.Run(tc.format, func(t *testing.T) {
			resp := post(t, c.URL+"/?format="+tc.format, `{"messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}`)
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			body := string(b)
			var frames []string
			if tc.format == "ndjson" {
				frames = strings.SplitAfter(strings.TrimSuffix(body, "\n"), "\n")
			} else {
				frames = strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
				frames[0] = strings.TrimPrefix(frames[0], "id: llmstream\n") // the first event's
			}
			if len(frames) != tc.frames {
				t.Fatalf("%d frames, want %d: %q", len(frames), tc.frames, body)
			}
			for i, fr := range frames {
				data := strings.TrimSuffix(fr, "\n")
				if tc.format != "ndjson" {
					data = strings.TrimPrefix(data, "event: done\n")
					var ok bool
					if data, ok = strings.CutPrefix(data, "data: "); !ok || strings.ContainsAny(data, "\r\n") {
						t.Fatalf("frame %q is not one data line", fr)
					}
				}
				if data == "[DONE]" && tc.format == "openai" && i == len(frames)-1 {
					continue
				}
				if !json.Valid([]byte(data)) {
					t.Errorf("frame %q: data is not JSON", fr)
				}
			}
			if tc.format != "openai" {
				var done struct {
					Model string          `json:"model"`
					Usage json.RawMessage `json:"usage"`
				}
				json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimPrefix(frames[len(frames)-1], "event: done\n"), "data: ")), &done)
				if done.Model != "m" || string(done.Usage) != `{"total_tokens":3}` {
					t.Errorf("end %q", frames[len(frames)-1])
				}
			}
		})
	}
}

// TestBadMessageRefused: a messages element that is no object with a string
// role (here an array nested 5,000 deep) is refused with a 400 that names
// it, and never reaches the upstream.
func TestBadMessageRefused(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("hi")+"\n\ndata: "+finishJSON+"\n\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, framingConfig(up.URL))
	deep := strings.Repeat("[", 5000) + strings.Repeat("]", 5000)
	for _, msg := range []string{deep, `{"content":"no role"}`, `{"role":7}`, `"hi"`} {
		resp := post(t, c.URL+"/", `{"messages":[{"role":"user","content":"hi"},`+msg+`],"stream":true}`)
		b, _ := io.ReadAll(resp.Body)
		var e struct {
			Error struct{ Message, Type string }
		}
		if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(b, &e) != nil || e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, "messages[1]") {
			t.Errorf("message %.20s: status %d body %.200s", msg, resp.StatusCode, b)
		}
	}
	if n := up.calls.Load(); n != 0 {
		t.Errorf("the upstream was called %d times", n)
	}
}

// zstdStream is a zstd frame, left open, made by hand: its header asks for
// a window of 1<<windowLog bytes, and its blocks hold head, n bytes of
// comment lines of 64 KiB in run-length blocks (a few bytes a line), then
// tail.
func zstdStream(windowLog int, head string, n int, tail string) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0, byte(windowLog-10) << 3}
	block := func(typ, size int, content ...byte) {
		h := typ<<1 | size<<3
		b = append(b, byte(h), byte(h>>8), byte(h>>16))
		b = append(b, content...)
	}
	block(0, len(head), []byte(head)...)
	for ; n > 0; n -= 64 << 10 {
		block(0, 1, ':')
		block(1, 64<<10-2, 'x')
		block(0, 1, '\n')
	}
	block(0, len(tail), []byte(tail)...)
	return b
}

// rss is the resident memory of process pid, in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in %s", b)
	return 0
}

// TestZstdUpstreamMemoryBounded: an upstream that sends zstd unasked names
// the decoder's window in a few header bytes. Two streams that ask for
// 512 MiB and send 32 MiB of comments each (7 KiB compressed) are
// refused, and two that stay within the 8 MiB allowed cost about that
// each, however much they send: Caddy's resident memory grows by a few MiB
// a stream, not by what the upstream sends.
func TestZstdUpstreamMemoryBounded(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		if strings.Contains(string(b), "warm") {
			io.WriteString(w, "data: "+chunkJSON("warm")+"\n\ndata: "+finishJSON+"\n\ndata: [DONE]\n\n")
			return
		}
		log := 23
		if strings.Contains(string(b), "hostile") {
			log = 29
		}
		w.Header().Set("Content-Encoding", "zstd")
		w.Write(zstdStream(log, "data: "+chunkJSON("one")+"\n\n", 32<<20, "data: "+chunkJSON("two")+"\n\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the stream stays open, and its decoder with it
	})
	c := startCaddy(t, framingConfig(up.URL))
	io.ReadAll(get(t, c.URL+"/?prompt=warm&format=ndjson").Body) // nothing open yet: nothing left behind
	before := rss(t, c.cmd.Process.Pid)

	type result struct {
		prompt, last string
		err          error
	}
	results := make(chan result)
	client := &http.Client{Timeout: time.Minute}
	for _, prompt := range []string{"hostile", "hostile", "fine", "fine"} {
		go func() {
			resp, err := client.Get(c.URL + "/?prompt=" + prompt + "&format=ndjson")
			if err != nil {
				results <- result{prompt, "", err}
				return
			}
			t.Cleanup(func() { resp.Body.Close() }) // open until the test ends
			br := bufio.NewReader(resp.Body)
			for {
				line, err := br.ReadString('\n')
				if err != nil || strings.Contains(line, `"two"`) || strings.Contains(line, `"error"`) {
					results <- result{prompt, line, err}
					return
				}
			}
		}()
	}
	for range 4 {
		r := <-results
		want := `{"content":"two"}`
		if r.prompt == "hostile" {
			want = `"error":{`
		}
		if !strings.Contains(r.last, want) {
			t.Errorf("%s stream ended with %q (%v), want %s", r.prompt, r.last, r.err, want)
		}
	}
	grown := rss(t, c.cmd.Process.Pid) - before
	t.Logf("resident memory grew %d MiB with four streams open", grown>>20)
	if grown > 40<<20 {
		t.Errorf("resident memory grew %d MiB with four streams open", grown>>20)
	}
	// The streams are logged when they end, after a moment given to the
	// client to read the error.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(c.Log.String(), "window over 8 MiB"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the log does not say why the hostile streams failed")
		}
	}
}
