package caddymodule

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// responsesEvents is a Responses stream with text, a function call and
// usage, as OpenAI sends one (with a data line split in two, which the
// openai framing compacts).
var responsesEvents = []string{
	"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-x\",\"usage\":null}}\n\n",
	"event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"type\":\"message\"}}\n\n",
	"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"output_index\":0,\"delta\":\"Hel\"}\n\n",
	"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\ndata: \"sequence_number\":3,\"output_index\":0,\"delta\":\"lo\"}\n\n",
	"event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":4,\"output_index\":1,\"item\":{\"type\":\"function_call\",\"call_id\":\"call_1\",\"name\":\"f\",\"arguments\":\"\"}}\n\n",
	"event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":5,\"output_index\":1,\"delta\":\"{}\"}\n\n",
	"event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":6,\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-x\",\"usage\":{\"input_tokens\":3,\"output_tokens\":5,\"total_tokens\":8}}}\n\n",
}

// eventsUpstream serves events (or, given a status, that status with the
// events as its JSON body; "RESET" breaks the connection) and records what
// it was asked, in ask's words.
type eventsUpstream struct {
	*httptest.Server
	calls atomic.Int32
	last  atomic.Value
}

func newEventsUpstream(t *testing.T, ask func(r *http.Request, body []byte) string, status int, events ...string) *eventsUpstream {
	t.Helper()
	u := &eventsUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		u.last.Store(ask(r, b))
		if status != 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			io.WriteString(w, strings.Join(events, ""))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range events {
			if ev == "RESET" {
				panic(http.ErrAbortHandler)
			}
			io.WriteString(w, ev)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(u.Close)
	return u
}

// responsesUpstream serves events at /v1/responses; last is
// "METHOD /path?query auth body".
type responsesUpstream = eventsUpstream

func newResponsesUpstream(t *testing.T, events ...string) *responsesUpstream {
	t.Helper()
	return newEventsUpstream(t, func(r *http.Request, b []byte) string {
		return r.Method + " " + r.URL.RequestURI() + " " + r.Header.Get("Authorization") + " " + string(b)
	}, 0, events...)
}

func responsesProxy(t *testing.T, opts string, ups ...*responsesUpstream) *httptest.Server {
	t.Helper()
	block := "llm_proxy {\n\tapi_key sk-server\n\tmodel default-model\n\tto"
	for _, u := range ups {
		block += " " + u.URL + "/v1"
	}
	return serveProxy(t, provisionProxy(t, block+"\n"+opts+"}"))
}

func postResponses(t *testing.T, url, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer client-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, string(b) + "<broken: " + err.Error() + ">"
	}
	return resp, string(b)
}

// TestResponsesOpenAIFramingPassesEventsThrough: the upstream's events
// reach the client as they came, none dropped, reordered or invented, with
// the server's key and the client's body.
func TestResponsesOpenAIFramingPassesEventsThrough(t *testing.T) {
	up := newResponsesUpstream(t, responsesEvents...)
	srv := responsesProxy(t, "", up)
	resp, body := postResponses(t, srv.URL+"/v1/responses", `{"input":"hi","stream":true,"store":false}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	want := "id: llmstream\n" + strings.Join(responsesEvents, "")
	want = strings.Replace(want, ",\ndata: \"sequence_number\":3", ",\"sequence_number\":3", 1)
	if body != want {
		t.Errorf("relayed\n%s\nwant\n%s", body, want)
	}
	if got := up.last.Load().(string); got != `POST /v1/responses Bearer sk-server {"input":"hi","model":"default-model","store":false,"stream":true}` {
		t.Errorf("upstream asked %s", got)
	}
}

// TestResponsesReframed: sse, ndjson and text carry a Responses stream's
// text, tool call and usage as they carry a chat stream's, stream forced on.
func TestResponsesReframed(t *testing.T) {
	up := newResponsesUpstream(t, responsesEvents...)
	srv := responsesProxy(t, "", up)
	usage := `{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}`
	tools := `{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}`
	args := `{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}`
	for format, want := range map[string]string{
		"sse": "id: llmstream\ndata: {\"content\":\"Hel\"}\n\ndata: {\"content\":\"lo\"}\n\ndata: " + tools + "\n\ndata: " + args + "\n\n" +
			"event: done\ndata: {\"finish_reason\":\"tool_calls\",\"usage\":" + usage + ",\"model\":\"gpt-x\"}\n\n",
		"ndjson": "{\"content\":\"Hel\"}\n{\"content\":\"lo\"}\n" + tools + "\n" + args + "\n" +
			"{\"done\":true,\"finish_reason\":\"tool_calls\",\"usage\":" + usage + ",\"model\":\"gpt-x\"}\n",
		"text": "Hello",
	} {
		_, body := postResponses(t, srv.URL+"/v1/responses?format="+format, `{"model":"m","input":"hi"}`)
		if body != want {
			t.Errorf("%s:\n%s\nwant\n%s", format, body, want)
		}
		if got := up.last.Load().(string); !strings.HasSuffix(got, `{"input":"hi","model":"m","stream":true}`) {
			t.Errorf("%s: stream not forced on: %s", format, got)
		}
	}
}

// TestResponsesFailures: the upstream's response.failed is relayed as it
// came in the openai framing (nothing added after it) and is the error
// signal of the others, with its message.
func TestResponsesFailures(t *testing.T) {
	failed := "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":3,\"response\":{\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\n"
	up := newResponsesUpstream(t, append(responsesEvents[:3:3], failed)...)
	srv := responsesProxy(t, "", up)
	for format, want := range map[string]string{
		"openai": "id: llmstream\n" + strings.Join(responsesEvents[:3], "") + failed,
		"sse":    "id: llmstream\ndata: {\"content\":\"Hel\"}\n\nevent: error\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"upstream_error\",\"code\":\"server_error\"}}\n\n",
		"ndjson": "{\"content\":\"Hel\"}\n{\"error\":{\"message\":\"boom\",\"type\":\"upstream_error\",\"code\":\"server_error\"}}\n",
		"text":   "Hel<broken: unexpected EOF>",
	} {
		_, body := postResponses(t, srv.URL+"/v1/responses?format="+format, `{"model":"m","input":"hi","stream":true}`)
		if body != want {
			t.Errorf("%s:\n%q\nwant\n%q", format, body, want)
		}
	}
}

// TestResponsesProxyFailure: a stream that breaks is told, in the openai
// framing, as an error event in the Responses shape that follows the
// events relayed.
func TestResponsesProxyFailure(t *testing.T) {
	up := newResponsesUpstream(t, append(responsesEvents[:3:3], "RESET")...)
	srv := responsesProxy(t, "", up)
	_, body := postResponses(t, srv.URL+"/v1/responses", `{"model":"m","input":"hi","stream":true}`)
	want := "id: llmstream\n" + strings.Join(responsesEvents[:3], "") +
		"event: error\ndata: {\"type\":\"error\",\"code\":\"upstream_error\",\"message\":\"upstream stream ended abnormally\",\"param\":null,\"sequence_number\":3}\n\n"
	if body != want {
		t.Errorf("got\n%s\nwant\n%s", body, want)
	}
}

// TestResponsesFailover: another upstream answers only while nothing of
// the first one's answer reached the client. In the openai framing its
// first event does; in the others, events that show nothing do not.
func TestResponsesFailover(t *testing.T) {
	broken := newResponsesUpstream(t, responsesEvents[0], responsesEvents[1], "RESET")
	good := newResponsesUpstream(t, responsesEvents...)
	srv := responsesProxy(t, "\tlb_policy first\n", broken, good)

	_, body := postResponses(t, srv.URL+"/v1/responses?format=ndjson", `{"model":"m","input":"hi"}`)
	if !strings.HasPrefix(body, "{\"content\":\"Hel\"}\n") || !strings.Contains(body, `"done":true`) {
		t.Errorf("ndjson did not fail over: %q", body)
	}
	calls := good.calls.Load()
	_, body = postResponses(t, srv.URL+"/v1/responses", `{"model":"m","input":"hi","stream":true}`)
	if good.calls.Load() != calls || !strings.Contains(body, "event: error\n") || strings.Count(body, "event: response.created") != 1 {
		t.Errorf("openai framing failed over after its first event went out (%d calls, then %d): %q", calls, good.calls.Load(), body)
	}

	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	defer down.Close()
	srv = responsesProxy(t, "\tlb_policy first\n", &responsesUpstream{Server: down}, good)
	if _, body := postResponses(t, srv.URL+"/v1/responses", `{"model":"m","input":"hi","stream":true}`); !strings.HasSuffix(body, responsesEvents[6]) {
		t.Errorf("a 502 before the first byte did not fail over: %q", body)
	}
}

// TestResponsesRetrievePassesQuery: GET /v1/responses/{id} reaches the
// upstream with its query unchanged (the proxy's own format= aside) and
// streams what it answers.
func TestResponsesRetrievePassesQuery(t *testing.T) {
	up := newResponsesUpstream(t, responsesEvents[2:]...)
	srv := responsesProxy(t, "", up)
	for _, tt := range []struct{ query, upstream, prefix string }{
		{"stream=true&starting_after=1", "stream=true&starting_after=1", "id: llmstream\n" + responsesEvents[2]},
		{"format=ndjson&stream=true&starting_after=1&include[]=x", "stream=true&starting_after=1&include[]=x", "{\"content\":\"Hel\"}\n"},
	} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/responses/resp_1?"+tt.query, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := up.last.Load().(string); got != "GET /v1/responses/resp_1?"+tt.upstream+" Bearer sk-server " {
			t.Errorf("upstream asked %q", got)
		}
		if !strings.HasPrefix(string(b), tt.prefix) {
			t.Errorf("%s: %q", tt.query, b)
		}
	}
}

// TestResponsesWhole: a request that does not stream gets the upstream's
// Response whole.
func TestResponsesWhole(t *testing.T) {
	const whole = `{"id":"resp_1","object":"response","status":"completed","output":[],"usage":{"input_tokens":1,"output_tokens":1,"total_tokens":2}}`
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, whole)
	}))
	defer up.Close()
	srv := responsesProxy(t, "", &responsesUpstream{Server: up})
	resp, body := postResponses(t, srv.URL+"/v1/responses", `{"model":"m","input":"hi"}`)
	if resp.StatusCode != 200 || body != whole {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
}

// TestResponsesWebSocketRefused: an upgrade to the Responses API's
// WebSocket mode is answered 426 at once, in OpenAI's error shape, and the
// connection closed; no upstream is called.
func TestResponsesWebSocketRefused(t *testing.T) {
	up := newResponsesUpstream(t, responsesEvents...)
	srv := responsesProxy(t, "", up)
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOpenAI-Beta: responses_websockets=2026-02-06\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		Error struct{ Message, Type string }
	}
	err = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusUpgradeRequired || err != nil || e.Error.Message == "" || !resp.Close {
		t.Errorf("%d close %v: %+v %v", resp.StatusCode, resp.Close, e, err)
	}
	if up.calls.Load() != 0 {
		t.Error("the upstream was called")
	}
}

// TestResponsesWithinLimits: the request limits bound a Responses request
// as they bound a chat one, so /v1/responses is no way around them.
func TestResponsesWithinLimits(t *testing.T) {
	up := newResponsesUpstream(t, responsesEvents...)
	srv := responsesProxy(t, "\tmodels gpt-x default-model\n\tmax_tokens 100 clamp\n\tmax_prompt 10\n", up)
	resp, body := postResponses(t, srv.URL+"/v1/responses", `{"model":"gpt-5","input":"hi"}`)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "model_not_found") {
		t.Errorf("a model off the list: %d %s", resp.StatusCode, body)
	}
	resp, body = postResponses(t, srv.URL+"/v1/responses", `{"input":[{"role":"user","content":[{"type":"input_text","text":"far too long a prompt"}]}]}`)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "at most 10") {
		t.Errorf("a prompt over max_prompt: %d %s", resp.StatusCode, body)
	}
	if up.calls.Load() != 0 {
		t.Error("a refused request reached the upstream")
	}
	postResponses(t, srv.URL+"/v1/responses", `{"input":"hi","max_output_tokens":5000}`)
	if got := up.last.Load().(string); !strings.HasSuffix(got, `{"input":"hi","max_output_tokens":100,"model":"default-model"}`) {
		t.Errorf("max_output_tokens not clamped: %s", got)
	}
}

// TestResponsesFromPrompt: GET /v1/responses?prompt= is one input, streamed,
// so an EventSource (the chat page's transport) reads a Responses upstream;
// its reconnect is answered 204, as on the chat path.
func TestResponsesFromPrompt(t *testing.T) {
	up := newResponsesUpstream(t, responsesEvents...)
	srv := responsesProxy(t, "", up)
	resp, err := http.Get(srv.URL + "/v1/responses?prompt=hi&format=sse")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(b), "id: llmstream\ndata: {\"content\":\"Hel\"}\n\n") || !strings.Contains(string(b), "event: done\n") {
		t.Errorf("%s", b)
	}
	if got := up.last.Load().(string); got != `POST /v1/responses Bearer sk-server {"input":"hi","model":"default-model","stream":true}` {
		t.Errorf("upstream asked %s", got)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/responses?prompt=hi&format=sse", nil)
	req.Header.Set("Last-Event-ID", "llmstream")
	calls := up.calls.Load()
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNoContent || up.calls.Load() != calls {
		t.Errorf("reconnect: %v %v", resp, err)
	}
}
