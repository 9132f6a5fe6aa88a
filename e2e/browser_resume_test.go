package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The chat page over resumable streams (docs/resume.md): a dropped
// connection is picked up where it broke, on both transports, and Stop
// cancels the stream on the server.

// statuses follows turn i until it is no longer streaming, and returns the
// distinct status texts it showed meanwhile, and the final turn.
func (p *chatPage) statuses(i int, limit time.Duration) ([]string, turn) {
	p.t.Helper()
	var seen []string
	deadline := time.Now().Add(limit)
	for {
		tr := p.turn(i)
		if tr.State != "streaming" {
			return seen, tr
		}
		if len(seen) == 0 || seen[len(seen)-1] != tr.Status {
			seen = append(seen, tr.Status)
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("turn %d still streaming after %v: %+v (statuses %q)", i, limit, tr, seen)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// streamID is the ID of the resumable stream turn i showed, "" if none.
func (p *chatPage) streamID(i int) string {
	p.t.Helper()
	return pageEval[string](p.tab, `(document.querySelectorAll('#log .turn')[`+strconv.Itoa(i)+`].dataset.stream || '')`)
}

const reconnecting = "Connection lost; reconnecting…"

// scriptedResume plays the server side of docs/resume.md for the page, with
// breaks and refusals where a test wants them. The prompt picks the script:
//
//	break    the connection breaks after every 4 events; resumes go on
//	overlap  like break, but a resume starts again at the event the client has (sse)
//	busy     like break, but the first resume is rate limited for a second
//	gone     the connection breaks after 3 events; the stream is unknown on resume
//	trimmed  the same, but the events missed are no longer kept (409)
//	endless  an event every 50ms until the client leaves or cancels
type scriptedResume struct {
	mu      sync.Mutex
	resumes []string // the Last-Event-ID of each resume, as received
	deletes []string // the X-Stream-ID of each DELETE
	cancel  map[string]chan struct{}
	limited map[string]bool // the busy streams whose resume was refused once
}

var scriptedWords = strings.Fields("one two three four five six seven eight nine ten")

func scriptedAnswer() string { return strings.Join(scriptedWords, " ") + " " }

func newStreamID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *scriptedResume) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	script, format := q.Get("prompt"), q.Get("format")
	if r.Method == http.MethodDelete {
		id := r.Header.Get("X-Stream-ID")
		s.mu.Lock()
		s.deletes = append(s.deletes, id)
		if c, ok := s.cancel[id]; ok {
			close(c)
			delete(s.cancel, id)
		}
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	id, from := newStreamID(), 0
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		s.mu.Lock()
		s.resumes = append(s.resumes, last)
		s.mu.Unlock()
		var n string
		var ok bool
		id, n, ok = strings.Cut(last, ".")
		from, _ = strconv.Atoi(n)
		refused := map[string]int{"gone": http.StatusNotFound, "trimmed": http.StatusConflict}[script]
		if !ok || refused != 0 {
			if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
				w.WriteHeader(http.StatusNoContent)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(refused)
			fmt.Fprintf(w, `{"error":{"message":"refused","type":"invalid_request_error","code":"%d"}}`, refused)
			return
		}
		if script == "overlap" && from > 0 {
			from--
		}
		if script == "busy" && s.limitOnce(id) {
			w.Header().Set("Retry-After", "1")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"error":{"message":"slow down","type":"rate_limit_error","code":null}}`)
			return
		}
	}
	cancelled := make(chan struct{})
	if script == "endless" {
		s.mu.Lock()
		if s.cancel == nil {
			s.cancel = map[string]chan struct{}{}
		}
		s.cancel[id] = cancelled
		s.mu.Unlock()
	}
	if format == "sse" {
		w.Header().Set("Content-Type", "text/event-stream")
	} else {
		w.Header().Set("Content-Type", "application/x-ndjson")
	}
	w.Header().Set("X-Stream-ID", id)
	flush := func(s string) {
		io.WriteString(w, s)
		w.(http.Flusher).Flush()
	}
	breakAfter := map[string]int{"break": 4, "overlap": 4, "busy": 4, "gone": 3, "trimmed": 3}[script]
	for n, sent := from+1, 0; ; n, sent = n+1, sent+1 {
		if breakAfter > 0 && sent == breakAfter {
			if format == "ndjson" {
				flush(`{"content":"unfin`) // a line cut short: not one of the events the page has
			}
			panic(http.ErrAbortHandler)
		}
		var ev string
		switch {
		case script == "endless":
			select {
			case <-cancelled:
				return
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			ev = `{"content":"tok "}`
		case n <= len(scriptedWords):
			ev = `{"content":"` + scriptedWords[n-1] + ` "}`
		default:
			if format == "sse" {
				flush("id: " + id + "." + strconv.Itoa(n) + "\nevent: done\ndata: {\"finish_reason\":\"stop\"}\n\n")
			} else {
				flush("{\"done\":true,\"finish_reason\":\"stop\"}\n")
			}
			return
		}
		if format == "sse" {
			flush(": heartbeat\n\nid: " + id + "." + strconv.Itoa(n) + "\ndata: " + ev + "\n\n")
		} else {
			flush("\n" + ev + "\n") // with a heartbeat, which is not counted
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// limitOnce tells whether to refuse a resume of stream id: the first time.
func (s *scriptedResume) limitOnce(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limited == nil {
		s.limited = map[string]bool{}
	}
	first := !s.limited[id]
	s.limited[id] = true
	return first
}

func (s *scriptedResume) seen() (resumes, deletes []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.resumes...), append([]string(nil), s.deletes...)
}

func (s *scriptedResume) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resumes, s.deletes = nil, nil
}

// TestBrowserResumeScripted checks the page's side of the protocol against
// a scripted server that breaks the connection where it says, answers the
// resumes with refusals, or sends an event twice.
func TestBrowserResumeScripted(t *testing.T) {
	browser := newBrowser(t)
	s := &scriptedResume{}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	c := startCaddy(t, `http://127.0.0.1:{PORT} {
	reverse_proxy /chat `+srv.URL+` {
		flush_interval -1
	}
	llm_web
}
`)
	p := openChat(t, browser, c.URL+"/")

	scripts := []struct {
		script, transport string
	}{{"break", "sse"}, {"break", "ndjson"}, {"overlap", "sse"}, {"busy", "ndjson"}}
	for _, sc := range scripts {
		t.Run(sc.script+"/"+sc.transport, func(t *testing.T) {
			p.t = t
			s.reset()
			i := p.send(sc.script, "", sc.transport)
			statuses, final := p.statuses(i, 60*time.Second)
			if final.State != "done" || final.Answer != scriptedAnswer() {
				t.Fatalf("final %+v, want the answer %q", final, scriptedAnswer())
			}
			resumes, _ := s.seen()
			id := p.streamID(i)
			if len(resumes) < 2 || id == "" {
				t.Fatalf("resumes %q of stream %q, want at least 2 (the connection broke twice)", resumes, id)
			}
			for _, r := range resumes {
				if !strings.HasPrefix(r, id+".") {
					t.Errorf("resumed with Last-Event-ID %q, want %s.<n>", r, id)
				}
			}
			if !contains(statuses, reconnecting) {
				t.Errorf("statuses %q never said %q", statuses, reconnecting)
			}
			t.Logf("resumes %q; statuses %q", resumes, statuses)
		})
	}

	for _, tr := range transports {
		for _, sc := range []struct{ script, want string }{
			{"gone", "The connection broke, and the server no longer has this stream (it expired)."},
			{"trimmed", "The connection broke, and the server no longer keeps the part of the reply that was missed."},
		} {
			t.Run(sc.script+"/"+tr, func(t *testing.T) {
				p.t = t
				s.reset()
				i := p.send(sc.script, "", tr)
				_, final := p.statuses(i, 60*time.Second)
				// The page keeps what it had; Chromium may drop the last
				// bytes before a break, so that is up to three words.
				if final.State != "error" || final.Status != sc.want || final.Answer == "" ||
					!strings.HasPrefix("one two three ", final.Answer) {
					t.Errorf("final %+v, want the error %q", final, sc.want)
				}
			})
		}
	}

	for _, tr := range transports {
		t.Run("stop/"+tr, func(t *testing.T) {
			p.t = t
			s.reset()
			i := p.send("endless", "", tr)
			p.waitFor(i, "three tokens", func(x turn) bool { return strings.Count(x.Answer, "tok") >= 3 })
			id := p.streamID(i)
			p.do(chromedp.Click(chromedp.CSS("#stop")))
			deadline := time.Now().Add(10 * time.Second)
			for {
				_, deletes := s.seen()
				if len(deletes) > 0 {
					if len(deletes) != 1 || deletes[0] != id || id == "" {
						t.Errorf("DELETEs with X-Stream-ID %q, want one with %q", deletes, id)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("Stop sent no DELETE")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if final := p.turn(i); final.State != "stopped" {
				t.Errorf("%+v", final)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// resumeStack is the stack of Caddyfile.example with resume on in
// llm_proxy, a simulator slow enough to break its streams midway, and the
// browser's way to it through a cutProxy.
func resumeStack(t *testing.T, chunks int) (*caddy, *cutProxy) {
	t.Helper()
	c := simStack(t, "chunk_interval 100ms\n\t\tchunks "+strconv.Itoa(chunks), "resume", "")
	return c, newCutProxy(t, c.URL)
}

// TestBrowserResume breaks the page's connection midway through a reply on
// each transport, for long enough that the browser notices, and checks that
// the reply the page ends with is the simulator's, exactly: nothing lost,
// nothing twice.
func TestBrowserResume(t *testing.T) {
	browser := newBrowser(t)
	c, cut := resumeStack(t, 40)
	p := openChat(t, browser, cut.URL+"/")
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			p.t = t
			prompt := "resume over " + tr
			want := fullReply(t, c.URL, prompt)
			i := p.send(prompt, "", tr)
			p.waitFor(i, "a few words", func(x turn) bool { return len(strings.Fields(x.Answer)) >= 6 })
			cut.setDown(true)
			p.waitFor(i, "the page to notice", func(x turn) bool { return x.Status == reconnecting || x.State != "streaming" })
			time.Sleep(1500 * time.Millisecond)
			cut.setDown(false)
			statuses, final := p.statuses(i, 60*time.Second)
			if final.State != "done" || final.Answer != want {
				t.Fatalf("final %+v (statuses %q)\nwant the answer %q", final, statuses, want)
			}
			// The same text from a new completion would not do: the page
			// must have resumed its stream.
			id, resumed := p.streamID(i), false
			for _, h := range cut.lastEventIDs() {
				resumed = resumed || (id != "" && strings.HasPrefix(h, id+"."))
			}
			if !resumed {
				t.Errorf("no request resumed the stream %q: Last-Event-IDs %q", id, cut.lastEventIDs())
			}
			t.Logf("%s: resumed with %q; statuses %q; %s", tr, cut.lastEventIDs(), statuses, final.Status)
		})
	}
}

// fullReply is the reply to prompt, unbroken, in the text framing.
func fullReply(t *testing.T, base, prompt string) string {
	t.Helper()
	resp, err := http.Get(base + "/chat?format=text&prompt=" + url.QueryEscape(prompt))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("reference reply: %d %q %v", resp.StatusCode, b, err)
	}
	return string(b)
}

// TestBrowserResumeStop checks that Stop on a resumable stream cancels it
// on the server at once: without the DELETE the upstream would go on
// generating for the grace period, for a client that might come back.
func TestBrowserResumeStop(t *testing.T) {
	browser := newBrowser(t)
	c, cut := resumeStack(t, 300) // 30s of reply
	p := openChat(t, browser, cut.URL+"/")
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			p.t = t
			prompt := "stop over " + tr
			i := p.send(prompt, "", tr)
			p.waitFor(i, "a few words", func(x turn) bool { return len(strings.Fields(x.Answer)) >= 4 })
			id := p.streamID(i)
			if id == "" {
				t.Fatal("the page did not see a resumable stream")
			}
			p.do(chromedp.Click(chromedp.CSS("#stop")))
			if final := p.turn(i); final.State != "stopped" {
				t.Errorf("%+v", final)
			}
			// Resuming from the start shows how the stream ended: with the
			// cancelled error, soon, rather than 30s of reply.
			// A server that forgets a cancelled stream at once answers 404.
			end := resumedEnd(t, c.URL, prompt, tr, id)
			if end.status != http.StatusNotFound && (end.Error == nil || end.Error.Code != "stream_cancelled") {
				t.Errorf("the stream ended with %+v, want the error stream_cancelled", end)
			}
		})
	}
}

// streamEnd is the last event of a stream: an ndjson line, or the data of
// an sse event.
type streamEnd struct {
	Done  bool `json:"done"`
	Error *struct {
		Type string `json:"type"`
		Code string `json:"code"`
	} `json:"error"`
	status int
}

// resumedEnd resumes stream id from its start (in its own framing) and
// returns its last event, within 10s, or the status of a refusal. Should the
// resume arrive before the Stop's DELETE, it is attached when the stream is
// cancelled, and gets the cancelled error all the same.
func resumedEnd(t *testing.T, base, prompt, format, id string) streamEnd {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, base+"/chat?format="+format+"&prompt="+url.QueryEscape(prompt), nil)
	req.Header.Set("Last-Event-ID", id+".0")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return streamEnd{status: resp.StatusCode}
	}
	var last string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if format == "sse" {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				last = data
			}
		} else if sc.Text() != "" {
			last = sc.Text()
		}
	}
	if err := sc.Err(); err != nil {
		var nerr net.Error
		if errors.As(err, &nerr) && nerr.Timeout() {
			t.Fatalf("the stream still streams 10s after Stop (last line %s)", last)
		}
		t.Fatal(err)
	}
	var end streamEnd
	if err := json.Unmarshal([]byte(last), &end); err != nil {
		t.Fatalf("last line %q: %v", last, err)
	}
	end.status = resp.StatusCode
	return end
}
