package caddymodule

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/llmstream/caddy-llmstream/internal/ssetest"
	"github.com/llmstream/caddy-llmstream/upstream"
)

func contentOf(t *testing.T, evs []ssetest.Event) (text string, done bool) {
	for _, ev := range evs {
		if ev.Name == "done" {
			done = true
			continue
		}
		var d struct{ Content string }
		if err := json.Unmarshal([]byte(ev.Data), &d); err != nil {
			t.Fatalf("event %q: %v", ev.Data, err)
		}
		text += d.Content
	}
	return text, done
}

func getWith(t *testing.T, url string, header ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestResumeSSEExactlyOnce reads 5 of 20 events, drops the connection,
// and resumes with Last-Event-ID: it gets 6-20 and the done once each,
// from the one upstream request; live, and again after the stream ended.
func TestResumeSSEExactlyOnce(t *testing.T) {
	for _, after := range []string{"live", "ended"} {
		t.Run(after, func(t *testing.T) {
			up := ssetest.NewUpstream(t, 20, 20*time.Millisecond)
			h := provisionProxy(t, "llm_proxy "+up.URL+" {\n\tformat sse\n\tresume 1m\n}")
			srv := serveProxy(t, h)

			resp := getWith(t, srv.URL+"/chat?prompt=hi", "Accept", "text/event-stream")
			id := resp.Header.Get("X-Stream-ID")
			if len(id) != 22 {
				t.Fatalf("X-Stream-ID = %q, want 22 characters of base64url", id)
			}
			first := ssetest.Read(bufio.NewReader(resp.Body), 5)
			resp.Body.Close()
			if len(first) != 5 || first[4].ID != id+".5" {
				t.Fatalf("first events %+v, want 5 ending in id %s.5", first, id)
			}
			if after == "ended" {
				time.Sleep(800 * time.Millisecond)
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			resp = getWith(t, srv.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "Last-Event-ID", first[4].ID)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("resume: %s", resp.Status)
			}
			rest := ssetest.Read(bufio.NewReader(resp.Body), 0)
			resp.Body.Close()
			got, done := contentOf(t, append(first, rest...))
			if got != ssetest.Words(1, 20) || !done {
				t.Fatalf("text %q done %v, want %q and the done", got, done, ssetest.Words(1, 20))
			}
			for i, ev := range rest {
				if want := id + "." + strconv.Itoa(6+i); ev.ID != want {
					t.Fatalf("event %d has id %q, want %q", 6+i, ev.ID, want)
				}
			}
			if n := up.Requests.Load(); n != 1 {
				t.Fatalf("upstream saw %d requests, want 1", n)
			}
			// All of it delivered: an EventSource is told to stop.
			resp = getWith(t, srv.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "Last-Event-ID", rest[len(rest)-1].ID)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("resume after the done: %s, want 204", resp.Status)
			}
		})
	}
}

// TestResumeNDJSONAndText resumes the framings with no event IDs: ndjson by
// the count of lines, text by the count of bytes.
func TestResumeNDJSONAndText(t *testing.T) {
	up := ssetest.NewUpstream(t, 20, 10*time.Millisecond)
	h := provisionProxy(t, "llm_proxy "+up.URL+" {\n\tresume 1m\n}")
	srv := serveProxy(t, h)

	resp := getWith(t, srv.URL+"/chat?prompt=hi&format=ndjson")
	id := resp.Header.Get("X-Stream-ID")
	br := bufio.NewReader(resp.Body)
	var lines []string
	for len(lines) < 3 {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if l != "\n" {
			lines = append(lines, l)
		}
	}
	resp.Body.Close()
	resp = getWith(t, srv.URL+"/chat?prompt=hi&format=ndjson", "Last-Event-ID", id+".3")
	rest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var text string
	for _, l := range append(lines, strings.SplitAfter(string(rest), "\n")...) {
		var d struct {
			Content string
			Done    bool
		}
		if strings.TrimSpace(l) == "" {
			continue
		}
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		text += d.Content
	}
	if text != ssetest.Words(1, 20) || !strings.Contains(string(rest), `"done":true`) {
		t.Fatalf("ndjson: %q then %q", lines, rest)
	}

	resp = getWith(t, srv.URL+"/chat?prompt=hi&format=text")
	id = resp.Header.Get("X-Stream-ID")
	buf := make([]byte, 7) // "w1 w2 w" : a resume mid-event
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp = getWith(t, srv.URL+"/chat?prompt=hi&format=text", "Last-Event-ID", id+".7")
	rest, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := string(buf) + string(rest); got != ssetest.Words(1, 20) {
		t.Fatalf("text: %q", got)
	}
	if n := up.Requests.Load(); n != 2 {
		t.Fatalf("upstream saw %d requests, want 2", n)
	}
}

// TestResumeRefusals: an unknown ID is 204 to an EventSource and 404 in
// OpenAI's shape to others, another client's stream is 403, and an ID is
// forgotten ttl after its stream ended.
func TestResumeRefusals(t *testing.T) {
	up := ssetest.NewUpstream(t, 2, time.Millisecond)
	srv := serveByUser(t, up, "resume 300ms")

	resp := getWith(t, srv.URL+"/chat?prompt=hi", "Accept", "text/event-stream", "Last-Event-ID", "AAAAAAAAAAAAAAAAAAAAAA.3")
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("unknown ID from an EventSource: %s, want 204", resp.Status)
	}
	resp = getWith(t, srv.URL+"/chat?prompt=hi&format=ndjson", "Last-Event-ID", "AAAAAAAAAAAAAAAAAAAAAA.3")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"code":"stream_not_found"`) {
		t.Fatalf("unknown ID from fetch: %s %s", resp.Status, body)
	}

	resp = getWith(t, srv.URL+"/chat?prompt=hi", "X-User", "alice")
	id := resp.Header.Get("X-Stream-ID")
	io.ReadAll(resp.Body)
	resp.Body.Close()
	resp = getWith(t, srv.URL+"/chat?prompt=hi", "X-User", "mallory", "Last-Event-ID", id+".1")
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "stream_forbidden") {
		t.Fatalf("another client's ID: %s %s", resp.Status, body)
	}
	resp = getWith(t, srv.URL+"/chat?prompt=hi", "X-User", "alice", "Last-Event-ID", id+".1")
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "event: done") {
		t.Fatalf("its own client: %s %s", resp.Status, body)
	}
	time.Sleep(time.Second)
	resp = getWith(t, srv.URL+"/chat?prompt=hi&format=ndjson", "X-User", "alice", "Last-Event-ID", id+".1")
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("past ttl: %s, want 404", resp.Status)
	}
}

// TestResumeGraceAndCancel: with nobody connected the upstream runs for
// grace, then is cancelled; a DELETE cancels it at once, and a client
// still attached reads the cancel as the framing's error.
func TestResumeGraceAndCancel(t *testing.T) {
	up := ssetest.NewUpstream(t, 1000, 10*time.Millisecond)
	h := provisionProxy(t, "llm_proxy "+up.URL+" {\n\tformat sse\n\tresume 1m {\n\t\tgrace 300ms\n\t}\n}")
	srv := serveProxy(t, h)

	resp := getWith(t, srv.URL+"/chat?prompt=hi")
	ssetest.Read(bufio.NewReader(resp.Body), 2)
	resp.Body.Close()
	time.Sleep(100 * time.Millisecond)
	if up.Cancelled.Load() != 0 {
		t.Fatal("the upstream was cancelled within grace")
	}
	waitFor(t, 5*time.Second, func() bool { return up.Cancelled.Load() == 1 })

	resp = getWith(t, srv.URL+"/chat?prompt=hi")
	id := resp.Header.Get("X-Stream-ID")
	br := bufio.NewReader(resp.Body)
	ssetest.Read(br, 2)
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+"/chat", nil)
	req.Header.Set("X-Stream-ID", id)
	start := time.Now()
	del, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	del.Body.Close()
	if del.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %s", del.Status)
	}
	waitFor(t, 5*time.Second, func() bool { return up.Cancelled.Load() == 2 })
	t.Logf("cancelled %v after the DELETE", time.Since(start))
	waitFor(t, 5*time.Second, func() bool {
		return testutil.ToFloat64(metrics.requests.WithLabelValues(upstream.Label(up.URL), "200", outcomeCancelled)) == 1
	})
	rest := ssetest.Read(br, 0)
	resp.Body.Close()
	if len(rest) == 0 || rest[len(rest)-1].Name != "error" || !strings.Contains(rest[len(rest)-1].Data, "stream_cancelled") {
		t.Fatalf("an attached client's last events: %+v", rest[max(0, len(rest)-2):])
	}
}

// TestResumeOffUnchanged: without resume, a reconnect is 204 and no
// stream has an ID of its own.
func TestResumeOffUnchanged(t *testing.T) {
	up := ssetest.NewUpstream(t, 2, time.Millisecond)
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+" {\n\tformat sse\n}"))
	resp := getWith(t, srv.URL+"/chat?prompt=hi")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("X-Stream-ID") != "" || !strings.HasPrefix(string(body), "id: llmstream\n") {
		t.Fatalf("headers %v body %q", resp.Header, body)
	}
	resp = getWith(t, srv.URL+"/chat?prompt=hi", "Last-Event-ID", "llmstream")
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("reconnect: %s", resp.Status)
	}
}

func waitFor(t *testing.T, within time.Duration, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not met in time")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestResumeStoreDown: with Redis unreachable a stream is answered as
// without resume (no X-Stream-ID), and soon.
func TestResumeStoreDown(t *testing.T) {
	up := ssetest.NewUpstream(t, 3, time.Millisecond)
	dead := httptest.NewServer(http.NotFoundHandler())
	addr := dead.Listener.Addr().String()
	dead.Close() // a port nothing listens on
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+" {\n\tformat sse\n\tresume {\n\t\tstore redis redis://"+addr+"\n\t}\n}"))
	start := time.Now()
	resp := getWith(t, srv.URL+"/chat?prompt=hi")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("X-Stream-ID") != "" || !strings.Contains(string(body), "event: done") {
		t.Fatalf("with the store down: %v %q", resp.Header, body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the stream waited %v on the store", d)
	}
}

// TestResumeNoGoroutineLeft runs finished, abandoned and cancelled
// resumable streams and resumes, and checks nothing outlives the handler.
func TestResumeNoGoroutineLeft(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	up := ssetest.NewUpstream(t, 50, 5*time.Millisecond)
	defer up.Close()
	h := new(LLMProxy)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("llm_proxy " + up.URL + " {\n\tformat sse\n\tresume 1m {\n\t\tgrace 50ms\n\t}\n}")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = h.ServeHTTP(w, r, nil) }))

	resp := getWith(t, srv.URL+"/chat?prompt=hi")
	io.ReadAll(resp.Body)
	resp.Body.Close()
	resp = getWith(t, srv.URL+"/chat?prompt=hi")
	id := resp.Header.Get("X-Stream-ID")
	ssetest.Read(bufio.NewReader(resp.Body), 2)
	resp.Body.Close() // abandoned: cancelled after grace
	resp = getWith(t, srv.URL+"/chat?prompt=hi", "Last-Event-ID", id+".1")
	ssetest.Read(bufio.NewReader(resp.Body), 1)
	resp.Body.Close()
	resp = getWith(t, srv.URL+"/chat?prompt=hi")
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+"/chat", nil)
	req.Header.Set("X-Stream-ID", resp.Header.Get("X-Stream-ID"))
	del, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	del.Body.Close()
	io.ReadAll(resp.Body)
	resp.Body.Close()
	waitFor(t, 5*time.Second, func() bool { return up.Requests.Load() == 3 && up.Cancelled.Load() == 2 })
	time.Sleep(100 * time.Millisecond) // the producers end their logs after their upstreams
	srv.Close()
	http.DefaultClient.CloseIdleConnections()
	h.Cleanup()
	cancel()
}

// TestResumeMetrics counts resumes by result, events replayed and streams
// that ended with nobody connected.
func TestResumeMetrics(t *testing.T) {
	up := ssetest.NewUpstream(t, 10, time.Millisecond)
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+" {\n\tformat sse\n\tresume 1m\n}"))
	resumed := testutil.ToFloat64(resumeMetrics.resumes.WithLabelValues(resumeResumed))
	notFound := testutil.ToFloat64(resumeMetrics.resumes.WithLabelValues(resumeNotFound))
	replayed := testutil.ToFloat64(resumeMetrics.replayed)
	unattended := testutil.ToFloat64(resumeMetrics.unattended)

	resp := getWith(t, srv.URL+"/chat?prompt=hi")
	id := resp.Header.Get("X-Stream-ID")
	resp.Body.Close() // at once: the stream ends with nobody connected
	waitFor(t, 5*time.Second, func() bool { return testutil.ToFloat64(resumeMetrics.unattended) == unattended+1 })
	resp = getWith(t, srv.URL+"/chat?prompt=hi", "Last-Event-ID", id+".4")
	evs := ssetest.Read(bufio.NewReader(resp.Body), 0)
	resp.Body.Close()
	getWith(t, srv.URL+"/chat?prompt=hi", "Last-Event-ID", "nope.1").Body.Close()
	if len(evs) != 7 { // 5-10 and the done
		t.Fatalf("resumed %d events, want 7", len(evs))
	}
	for name, c := range map[string]struct{ got, want float64 }{
		"resumed":   {testutil.ToFloat64(resumeMetrics.resumes.WithLabelValues(resumeResumed)), resumed + 1},
		"not_found": {testutil.ToFloat64(resumeMetrics.resumes.WithLabelValues(resumeNotFound)), notFound + 1},
		"replayed":  {testutil.ToFloat64(resumeMetrics.replayed), replayed + 7},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", name, c.got, c.want)
		}
	}
}

// TestResumeCancelOwner: only the client that started a stream cancels it,
// also once the stream has passed max_bytes and dropped its first events.
func TestResumeCancelOwner(t *testing.T) {
	up := ssetest.NewUpstream(t, 1000, 5*time.Millisecond)
	srv := serveByUser(t, up, "resume 1m {\n\t\tmax_bytes 200\n\t}")
	resp := getWith(t, srv.URL+"/chat?prompt=hi", "X-User", "alice")
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	ssetest.Read(br, 20) // well past 200 bytes
	del := func(user string) int {
		req, _ := http.NewRequest(http.MethodDelete, srv.URL+"/chat", nil)
		req.Header.Set("X-Stream-ID", resp.Header.Get("X-Stream-ID"))
		req.Header.Set("X-User", user)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if got := del("mallory"); got != http.StatusForbidden {
		t.Fatalf("another client's DELETE: %d, want 403", got)
	}
	if up.Cancelled.Load() != 0 {
		t.Fatal("another client cancelled the stream")
	}
	if got := del("alice"); got != http.StatusNoContent {
		t.Fatalf("its client's DELETE: %d, want 204", got)
	}
	waitFor(t, 5*time.Second, func() bool { return up.Cancelled.Load() == 1 })
}

// TestParseEventID: "<stream>.<n>", with an n past any stream's last event
// saturated rather than overflowing the store's next event.
func TestParseEventID(t *testing.T) {
	for in, want := range map[string]struct {
		id string
		n  int
		ok bool
	}{
		"abc.3":                        {"abc", 3, true},
		"abc.0":                        {"abc", 0, true},
		"abc.9223372036854775807":      {"abc", maxEventNumber, true},
		"abc.99999999999999999999":     {"abc", maxEventNumber, true},
		"abc.-1":                       {},
		"abc.-99999999999999999999":    {},
		"abc":                          {},
		".3":                           {},
		"abc.":                         {},
		"abc.3.4":                      {},
		strings.Repeat("a", 65) + ".1": {},
	} {
		id, n, ok := parseEventID(in)
		if id != want.id || n != want.n || ok != want.ok {
			t.Errorf("parseEventID(%.20q) = %q %d %v, want %q %d %v", in, id, n, ok, want.id, want.n, want.ok)
		}
	}
}

// serveByUser serves a proxy of up in the sse framing with the resume
// block given, whose clients are told apart by their X-User header (the
// rate limit's key, which a stream's owner is).
func serveByUser(t *testing.T, up *ssetest.Upstream, resume string) *httptest.Server {
	h := provisionProxy(t, "llm_proxy "+up.URL+" {\n\tformat sse\n\t"+resume+"\n\trate_limit 1000-M {\n\t\tkey {http.request.header.X-User}\n\t}\n}")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caddyhttp.NewTestReplacer(r) // for the rate limit's key
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestResumeHeartbeats: the client of a resumable stream gets keepalives
// while the stream is quiet, from its own pump, and none in the log.
func TestResumeHeartbeats(t *testing.T) {
	up := ssetest.NewUpstream(t, 3, 300*time.Millisecond)
	srv := serveProxy(t, provisionProxy(t, "llm_proxy "+up.URL+" {\n\tformat sse\n\theartbeat 50ms\n\tresume 1m\n}"))
	resp := getWith(t, srv.URL+"/chat?prompt=hi")
	id := resp.Header.Get("X-Stream-ID")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := strings.Count(string(body), ": keepalive\n"); n < 4 {
		t.Fatalf("%d keepalives in %q", n, body)
	}
	resp = getWith(t, srv.URL+"/chat?prompt=hi", "Last-Event-ID", id+".0")
	replay, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(replay), "keepalive") || !strings.Contains(string(replay), "event: done") {
		t.Fatalf("the replay of a finished stream: %q", replay)
	}
}
