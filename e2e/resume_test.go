package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/redistest"
	"github.com/llmstream/caddy-llmstream/internal/ssetest"
)

// textOf joins the content of sse events, and tells whether a done came,
// checking that every event's data is JSON.
func textOf(t *testing.T, evs []ssetest.Event) (string, bool) {
	t.Helper()
	var text string
	done := false
	for _, ev := range evs {
		var d struct{ Content string }
		if err := json.Unmarshal([]byte(ev.Data), &d); err != nil {
			t.Fatalf("event data %q is not JSON: %v", ev.Data, err)
		}
		if ev.Name == "done" {
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
			up := ssetest.NewUpstream(t, 20, tc.gap)
			c := startCaddy(t, resumeSite(up.URL, "resume 1m"))
			resp := get(t, c.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "X-User", "alice")
			id := resp.Header.Get("X-Stream-ID")
			first := ssetest.Read(bufio.NewReader(resp.Body), 5)
			resp.Body.Close()
			if len(first) != 5 || first[4].ID != id+".5" {
				t.Fatalf("first five events: %+v (stream %q)", first, id)
			}
			time.Sleep(time.Second)
			resp = get(t, c.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "X-User", "alice", "Last-Event-ID", id+".5")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("resume: %s", resp.Status)
			}
			rest := ssetest.Read(bufio.NewReader(resp.Body), 0)
			if len(rest) != 16 || rest[0].ID != id+".6" || rest[15].ID != id+".21" {
				t.Fatalf("resumed events: %d, from %q to %q; want 16, %s.6 to %s.21", len(rest), rest[0].ID, rest[len(rest)-1].ID, id, id)
			}
			text, done := textOf(t, append(first, rest...))
			if text != ssetest.Words(1, 20) || !done {
				t.Fatalf("text %q (done %v), want %q and one done", text, done, ssetest.Words(1, 20))
			}
			if n := up.Requests.Load(); n != 1 {
				t.Fatalf("the upstream saw %d requests, want 1", n)
			}
		})
	}
}

// TestResumeRefused: past ttl an EventSource is told 204; another
// client's ID, or a forged one, is refused.
func TestResumeRefused(t *testing.T) {
	up := ssetest.NewUpstream(t, 3, time.Millisecond)
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
	up := ssetest.NewUpstream(t, 1000, 20*time.Millisecond)
	c := startCaddy(t, resumeSite(up.URL, "resume 1m {\n\t\t\tgrace 500ms\n\t\t}"))
	resp := get(t, c.URL+"/chat?prompt=hi", "X-User", "alice")
	ssetest.Read(bufio.NewReader(resp.Body), 2)
	left := time.Now()
	resp.Body.Close()
	select {
	case at := <-up.Cancels:
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
	up := ssetest.NewUpstream(t, 20, 100*time.Millisecond)
	a, b := twoOnRedis(t, up)

	resp := get(t, a.URL+"/chat?prompt=hi", "X-User", "alice")
	id := resp.Header.Get("X-Stream-ID")
	first := ssetest.Read(bufio.NewReader(resp.Body), 5)
	resp.Body.Close()
	if id == "" || len(first) != 5 {
		t.Fatalf("stream %q, first events %+v", id, first)
	}
	resp = get(t, b.URL+"/chat?prompt=hi", "X-User", "alice", "Last-Event-ID", id+".5")
	rest := ssetest.Read(bufio.NewReader(resp.Body), 0)
	text, done := textOf(t, append(first, rest...))
	if text != ssetest.Words(1, 20) || !done {
		t.Fatalf("resumed on the other instance: %q (done %v)", text, done)
	}

	resp = get(t, a.URL+"/chat?prompt=hi", "X-User", "alice")
	id = resp.Header.Get("X-Stream-ID")
	br := bufio.NewReader(resp.Body)
	ssetest.Read(br, 2)
	cancelStream(t, b.URL+"/chat", id, up, br)
	if n := up.Requests.Load(); n != 2 {
		t.Fatalf("the upstream saw %d requests, want 2", n)
	}
}

// TestResumeCancel: a DELETE with the stream's ID stops its upstream at
// once, and a client still reading gets the framing's error event.
func TestResumeCancel(t *testing.T) {
	up := ssetest.NewUpstream(t, 1000, 20*time.Millisecond)
	c := startCaddy(t, resumeSite(up.URL, "resume 1m"))
	resp := get(t, c.URL+"/chat?prompt=hi", "X-User", "alice")
	br := bufio.NewReader(resp.Body)
	ssetest.Read(br, 2)
	cancelStream(t, c.URL+"/chat", resp.Header.Get("X-Stream-ID"), up, br)
}

// cancelStream DELETEs stream id at url and checks that up is cancelled
// at once and that the client reading br is told.
func cancelStream(t *testing.T, url, id string, up *ssetest.Upstream, br *bufio.Reader) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, url, nil)
	req.Header.Set("X-Stream-ID", id)
	req.Header.Set("X-User", "alice")
	sent := time.Now()
	if del := do(t, req); del.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %s", del.Status)
	}
	select {
	case at := <-up.Cancels:
		// The issue asks for 100 ms: the figure is logged, and a loaded
		// CI machine gets slack.
		t.Logf("the upstream was cancelled %v after the DELETE", at.Sub(sent))
		if d := at.Sub(sent); d > time.Second {
			t.Fatalf("cancelled %v after the DELETE", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the DELETE did not cancel the upstream")
	}
	tail := ssetest.Read(br, 0)
	if len(tail) == 0 || tail[len(tail)-1].Name != "error" || !strings.Contains(tail[len(tail)-1].Data, "stream_cancelled") {
		t.Fatalf("the attached client's last events: %+v", tail)
	}
}

// twoOnRedis starts two Caddy instances in front of up with resume on one
// redis-server.
func twoOnRedis(t *testing.T, up *ssetest.Upstream) (a, b *caddy) {
	rs := redistest.Start(t)
	site := resumeSite(up.URL, "resume 1m {\n\t\t\tstore redis redis://"+rs.Addr()+"\n\t\t}")
	return startCaddy(t, site), startCaddy(t, site)
}
