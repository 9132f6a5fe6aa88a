package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/redistest"
)

// countedUpstream streams n chunks "w1 " ... "wn ", one per gap, counting
// its requests, and noting when the proxy cancelled one.
type countedUpstream struct {
	*httptest.Server
	requests  atomic.Int32
	cancelled chan time.Time
}

func newCountedUpstream(t *testing.T, n int, gap time.Duration) *countedUpstream {
	u := &countedUpstream{cancelled: make(chan time.Time, 16)}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := 1; i <= n; i++ {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w%d \"}}]}\n\n", i)
			f.Flush()
			select {
			case <-r.Context().Done():
				u.cancelled <- time.Now()
				return
			case <-time.After(gap):
			}
		}
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
	}))
	t.Cleanup(u.Close)
	return u
}

func words(from, to int) string {
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "w%d ", i)
	}
	return b.String()
}

type event struct{ id, name, data string }

// readEvents reads up to max events (0: to the end) of an SSE body.
func readEvents(br *bufio.Reader, max int) []event {
	var evs []event
	var ev event
	for max == 0 || len(evs) < max {
		line, err := br.ReadString('\n')
		if err != nil {
			return evs
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.data != "" {
				evs = append(evs, ev)
			}
			ev = event{}
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.name = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		}
	}
	return evs
}

// textOf joins the content of sse events, and tells whether a done came,
// checking that every event's data is JSON.
func textOf(t *testing.T, evs []event) (string, bool) {
	t.Helper()
	var text string
	done := false
	for _, ev := range evs {
		var d struct{ Content string }
		if err := json.Unmarshal([]byte(ev.data), &d); err != nil {
			t.Fatalf("event data %q is not JSON: %v", ev.data, err)
		}
		if ev.name == "done" {
			if done {
				t.Fatal("two done events")
			}
			done = true
		}
		text += d.Content
	}
	return text, done
}

func resumeSite(upstream, resume string) string {
	return `http://127.0.0.1:{PORT} {
	llm_proxy /chat ` + upstream + ` {
		format sse
		` + resume + `
		rate_limit 1000-M {
			key {http.request.header.X-User}
		}
	}
}
`
}

// TestResumeAfterDrop is issue 17's first check against the binary: a
// client reads 5 of 20 events, drops, and reconnects with Last-Event-ID
// after a second, while the stream goes on and after it has finished: it
// gets 6-20 and the done, exactly once, and the upstream saw one request.
func TestResumeAfterDrop(t *testing.T) {
	for _, tc := range []struct {
		name string
		gap  time.Duration
	}{{"live", 150 * time.Millisecond}, {"finished", 10 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			up := newCountedUpstream(t, 20, tc.gap)
			c := startCaddy(t, resumeSite(up.URL, "resume 1m"))
			resp := get(t, c.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "X-User", "alice")
			id := resp.Header.Get("X-Stream-ID")
			first := readEvents(bufio.NewReader(resp.Body), 5)
			resp.Body.Close()
			if len(first) != 5 || first[4].id != id+".5" {
				t.Fatalf("first five events: %+v (stream %q)", first, id)
			}
			time.Sleep(time.Second)
			resp = get(t, c.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "X-User", "alice", "Last-Event-ID", id+".5")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("resume: %s", resp.Status)
			}
			rest := readEvents(bufio.NewReader(resp.Body), 0)
			if len(rest) != 16 || rest[0].id != id+".6" || rest[15].id != id+".21" {
				t.Fatalf("resumed events: %d, from %q to %q; want 16, %s.6 to %s.21", len(rest), rest[0].id, rest[len(rest)-1].id, id, id)
			}
			text, done := textOf(t, append(first, rest...))
			if text != words(1, 20) || !done {
				t.Fatalf("text %q (done %v), want %q and one done", text, done, words(1, 20))
			}
			if n := up.requests.Load(); n != 1 {
				t.Fatalf("the upstream saw %d requests, want 1", n)
			}
		})
	}
}

// TestResumeRefused: past ttl an EventSource is told 204; another
// client's ID, or a forged one, is refused.
func TestResumeRefused(t *testing.T) {
	up := newCountedUpstream(t, 3, time.Millisecond)
	c := startCaddy(t, resumeSite(up.URL, "resume 500ms"))
	resp := get(t, c.URL+"/chat?prompt=hi", "X-User", "alice")
	id := resp.Header.Get("X-Stream-ID")
	io.ReadAll(resp.Body)
	resp.Body.Close()

	resp = get(t, c.URL+"/chat?prompt=hi", "X-User", "mallory", "Last-Event-ID", id+".1")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), `"stream_forbidden"`) {
		t.Fatalf("another client's ID: %s %s", resp.Status, body)
	}
	forged := "A" + id[1:]
	if id[0] == 'A' {
		forged = "B" + id[1:]
	}
	resp = get(t, c.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "X-User", "alice", "Last-Event-ID", forged+".1")
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("a forged ID from an EventSource: %s, want 204", resp.Status)
	}
	time.Sleep(1500 * time.Millisecond)
	resp = get(t, c.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "X-User", "alice", "Last-Event-ID", id+".1")
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("past ttl: %s, want 204", resp.Status)
	}
	resp = get(t, c.URL+"/chat?prompt=hi&format=ndjson", "X-User", "alice", "Last-Event-ID", id+".1")
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"stream_not_found"`) {
		t.Fatalf("past ttl, from fetch: %s %s", resp.Status, body)
	}
}

// TestResumeGrace: with nobody connected the upstream keeps generating for
// grace, then is cancelled.
func TestResumeGrace(t *testing.T) {
	up := newCountedUpstream(t, 1000, 20*time.Millisecond)
	c := startCaddy(t, resumeSite(up.URL, "resume 1m {\n\t\t\tgrace 500ms\n\t\t}"))
	resp := get(t, c.URL+"/chat?prompt=hi", "X-User", "alice")
	readEvents(bufio.NewReader(resp.Body), 2)
	left := time.Now()
	resp.Body.Close()
	select {
	case at := <-up.cancelled:
		if d := at.Sub(left); d < 400*time.Millisecond {
			t.Fatalf("the upstream was cancelled %v after the client left, within grace", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream was never cancelled")
	}
}

// TestResumeAcrossInstances runs two Caddy instances on one redis-server:
// a stream started on one resumes on the other, and a cancel sent to the
// other stops its upstream at once.
func TestResumeAcrossInstances(t *testing.T) {
	rs := redistest.Start(t)
	up := newCountedUpstream(t, 20, 100*time.Millisecond)
	site := resumeSite(up.URL, "resume 1m {\n\t\t\tstore redis redis://"+rs.Addr()+"\n\t\t}")
	a, b := startCaddy(t, site), startCaddy(t, site)

	resp := get(t, a.URL+"/chat?prompt=hi", "X-User", "alice")
	id := resp.Header.Get("X-Stream-ID")
	first := readEvents(bufio.NewReader(resp.Body), 5)
	resp.Body.Close()
	if id == "" || len(first) != 5 {
		t.Fatalf("stream %q, first events %+v", id, first)
	}
	resp = get(t, b.URL+"/chat?prompt=hi", "X-User", "alice", "Last-Event-ID", id+".5")
	rest := readEvents(bufio.NewReader(resp.Body), 0)
	text, done := textOf(t, append(first, rest...))
	if text != words(1, 20) || !done {
		t.Fatalf("resumed on the other instance: %q (done %v)", text, done)
	}

	resp = get(t, a.URL+"/chat?prompt=hi", "X-User", "alice")
	id = resp.Header.Get("X-Stream-ID")
	br := bufio.NewReader(resp.Body)
	readEvents(br, 2)
	cancelStream(t, b.URL+"/chat", id, up, br)
	if n := up.requests.Load(); n != 2 {
		t.Fatalf("the upstream saw %d requests, want 2", n)
	}
}

// TestResumeCancel: a DELETE with the stream's ID stops its upstream at
// once, and a client still reading gets the framing's error event.
func TestResumeCancel(t *testing.T) {
	up := newCountedUpstream(t, 1000, 20*time.Millisecond)
	c := startCaddy(t, resumeSite(up.URL, "resume 1m"))
	resp := get(t, c.URL+"/chat?prompt=hi", "X-User", "alice")
	br := bufio.NewReader(resp.Body)
	readEvents(br, 2)
	cancelStream(t, c.URL+"/chat", resp.Header.Get("X-Stream-ID"), up, br)
}

// cancelStream DELETEs stream id at url and checks that up is cancelled
// at once and that the client reading br is told.
func cancelStream(t *testing.T, url, id string, up *countedUpstream, br *bufio.Reader) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, url, nil)
	req.Header.Set("X-Stream-ID", id)
	req.Header.Set("X-User", "alice")
	sent := time.Now()
	if del := do(t, req); del.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %s", del.Status)
	}
	select {
	case at := <-up.cancelled:
		// The issue asks for 100 ms: the figure is logged, and a loaded
		// CI machine gets slack.
		t.Logf("the upstream was cancelled %v after the DELETE", at.Sub(sent))
		if d := at.Sub(sent); d > time.Second {
			t.Fatalf("cancelled %v after the DELETE", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the DELETE did not cancel the upstream")
	}
	tail := readEvents(br, 0)
	if len(tail) == 0 || tail[len(tail)-1].name != "error" || !strings.Contains(tail[len(tail)-1].data, "stream_cancelled") {
		t.Fatalf("the attached client's last events: %+v", tail)
	}
}
