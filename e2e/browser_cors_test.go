package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The page's script: fetchNDJSON reads an ndjson stream line by line,
// listen reads an sse stream with EventSource, postStream sends a JSON POST
// with an Authorization header (which takes a preflight) and reads the
// openai framing. Each resolves to what the page could see.
const corsScript = `
const fetchNDJSON = async (url) => {
	const resp = await fetch(url);
	const seen = {status: resp.status, contents: 0, end: '',
		retryAfter: resp.headers.get('Retry-After'), remaining: resp.headers.get('x-ratelimit-remaining-tokens')};
	if (!resp.ok) {
		seen.end = (await resp.json()).error.message;
		return seen;
	}
	const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
	let buf = '';
	for (;;) {
		const {value, done} = await reader.read();
		if (done) return seen;
		buf += value;
		let i;
		while ((i = buf.indexOf('\n')) >= 0) {
			const line = buf.slice(0, i);
			buf = buf.slice(i + 1);
			if (!line) continue;
			const o = JSON.parse(line);
			if (o.content !== undefined) seen.contents++;
			else seen.end = JSON.stringify(o);
		}
	}
};
const listen = (url) => new Promise((resolve) => {
	const es = new EventSource(url);
	const seen = {status: 0, contents: 0, end: '', retryAfter: null, remaining: null};
	es.onmessage = () => seen.contents++;
	es.addEventListener('done', (e) => { es.close(); seen.end = 'done ' + e.data; resolve(seen); });
	es.addEventListener('error', (e) => { es.close(); seen.end = 'error ' + (e.data || ''); resolve(seen); });
});
const postStream = async (url) => {
	const resp = await fetch(url, {method: 'POST',
		headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer the-page-key'},
		body: JSON.stringify({model: 'm', stream: true, messages: [{role: 'user', content: '3'}]})});
	const text = await resp.text();
	return {status: resp.status, contents: text.split('"content"').length - 1, end: text.slice(-14),
		retryAfter: resp.headers.get('Retry-After'), remaining: resp.headers.get('x-ratelimit-remaining-tokens')};
};
const blocked = async (f) => { try { await f(); return 'read'; } catch (e) { return e.name; } };
`

// seen is what the page could read of one answer.
type seen struct {
	Status     int    `json:"status"`
	Contents   int    `json:"contents"`
	End        string `json:"end"`
	RetryAfter string `json:"retryAfter"`
	Remaining  string `json:"remaining"`
}

// A page served from another origin (another port) streams from llm_proxy
// over fetch and EventSource, and reads a mid-stream budget cut and a 429's
// message and Retry-After; a page of an origin not allowed reads nothing.
func TestBrowserCORS(t *testing.T) {
	page := func() *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			io.WriteString(w, "<!doctype html><title>another origin</title><p>an app on another port</p>")
		}))
		t.Cleanup(s.Close)
		return s
	}
	app, other := page(), page()
	up := newTokenUpstream(t, 2*time.Millisecond)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy /chat {
		to %[1]s
		format sse
		rate_limit 100-M {
			tokens 50-M
		}
		cors %[2]s {
			max_age 10m
		}
	}
	llm_proxy /v1/chat/completions {
		to %[1]s
		rate_limit 100-M
		cors %[2]s
	}
}`, up.URL, app.URL))
	api, _ := json.Marshal(c.URL)

	p := &tab{t: t, ctx: newBrowser(t)}
	p.do(chromedp.Navigate(app.URL))
	run := func(call string) seen {
		t.Helper()
		return pageEval[seen](p, "(async () => {"+corsScript+"return await "+call+";})()")
	}

	got := run(`fetchNDJSON(` + string(api) + ` + '/chat?prompt=5&format=ndjson')`)
	if got.Status != 200 || got.Contents != 5 || !strings.Contains(got.End, `"done":true`) || got.Remaining != "0" {
		t.Errorf("fetch: %+v", got)
	}
	got = run(`listen(` + string(api) + ` + '/chat?prompt=5')`)
	if got.Contents != 5 || !strings.HasPrefix(got.End, "done ") {
		t.Errorf("EventSource: %+v", got)
	}
	got = run(`postStream(` + string(api) + ` + '/v1/chat/completions')`)
	if got.Status != 200 || got.Contents != 3 || got.End != "data: [DONE]\n\n" {
		t.Errorf("POST with a preflight: %+v", got)
	}

	// 14 of the 50 tokens are spent: the next stream is cut, and the page
	// reads why; then it is refused, and the page reads the wait.
	got = run(`fetchNDJSON(` + string(api) + ` + '/chat?prompt=1000&format=ndjson')`)
	if got.Status != 200 || got.Contents < 30 || got.Contents > 36 || !strings.Contains(got.End, `"type":"rate_limit_exceeded"`) {
		t.Errorf("cut mid-stream: %+v", got)
	}
	got = run(`fetchNDJSON(` + string(api) + ` + '/chat?prompt=5&format=ndjson')`)
	retry, err := strconv.Atoi(got.RetryAfter)
	if got.Status != 429 || err != nil || retry < 1 || retry > 60 || got.Remaining != "0" ||
		got.End != "token budget exceeded: 50 tokens per minute; retry in "+got.RetryAfter+"s" {
		t.Errorf("refused: %+v", got)
	}
	calls := up.calls.Load()

	// Another origin's page reads nothing, and spends nothing.
	p.do(chromedp.Navigate(other.URL))
	for _, call := range []string{
		`blocked(() => fetchNDJSON(` + string(api) + ` + '/chat?prompt=5&format=ndjson'))`,
		`blocked(() => postStream(` + string(api) + ` + '/v1/chat/completions'))`,
	} {
		if got := pageEval[string](p, "(async () => {"+corsScript+"return await "+call+";})()"); got != "TypeError" {
			t.Errorf("%s: %s, want the browser to refuse it (TypeError)", call, got)
		}
	}
	if got := pageEval[seen](p, "(async () => {"+corsScript+"return await listen("+string(api)+" + '/chat?prompt=5');})()"); got.Contents != 0 || got.End != "error " {
		t.Errorf("EventSource from another origin: %+v", got)
	}
	if n := up.calls.Load(); n != calls {
		t.Errorf("another origin's page made %d upstream calls", n-calls)
	}
	resp := get(t, c.URL+"/chat?prompt=5", "Origin", other.URL)
	if resp.StatusCode != 403 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("another origin: %d %v", resp.StatusCode, resp.Header)
	}
}

// A preflight is answered before any limit or upstream: it costs nothing.
// Refusals carry the CORS headers too, so that the page reads them.
func TestPreflightCostsNothing(t *testing.T) {
	up := newUpstream(t, completeStream)
	const origin = "https://app.example"
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		format text
		rate_limit 3-M
		cors %s {
			max_age 1h
		}
	}
}`, up.URL, origin))
	remaining := func() string {
		t.Helper()
		resp := get(t, c.URL+"/?prompt=hi", "Origin", origin)
		io.Copy(io.Discard, resp.Body)
		if resp.Header.Get("Access-Control-Allow-Origin") != origin || resp.Header.Get("Vary") != "Origin" ||
			!strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "Retry-After") {
			t.Errorf("%d without CORS headers: %v", resp.StatusCode, resp.Header)
		}
		return resp.Header.Get("X-RateLimit-Remaining")
	}
	if r := remaining(); r != "2" {
		t.Fatalf("remaining %s", r)
	}
	for range 5 {
		req, _ := http.NewRequest(http.MethodOptions, c.URL+"/", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		resp := do(t, req)
		h := resp.Header
		if resp.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != origin || h.Get("Access-Control-Allow-Methods") != "GET, POST" ||
			h.Get("Access-Control-Allow-Headers") != "authorization, content-type" || h.Get("Access-Control-Max-Age") != "3600" ||
			h.Get("X-RateLimit-Limit") != "" {
			t.Fatalf("preflight: %d %v", resp.StatusCode, h)
		}
	}
	// Another origin's preflight gets no CORS headers.
	req, _ := http.NewRequest(http.MethodOptions, c.URL+"/", nil)
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	if resp := do(t, req); resp.StatusCode != 403 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("another origin's preflight: %d %v", resp.StatusCode, resp.Header)
	}
	if r := remaining(); r != "1" {
		t.Errorf("remaining %s after the preflights, want 1", r)
	}
	remaining()
	remaining() // a 429, with the CORS headers
	if n := up.calls.Load(); n != 3 {
		t.Errorf("%d upstream calls, want 3", n)
	}
}
