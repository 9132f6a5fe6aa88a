package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

var writeScreenshot = flag.Bool("screenshot", false, "TestBrowserChat writes ../docs/screenshot-chat.png")

// chatPage drives web/index.html in a browser tab.
type chatPage struct {
	*tab
}

func openChat(t *testing.T, ctx context.Context, url string) *chatPage {
	p := &chatPage{&tab{t: t, ctx: ctx}}
	p.do(chromedp.EmulateViewport(800, 600), chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#send")))
	return p
}

// turn is what the page shows of one prompt and its reply.
type turn struct {
	State     string `json:"state"` // streaming, done, stopped, error
	Answer    string `json:"answer"`
	Reasoning string `json:"reasoning"`
	Tools     string `json:"tools"`
	Status    string `json:"status"`
}

// send types a prompt with the user's controls and clicks Send. It returns
// the index of the new turn.
func (p *chatPage) send(prompt, model, transport string) int {
	p.t.Helper()
	n := pageEval[int](p.tab, `document.querySelectorAll('#log .turn').length`)
	p.setModel(model)
	p.do(
		chromedp.WaitEnabled(chromedp.CSS("#send")),
		chromedp.Click(chromedp.CSS(`input[name="transport"][value="`+transport+`"]`)),
		chromedp.SendKeys(chromedp.CSS("#prompt"), prompt),
		chromedp.Click(chromedp.CSS("#send")),
	)
	return n
}

// setModel fills in the model field; chromedp.SetValue refuses "".
func (p *chatPage) setModel(model string) {
	p.t.Helper()
	js, _ := json.Marshal(model)
	pageEval[string](p.tab, `document.getElementById('model').value = `+string(js))
}

func (p *chatPage) turn(i int) turn {
	p.t.Helper()
	return pageEval[turn](p.tab, `(() => {
		const t = document.querySelectorAll('#log .turn')[`+strconv.Itoa(i)+`];
		if (!t) return {state: 'missing', answer: '', reasoning: '', tools: '', status: ''};
		const text = (sel) => t.querySelector(sel).textContent;
		return {state: t.dataset.state, answer: text('.answer'), reasoning: text('.reasoning-text'),
			tools: text('.tools'), status: text('.status')};
	})()`)
}

// watch reads turn i every few milliseconds until it is no longer
// streaming, and returns every distinct answer text seen while it was
// streaming, and the final turn.
func (p *chatPage) watch(i int) ([]string, turn) {
	p.t.Helper()
	var seen []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		tr := p.turn(i)
		if tr.State != "streaming" {
			return seen, tr
		}
		if tr.Answer != "" && (len(seen) == 0 || seen[len(seen)-1] != tr.Answer) {
			seen = append(seen, tr.Answer)
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("turn %d still streaming after 30s: %+v", i, tr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFor reads turn i until ok accepts it.
func (p *chatPage) waitFor(i int, what string, ok func(turn) bool) turn {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		tr := p.turn(i)
		if ok(tr) {
			return tr
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("turn %d: waited 30s for %s: %+v", i, what, tr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var transports = []string{"sse", "ndjson"}

// rateLimited is how the page words a 429: its message and the wait from
// Retry-After (1 second from the simulator).
var rateLimited = regexp.MustCompile(`^Rate limited \(429\): .+\. Try again in [1-9][0-9]* seconds?\.$`)

// TestBrowserChat loads the chat page from caddy (llm_web, llm_proxy and
// llm_simulator as in Caddyfile.example) into headless Chromium and uses it
// as a person would, over both transports.
func TestBrowserChat(t *testing.T) {
	browser := newBrowser(t)
	// Heartbeats between the chunks exercise the readers' skipping of them.
	c := simStack(t, "chunk_interval 50ms", "heartbeat 30ms", "")
	p := openChat(t, browser, c.URL+"/")

	for _, tr := range transports {
		t.Run("tokens arrive one by one/"+tr, func(t *testing.T) {
			p.t = t
			i := p.send("hello from the browser", "", tr)
			seen, final := p.watch(i)
			if final.State != "done" {
				t.Fatalf("final %+v", final)
			}
			const prefix = "Echo: hello from the browser "
			if !strings.HasPrefix(final.Answer, prefix) || len(strings.Fields(final.Answer)) != 20 {
				t.Errorf("answer %q, want 20 words starting %q", final.Answer, prefix)
			}
			// The answer must grow while the stream runs, not appear at the end.
			if len(seen) < 3 {
				t.Errorf("saw only %d distinct texts while streaming: %q", len(seen), seen)
			}
			for j := 1; j < len(seen); j++ {
				if !strings.HasPrefix(seen[j], seen[j-1]) || !strings.HasPrefix(final.Answer, seen[j]) {
					t.Errorf("text did not grow by appending: %q then %q", seen[j-1], seen[j])
				}
			}
			if !strings.Contains(final.Status, "First token") || !strings.Contains(final.Status, "tokens/s") {
				t.Errorf("no timing after the reply: %q", final.Status)
			}
			t.Logf("%s: %d distinct texts while streaming; %s", tr, len(seen), final.Status)
		})
	}

	t.Run("reasoning apart from the answer", func(t *testing.T) {
		p.t = t
		i := p.send("think first", "sim-reasoning", "ndjson")
		_, final := p.watch(i)
		if final.State != "done" || final.Reasoning != "Simulated reasoning: echo the prompt. " ||
			!strings.HasPrefix(final.Answer, "Echo: think first ") || strings.Contains(final.Answer, "reasoning") {
			t.Errorf("%+v", final)
		}
		visible := pageEval[bool](p.tab, `!document.querySelectorAll('#log .turn')[`+strconv.Itoa(i)+`].querySelector('.reasoning').hidden`)
		if !visible {
			t.Error("the reasoning block is hidden")
		}
	})

	t.Run("tool call", func(t *testing.T) {
		p.t = t
		i := p.send("weather?", "sim-tools", "sse")
		_, final := p.watch(i)
		if final.State != "done" || !strings.Contains(final.Tools, `get_weather({"city":"Paris"})`) || !strings.Contains(final.Status, "tool_calls") {
			t.Errorf("%+v", final)
		}
	})

	for _, tr := range transports {
		// A stream that breaks after three tokens: the page keeps them and
		// says what went wrong, in the server's words when they arrive.
		// The proxy aborts the response right after its error event, and
		// Chromium now and then drops the bytes that arrived just before a
		// connection broke (the error event, sometimes the last token with
		// it); the page then says the connection broke. So the server's
		// message must arrive at least once in a few tries, and every try
		// must end in an error, never as a finished reply.
		for _, model := range []string{"sim-error-event", "sim-reset"} {
			t.Run(model+"/"+tr, func(t *testing.T) {
				p.t = t
				want := "The stream failed after 3 tokens: "
				if model == "sim-error-event" {
					want += "simulated upstream error (server_error)"
				}
				for try, lost := 1, 0; ; try++ {
					i := p.send("break", model, tr)
					_, final := p.watch(i)
					const tokens = "Echo: break This "
					if final.State != "error" || final.Answer == "" || !strings.HasPrefix(tokens, final.Answer) {
						t.Fatalf("%+v", final)
					}
					if strings.HasPrefix(final.Status, want) && final.Answer == tokens {
						t.Logf("%s: %s (the message was lost in %d of %d tries)", tr, final.Status, lost, try)
						break
					}
					if final.Status != "The connection broke before the reply was complete." {
						t.Fatalf("%+v", final)
					}
					if lost++; try == 10 {
						t.Fatalf("the server's error message never reached the page in %d tries", try)
					}
				}
			})
		}
	}

	t.Run("screenshot", func(t *testing.T) {
		p = openChat(t, p.ctx, c.URL+"/")
		i := p.send("Why stream the reply token by token?", "", "sse")
		if _, final := p.watch(i); final.State != "done" {
			t.Fatalf("%+v", final)
		}
		i = p.send("Show your reasoning", "sim-reasoning", "ndjson")
		if _, final := p.watch(i); final.State != "done" {
			t.Fatalf("%+v", final)
		}
		p.setModel("")
		// The reasoning block folds away when the answer starts; unfold it.
		p.do(chromedp.Click(chromedp.CSS("#log .turn:last-child .reasoning summary")))
		if !pageEval[bool](p.tab, `document.querySelector('#log .turn:last-child .reasoning').open`) {
			t.Error("the reasoning block did not open")
		}
		ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
		defer cancel()
		shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(shot))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %v, %d bytes", img.Bounds().Size(), len(shot))
		out := filepath.Join(t.TempDir(), "screenshot-chat.png")
		if *writeScreenshot {
			out = filepath.Join("..", "docs", "screenshot-chat.png")
			os.MkdirAll(filepath.Dir(out), 0o755)
		}
		if err := os.WriteFile(out, shot, 0o644); err != nil {
			t.Fatal(err)
		}
	})

	// Last: the proxy may rest an upstream that answered 429 for its
	// Retry-After, so a later request could be refused too.
	for _, tr := range transports {
		t.Run("rate limited/"+tr, func(t *testing.T) {
			p.t = t
			i := p.send("too fast", "sim-error-429", tr)
			_, final := p.watch(i)
			if final.State != "error" || !rateLimited.MatchString(final.Status) {
				t.Errorf("%+v", final)
			}
			t.Logf("%s: %s", tr, final.Status)
		})
	}
}

// TestBrowserStop checks that the Stop button cancels the upstream request,
// with a scripted upstream that streams until its request context ends.
func TestBrowserStop(t *testing.T) {
	browser := newBrowser(t)
	gone := make(chan time.Time, 4)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			w.Write([]byte("data: " + chunkJSON("tok ") + "\n\n"))
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				gone <- time.Now()
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	c := simStack(t, "", "", up.URL)
	p := openChat(t, browser, c.URL+"/")

	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			p.t = t
			i := p.send("never ending", "", tr)
			p.waitFor(i, "three tokens", func(x turn) bool { return strings.Count(x.Answer, "tok") >= 3 })
			select {
			case <-gone:
				t.Fatal("the upstream ended before Stop")
			default:
			}
			p.do(chromedp.Click(chromedp.CSS("#stop")))
			clicked := time.Now()
			select {
			case at := <-gone:
				t.Logf("%s: the upstream saw the disconnect %v after Stop", tr, at.Sub(clicked))
			case <-time.After(15 * time.Second):
				t.Fatal("the upstream never saw the browser leave")
			}
			final := p.turn(i)
			if final.State != "stopped" || !strings.HasPrefix(final.Status, "Stopped.") {
				t.Errorf("%+v", final)
			}
			time.Sleep(200 * time.Millisecond)
			if later := p.turn(i); later.Answer != final.Answer {
				t.Errorf("the answer grew after Stop: %q then %q", final.Answer, later.Answer)
			}
		})
	}
}
