package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/ssetest"
	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// Resumable streams (issue 17) with the clients people use: Node's
// EventSource resuming by itself through connections that break, the
// SDKs unchanged by the IDs on every event, fetch resuming by hand, and
// resumes a hostile client makes up.

// TestResumeEventSourceNode runs e2e/node/resume_eventsource.test.mjs: the
// eventsource package reads a stream of 40 events through a proxy that
// cuts its first two connections (after 700 bytes, or gzipped, after a
// second), and reconnects by itself with Last-Event-ID, once while the
// stream is live and once after it ended. It assembles the reply exactly,
// and the upstream was asked once.
func TestResumeEventSourceNode(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		framing    string
		last       int // the done's number
		encode     string
	}{
		{"sse", "/chat?prompt=hi", "sse", 41, ""},
		{"openai", "/v1/chat/completions?prompt=hi", "openai", 42, ""}, // the finish_reason chunk, then [DONE]
		{"sse gzipped", "/chat?prompt=hi", "sse", 41, "encode gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := ssetest.NewUpstream(t, 40, 200*time.Millisecond)
			c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	%s
	llm_proxy /chat %s {
		format sse
		resume 1m
	}
	llm_proxy /v1/chat/completions %s {
		resume 1m
	}
}
`, tc.encode, up.URL, up.URL))
			var cp *cutProxy
			if tc.encode == "" {
				cp = newCutProxy(t, c.URL)
				cp.cutFirst(2, 700, 0)
			} else {
				cp = newCutProxy(t, c.URL)
				cp.cutFirst(2, 0, time.Second)
			}
			nodeTest(t, "resume_eventsource.test.mjs", c, "RESUME_URL="+cp.URL+tc.path,
				"RESUME_FRAMING="+tc.framing, "RESUME_WANT="+ssetest.Words(1, 40))
			if n := up.Requests.Load(); n != 1 {
				t.Errorf("the upstream was asked %d times, want once", n)
			}
			// Two resumes from the cuts, each further on, and the reconnect
			// after the done, answered 204.
			ids := cp.lastEventIDs()
			if len(ids) != 3 || !strings.HasSuffix(ids[2], fmt.Sprintf(".%d", tc.last)) {
				t.Fatalf("Last-Event-IDs sent: %q, want 3 ending with .%d", ids, tc.last)
			}
			prev := 0
			for _, id := range ids {
				_, ns, _ := strings.Cut(id, ".")
				n, _ := strconv.Atoi(ns)
				if n <= prev {
					t.Fatalf("Last-Event-IDs sent: %q, not increasing", ids)
				}
				prev = n
			}
			head := strings.ToLower(cp.answered[1].String())
			if gz := strings.Contains(head, "\r\ncontent-encoding: gzip\r\n"); gz != (tc.encode != "") {
				t.Errorf("the resume's answer gzipped: %v, want %v", gz, tc.encode != "")
			}
		})
	}
}

// resumeSimStack starts caddy with llm_simulator on a port of its own and,
// in front of it with resume (`resume 1m`, or "" for none), llm_proxy for
// the whole of /v1/ (as the SDKs' tests want it: heartbeats, the Anthropic
// key header, max_tokens 2000) under `encode zstd gzip`, and /chat in the
// sse framing.
func resumeSimStack(t *testing.T, simOpts, resume string) *caddy {
	t.Helper()
	sim := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	return startCaddy(t, fmt.Sprintf(`http://%s {
	llm_simulator {
		%s
	}
}

http://127.0.0.1:{PORT} {
	encode zstd gzip
	llm_proxy /v1/* {
		to http://%s/v1
		api_key {env.TEST_LLM_KEY}
		auth x-api-key
		max_tokens 2000
		heartbeat 20ms
		%s
	}
	llm_proxy /chat {
		to http://%s/v1
		format sse
		%s
	}
}
`, sim, simOpts, sim, resume, sim, resume), withEnv("TEST_LLM_KEY="+testKey))
}

// TestResumeSDKsUnchanged runs the SDKs' own test files (the OpenAI Node
// SDK's chat completions and Responses streams, the Vercel AI SDK's
// openai.chat(model) and default openai(model), LangChain JS, the
// Anthropic SDK's messages.stream) against one proxy without `resume` and
// with it: they must pass alike, with an ID on every event. Each stack is
// checked first to be resumable on each API, or not, so a pass means
// something.
func TestResumeSDKsUnchanged(t *testing.T) {
	for _, resume := range []string{"", "resume 1m"} {
		t.Run(fmt.Sprintf("resume=%q", resume), func(t *testing.T) {
			c := resumeSimStack(t, "chunk_interval 5ms\n\t\tchunks 8", resume)
			for _, tc := range []struct{ path, body string }{
				{"/v1/chat/completions", `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
				{"/v1/responses", `{"model":"gpt-4o-mini","stream":true,"input":"hi"}`},
				{"/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}`},
			} {
				resp := post(t, c.URL+tc.path, tc.body, "X-Api-Key", "client-key")
				if resume == "" {
					if id := resp.Header.Get("X-Stream-ID"); resp.StatusCode != http.StatusOK || id != "" {
						t.Fatalf("%s without resume: %s, X-Stream-ID %q", tc.path, resp.Status, id)
					}
					continue
				}
				checkNumbered(t, tc.path, resp)
			}
			for _, file := range []string{"openai.test.mjs", "vercel_chat.test.mjs", "responses.test.mjs", "messages.test.mjs"} {
				t.Run(file, func(t *testing.T) {
					nodeTest(t, file, c, "NODE_OPTIONS=--experimental-websocket")
				})
			}
		})
	}
}

// checkNumbered reads an event stream and checks that it is resumable:
// every event (the last, a done, too) starts with `id: <X-Stream-ID>.<n>`,
// n counting from 1.
func checkNumbered(t *testing.T, what string, resp *http.Response) {
	t.Helper()
	id := resp.Header.Get("X-Stream-ID")
	raw, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || id == "" || err != nil {
		t.Fatalf("%s: %s, X-Stream-ID %q, %v: %s", what, resp.Status, id, err, raw)
	}
	n := 0
	for _, block := range strings.Split(string(raw), "\n\n") {
		lines := strings.Split(strings.Trim(block, "\n"), "\n")
		for len(lines) > 0 && (lines[0] == "" || strings.HasPrefix(lines[0], ":")) {
			lines = lines[1:] // heartbeats, the body's end
		}
		if len(lines) == 0 {
			continue
		}
		n++
		if n == 1 && lines[0] == "retry: 1000" {
			lines = lines[1:] // an EventSource reconnects after 1s
		}
		if want := fmt.Sprintf("id: %s.%d", id, n); len(lines) == 0 || lines[0] != want {
			t.Fatalf("%s: event %d starts %q, want %q:\n%s", what, n, lines[0], want, raw)
		}
	}
	if n < 8 {
		t.Fatalf("%s: %d events:\n%s", what, n, raw)
	}
}

// TestResumeFetchNode runs e2e/node/resume_fetch.test.mjs: plain fetch
// reads 3 lines of an ndjson stream, or the bytes of a text one up to the
// middle of a character, aborts, and resumes with Last-Event-ID (ndjson by
// GET and by POST with another prompt). The simulator's 100ms between
// chunks keeps the streams live when resumed. Three streams are started,
// and resumed twice each (the rest, then 204): the upstream is asked for
// the three streams only.
func TestResumeFetchNode(t *testing.T) {
	c := resumeSimStack(t, "chunk_interval 100ms\n\t\tchunks 8", "resume 1m")
	nodeTest(t, "resume_fetch.test.mjs", c)
	m := scrape(t, "http://"+c.Admin+"/metrics")
	for _, want := range []string{
		`caddy_llm_requests_total{`, // summed below
		`caddy_llm_resumes_total{result="resumed"} 3`,
		`caddy_llm_resumes_total{result="ended"} 3`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if n := metricSum(m, "caddy_llm_requests_total"); n != 3 {
		t.Errorf("caddy_llm_requests_total sums to %v, want 3 (one per stream, none per resume)", n)
	}
}

// metricSum adds up a counter's series on a metrics page.
func metricSum(page, name string) float64 {
	var sum float64
	for _, l := range strings.Split(page, "\n") {
		if rest, ok := strings.CutPrefix(l, name+"{"); ok {
			if _, v, ok := strings.Cut(rest, "} "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				sum += f
			}
		}
	}
	return sum
}

// openAIError decodes an error answer in OpenAI's shape.
func openAIError(t *testing.T, what string, resp *http.Response) (status int, typ, code string) {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" || e.Error.Code == nil {
		t.Fatalf("%s: %s, not an OpenAI error with a code: %q", what, resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
	return resp.StatusCode, e.Error.Type, *e.Error.Code
}

// hostileIDs are Last-Event-IDs a client may make up for a stream id that
// has ended after its event last. An EventSource is answered 204 for each;
// a fetch 204 too where the ID is well-formed (it has it all), else 404
// stream_not_found.
func hostileIDs(id string, last int) []struct {
	name, value string
	refused     bool // 404 stream_not_found (204 to an EventSource), else 204 to both
} {
	garbage := strings.Repeat("Zm9vYmFy!~", 1024) // 10 KiB of printable bytes
	return []struct {
		name, value string
		refused     bool
	}{
		{"the last event", fmt.Sprintf("%s.%d", id, last), false},
		{"past the last", fmt.Sprintf("%s.%d", id, last+1), false},
		{"a million", id + ".1000000", false},
		{"the largest int", id + ".9223372036854775807", false},
		{"past int64", id + ".99999999999999999999", false},
		{"negative", id + ".-1", true},
		{"no dot", id, true},
		{"no number", id + ".", true},
		{"not a number", id + ".x", true},
		{"no stream", ".3", true},
		{"two dots", id + ".3.4", true},
		{"10 KiB of garbage", garbage, true},
		{"10 KiB of garbage with a number", garbage + ".3", true},
	}
}

// TestResumeHostile: Last-Event-IDs a client makes up (for an sse stream,
// which counts events, and a text one, which counts bytes), another client's
// stream with and without anyone_with_id, and DELETEs without a stream or
// of another's, each get its documented answer in OpenAI's shape (204 to
// an EventSource, which stops it), never a 500 or a hang, and never start
// the stream again.
func TestResumeHostile(t *testing.T) {
	for _, anyone := range []bool{false, true} {
		t.Run(fmt.Sprintf("anyone_with_id=%v", anyone), func(t *testing.T) {
			opt := "resume 1m"
			if anyone {
				opt = "resume 1m {\n\t\t\tanyone_with_id\n\t\t}"
			}
			up := ssetest.NewUpstream(t, 5, time.Millisecond)
			c := startCaddy(t, resumeSite(up.URL, opt))
			chat := c.URL + "/chat?prompt=hi"
			resp := get(t, chat, "X-User", "alice")
			id := resp.Header.Get("X-Stream-ID")
			all := ssetest.Read(bufio.NewReader(resp.Body), 0)
			if id == "" || len(all) != 6 {
				t.Fatalf("stream %q: %d events, want 5 and the done", id, len(all))
			}
			// A text stream counts bytes: its last is the length of its body.
			resp = get(t, chat+"&format=text", "X-User", "alice")
			textID := resp.Header.Get("X-Stream-ID")
			body, err := io.ReadAll(resp.Body)
			if textID == "" || err != nil || string(body) != ssetest.Words(1, 5) {
				t.Fatalf("text stream %q: %q, %v", textID, body, err)
			}

			for _, s := range []struct {
				name, id string
				last     int
			}{{"sse", id, 6}, {"text", textID, len(body)}} {
				for _, h := range hostileIDs(s.id, s.last) {
					what := s.name + " stream, " + h.name
					resp := get(t, chat, "X-User", "alice", "Accept", "text/event-stream", "Last-Event-ID", h.value)
					if resp.StatusCode != http.StatusNoContent {
						body, _ := io.ReadAll(resp.Body)
						t.Errorf("%s, from an EventSource: %s %q, want 204", what, resp.Status, body)
					}
					resp = get(t, chat+"&format=ndjson", "X-User", "alice", "Last-Event-ID", h.value)
					switch {
					case !h.refused && resp.StatusCode != http.StatusNoContent:
						body, _ := io.ReadAll(resp.Body)
						t.Errorf("%s, from fetch: %s %q, want 204", what, resp.Status, body)
					case h.refused:
						if st, typ, code := openAIError(t, what, resp); st != http.StatusNotFound || typ != "invalid_request_error" || code != "stream_not_found" {
							t.Errorf("%s, from fetch: %d %s %s, want 404 invalid_request_error stream_not_found", what, st, typ, code)
						}
					}
				}
			}

			resp = get(t, chat, "X-User", "mallory", "Last-Event-ID", id+".2")
			if anyone {
				rest := ssetest.Read(bufio.NewReader(resp.Body), 0)
				if text, done := textOf(t, rest); resp.StatusCode != http.StatusOK || text != ssetest.Words(3, 5) || !done {
					t.Errorf("another client's resume with anyone_with_id: %s, %q (done %v)", resp.Status, text, done)
				}
			} else if st, typ, code := openAIError(t, "another client's resume", resp); st != http.StatusForbidden || typ != "invalid_request_error" || code != "stream_forbidden" {
				t.Errorf("another client's resume: %d %s %s, want 403 stream_forbidden", st, typ, code)
			}

			del := func(who, streamID string) *http.Response {
				req, _ := http.NewRequest(http.MethodDelete, c.URL+"/chat", nil)
				req.Header.Set("X-User", who)
				if streamID != "" {
					req.Header.Set("X-Stream-ID", streamID)
				}
				return do(t, req)
			}
			for name, sid := range map[string]string{"no X-Stream-ID": "", "a garbage X-Stream-ID": strings.Repeat("x", 10240)} {
				if st, _, code := openAIError(t, "a DELETE with "+name, del("alice", sid)); st != http.StatusNotFound || code != "stream_not_found" {
					t.Errorf("a DELETE with %s: %d %s, want 404 stream_not_found", name, st, code)
				}
			}
			resp = del("mallory", id)
			if anyone {
				if resp.StatusCode != http.StatusNoContent {
					t.Errorf("another client's DELETE with anyone_with_id: %s, want 204", resp.Status)
				}
			} else if st, _, code := openAIError(t, "another client's DELETE", resp); st != http.StatusForbidden || code != "stream_forbidden" {
				t.Errorf("another client's DELETE: %d %s, want 403 stream_forbidden", st, code)
			}

			if n := up.Requests.Load(); n != 2 {
				t.Errorf("the upstream was asked %d times, want twice (the two streams): a resume started a stream again", n)
			}
			if strings.Contains(c.Log.String(), `"status":500`) || strings.Contains(c.Log.String(), "panic") {
				t.Errorf("caddy answered 500 or panicked:\n%s", c.Log.String())
			}
		})
	}
}

// TestResumeFlood: 50 clients resume one live stream at once, from events
// 0 to 4, and two of them past its end (1000); five leave after one event.
// Each of the others gets the events after its own, exactly once, then the
// done (the two: nothing), and none is left hanging once the stream has
// ended; afterwards Caddy's goroutines return to their baseline. On one
// instance (the memory store), and on another than the stream's, which
// follows it in Redis.
func TestResumeFlood(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		up := ssetest.NewUpstream(t, 30, 100*time.Millisecond)
		c := startCaddy(t, resumeSite(up.URL, "resume 1m"))
		flood(t, up, c, c)
	})
	t.Run("redis, another instance", func(t *testing.T) {
		up := ssetest.NewUpstream(t, 30, 100*time.Millisecond)
		a, b := twoOnRedis(t, up)
		flood(t, up, a, b)
	})
}

// flood starts streams of up on a and floods b with resumes of one.
func flood(t *testing.T, up *ssetest.Upstream, a, b *caddy) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	open := func(ctx context.Context, c *caddy, last string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/chat?prompt=hi", nil)
		req.Header.Set("X-User", "alice")
		if last != "" {
			req.Header.Set("Last-Event-ID", last)
		}
		return client.Do(req)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	// A whole stream first, resumed on b, so that what lives on between
	// streams (connections to the upstream and to Redis) is in the baseline.
	resp, err := open(ctx, a, "")
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get("X-Stream-ID")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp, err = open(ctx, b, id+".3"); err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	base := settledGoroutines(t, b.Admin, 0)

	resp, err = open(ctx, a, "")
	if err != nil {
		t.Fatal(err)
	}
	id = resp.Header.Get("X-Stream-ID")
	first := ssetest.Read(bufio.NewReader(resp.Body), 4)
	resp.Body.Close()
	if id == "" || len(first) != 4 {
		t.Fatalf("stream %q, first events %+v", id, first)
	}

	const readers = 50
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for i := range readers {
		after := i % 5
		if i >= readers-2 {
			after = 1000
		}
		leaves := i%10 == 7
		wg.Add(1)
		go func(after int) {
			defer wg.Done()
			resp, err := open(ctx, b, fmt.Sprintf("%s.%d", id, after))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if leaves {
				ssetest.Read(bufio.NewReader(resp.Body), 1)
				return
			}
			evs := ssetest.Read(bufio.NewReader(resp.Body), 0)
			if ctx.Err() != nil {
				errs <- fmt.Errorf("resume after %d still open at the deadline, %d events in", after, len(evs))
				return
			}
			if after > 31 {
				// It claims more than the stream will have: nothing to send,
				// and the answer ends with the stream.
				if (resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent) || len(evs) != 0 {
					errs <- fmt.Errorf("resume after %d, past the end: %s, %d events", after, resp.Status, len(evs))
				}
				return
			}
			for j, ev := range evs {
				if want := fmt.Sprintf("%s.%d", id, after+1+j); ev.ID != want {
					errs <- fmt.Errorf("resume after %d: event %d is %q, want %q", after, j, ev.ID, want)
					return
				}
			}
			var text string
			done := false
			for _, ev := range evs {
				var d struct{ Content string }
				if json.Unmarshal([]byte(ev.Data), &d) != nil {
					errs <- fmt.Errorf("resume after %d: event data %q", after, ev.Data)
					return
				}
				text += d.Content
				done = done || ev.Name == "done"
			}
			if resp.StatusCode != http.StatusOK || text != ssetest.Words(after+1, 30) || !done || len(evs) != 31-after {
				errs <- fmt.Errorf("resume after %d: %s, %d events, text %q, done %v", after, resp.Status, len(evs), text, done)
			}
		}(after)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := up.Requests.Load(); n != 2 {
		t.Errorf("the upstream was asked %d times, want 2 (the two streams)", n)
	}
	settledGoroutines(t, b.Admin, base)
}

// settledGoroutines waits for Caddy's goroutine count to settle, at or
// below want if want > 0, and returns it.
func settledGoroutines(t *testing.T, admin string, want int) int {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	prev := -1
	for {
		n := goroutines(t, admin)
		switch {
		case want > 0 && n <= want, want == 0 && n == prev:
			t.Logf("caddy's goroutines: %d", n)
			return n
		case time.Now().After(deadline):
			if want > 0 {
				resp, err := http.Get("http://" + admin + "/debug/pprof/goroutine?debug=1")
				if err == nil {
					dump, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					t.Fatalf("goroutines: %d, baseline %d\n%s", n, want, dump)
				}
				t.Fatalf("goroutines: %d, baseline %d", n, want)
			}
			return n
		}
		prev = n
		time.Sleep(500 * time.Millisecond)
	}
}

// TestResumeRefusedHoldsNoGrace: a resume refused 403 (another client's
// stream) must leave the stream as it was. With nobody of its own
// connected, its upstream is cancelled grace after its client left,
// however often a stranger asks for it in between.
func TestResumeRefusedHoldsNoGrace(t *testing.T) {
	up := ssetest.NewUpstream(t, 1000, 20*time.Millisecond)
	c := startCaddy(t, resumeSite(up.URL, "resume 1m {\n\t\t\tgrace 1s\n\t\t}"))
	resp := get(t, c.URL+"/chat?prompt=hi", "X-User", "alice")
	id := resp.Header.Get("X-Stream-ID")
	ssetest.Read(bufio.NewReader(resp.Body), 2)
	left := time.Now()
	resp.Body.Close()
	for stranger := time.NewTicker(250 * time.Millisecond); ; {
		select {
		case at := <-up.Cancels:
			stranger.Stop()
			if d := at.Sub(left); d > 3*time.Second {
				t.Errorf("the upstream was cancelled %v after its client left, with grace 1s", d)
			}
			return
		case <-stranger.C:
			if time.Since(left) > 6*time.Second {
				t.Fatal("the upstream still runs 6s after its client left, with grace 1s: the refused resumes keep it going")
			}
			r := get(t, c.URL+"/chat?prompt=hi", "X-User", "mallory", "Last-Event-ID", id+".2")
			r.Body.Close()
			if r.StatusCode != http.StatusForbidden {
				t.Fatalf("another client's resume: %s, want 403", r.Status)
			}
		}
	}
}

// TestResumeMaxIntLiveRedis: a resume past the end of a live stream (n the
// largest int) on another instance, over Redis, ends when the stream
// does, with nothing sent, as a smaller n does.
func TestResumeMaxIntLiveRedis(t *testing.T) {
	up := ssetest.NewUpstream(t, 20, 100*time.Millisecond)
	a, b := twoOnRedis(t, up)
	resp := get(t, a.URL+"/chat?prompt=hi", "X-User", "alice")
	id := resp.Header.Get("X-Stream-ID")
	ssetest.Read(bufio.NewReader(resp.Body), 2)
	resp.Body.Close()
	for _, n := range []string{"1000", "9223372036854775807"} {
		t.Run(n, func(t *testing.T) {
			t.Parallel() // both while the stream is live
			ctx, cancel := context.WithTimeout(t.Context(), 12*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.URL+"/chat?prompt=hi&format=ndjson", nil)
			req.Header.Set("X-User", "alice")
			req.Header.Set("Last-Event-ID", id+"."+n)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			switch {
			case err != nil:
				t.Errorf("still open 12s on, a stream of 2s: %v", err)
			case resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent, strings.TrimSpace(string(body)) != "":
				t.Errorf("%s %q, want nothing", resp.Status, body)
			}
		})
	}
}
