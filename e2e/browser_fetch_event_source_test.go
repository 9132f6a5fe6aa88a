package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// fesScript reads a streamed chat completion with @microsoft/fetch-event-source
// (its ESM build, served by the same Caddy) as a page would: every message's
// data through JSON.parse, but the openai framing's [DONE]. It resolves to
// what the page saw. raw reads the same stream with fetch alone, to tell
// that keepalives went out between the events.
const fesScript = `
const read = async (url, body) => {
	const {fetchEventSource} = await import('/lib/index.js');
	const seen = {messages: 0, failures: [], events: [], text: '', error: null, done: false, closed: false, thrown: ''};
	try {
		await fetchEventSource(url, {
			method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body),
			openWhenHidden: true,
			onmessage(ev) {
				seen.messages++;
				if (ev.data === '[DONE]') { seen.done = true; return; }
				let o;
				try { o = JSON.parse(ev.data); } catch (e) { seen.failures.push((ev.event || 'message') + ': ' + JSON.stringify(ev.data)); return; }
				seen.events.push(ev.event || 'message');
				if (o.error) seen.error = o.error;
				const c = o.content ?? o.choices?.[0]?.delta?.content;
				if (typeof c === 'string') seen.text += c;
			},
			onclose() { seen.closed = true; },
			onerror(err) { throw err; }, // no retry: report it
		});
	} catch (e) {
		seen.thrown = String(e);
	}
	return seen;
};
const raw = async (url, body) => {
	const resp = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
	return await resp.text();
};
`

// fesSeen is what the page saw of one stream.
type fesSeen struct {
	Messages int            `json:"messages"`
	Failures []string       `json:"failures"`
	Events   []string       `json:"events"`
	Text     string         `json:"text"`
	Error    map[string]any `json:"error"`
	Done     bool           `json:"done"`
	Closed   bool           `json:"closed"`
	Thrown   string         `json:"thrown"`
}

// TestBrowserFetchEventSource reads both SSE framings with
// @microsoft/fetch-event-source in headless Chromium, heartbeats on
// between slow events: every message it delivers parses as JSON, the text
// is the reply, and an in-band error comes as a message that parses too.
func TestBrowserFetchEventSource(t *testing.T) {
	lib, err := filepath.Abs(filepath.Join("node", "node_modules", "@microsoft", "fetch-event-source", "lib", "esm"))
	if err == nil {
		_, err = os.Stat(filepath.Join(lib, "index.js"))
	}
	if err != nil {
		testenv.Need(t, "the npm packages of e2e/node (npm ci --prefix e2e/node)", errors.New("@microsoft/fetch-event-source is missing"))
	}
	sim := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	// The ESM build imports "./parse" without its extension, as a bundler
	// would resolve it: try_files finds the .js a browser cannot.
	c := startCaddy(t, fmt.Sprintf(`http://%[1]s {
	llm_simulator {
		chunks 6
		chunk_interval 250ms
	}
}

http://127.0.0.1:{PORT} {
	handle_path /lib/* {
		root * %[2]s
		try_files {path} {path}.js
		file_server
	}
	handle /page {
		header Content-Type "text/html; charset=utf-8"
		respond "<!doctype html><title>fetch-event-source</title>"
	}
	handle {
		llm_proxy /v1/* {
			to http://%[1]s/v1
			heartbeat 100ms
		}
	}
}
`, sim, lib))

	// The reply, whole.
	resp := post(t, c.URL+"/v1/chat/completions", `{"model":"sim-slow-300","messages":[{"role":"user","content":"hi"}]}`)
	var whole struct {
		Choices []struct{ Message struct{ Content string } }
	}
	if err := json.NewDecoder(resp.Body).Decode(&whole); err != nil || len(whole.Choices) != 1 || whole.Choices[0].Message.Content == "" {
		t.Fatalf("whole reply: %v %+v", err, whole)
	}
	want := whole.Choices[0].Message.Content

	p := &tab{t: t, ctx: newBrowser(t)}
	p.do(chromedp.Navigate(c.URL + "/page"))
	eval := func(t *testing.T, call string) string {
		t.Helper()
		p.t = t
		return pageEval[string](p, "(async () => {"+fesScript+"return JSON.stringify(await "+call+");})()")
	}
	for _, framing := range []string{"openai", "sse"} {
		url, _ := json.Marshal(c.URL + "/v1/chat/completions?format=" + framing)
		t.Run(framing, func(t *testing.T) {
			body := `{model: 'sim-slow-300', stream: true, messages: [{role: 'user', content: 'hi'}]}`
			var got fesSeen
			if err := json.Unmarshal([]byte(eval(t, "read("+string(url)+", "+body+")")), &got); err != nil {
				t.Fatal(err)
			}
			if len(got.Failures) > 0 || got.Thrown != "" || !got.Closed || got.Error != nil || got.Text != want {
				t.Errorf("%+v\nwant the text %q, every message JSON, and a clean close", got, want)
			}
			switch framing {
			case "openai":
				if !got.Done || got.Messages != len(got.Events)+1 {
					t.Errorf("openai: [DONE] %v, %d messages for %d events", got.Done, got.Messages, len(got.Events))
				}
			case "sse":
				if got.Done || len(got.Events) == 0 || got.Events[len(got.Events)-1] != "done" {
					t.Errorf("sse: events %v", got.Events)
				}
			}
			// The keepalives it read past.
			var text string
			if err := json.Unmarshal([]byte(eval(t, "raw("+string(url)+", "+body+")")), &text); err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(text, "\n: keepalive\n"); n < 3 {
				t.Errorf("%d keepalives between events in %q", n, text)
			}
		})
		t.Run(framing+"/error", func(t *testing.T) {
			var got fesSeen
			if err := json.Unmarshal([]byte(eval(t, "read("+string(url)+", {model: 'sim-error-event', stream: true, messages: [{role: 'user', content: 'hi'}]})")), &got); err != nil {
				t.Fatal(err)
			}
			if len(got.Failures) > 0 || got.Thrown != "" || got.Error["message"] == nil || got.Done {
				t.Errorf("%+v\nwant the error as a message that parses, and no [DONE]", got)
			}
			if last := got.Events[len(got.Events)-1]; framing == "sse" && last != "error" || framing == "openai" && last != "message" {
				t.Errorf("%s: the error came as %q", framing, last)
			}
		})
	}
}
