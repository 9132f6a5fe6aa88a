package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// want is what a test expects of a chunk; "" is absent.
type want struct {
	content, reasoning, tools, finish, usage, model, errMsg, errCode string
}

func got(c *chunk.Chunk) want {
	w := want{content: string(c.Content), reasoning: string(c.Reasoning), tools: string(c.ToolCalls),
		finish: c.FinishReason, usage: string(c.Usage), model: c.Model}
	if c.Err != nil {
		w.errMsg, w.errCode = c.Err.Message, string(c.Err.Code)
	}
	return w
}

// TestResponsesParserEvents: one case per event type the proxy reads, and
// the content-free rest.
func TestResponsesParserEvents(t *testing.T) {
	for _, tt := range []struct {
		name, typ, data string
		want            want
	}{
		{"text delta", "response.output_text.delta",
			`{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi \u00e9"}`,
			want{content: `"Hi \u00e9"`}},
		{"empty text delta", "response.output_text.delta", `{"type":"response.output_text.delta","delta":""}`, want{}},
		{"reasoning summary delta", "response.reasoning_summary_text.delta",
			`{"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"summary_index":0,"delta":"think"}`,
			want{reasoning: `"think"`}},
		{"raw reasoning delta", "response.reasoning_text.delta",
			`{"type":"response.reasoning_text.delta","item_id":"rs_1","output_index":0,"content_index":0,"delta":"raw"}`,
			want{reasoning: `"raw"`}},
		{"function call added", "response.output_item.added",
			`{"type":"response.output_item.added","output_index":1,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_1","name":"get_weather"}}`,
			want{tools: `[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]`}},
		{"message added", "response.output_item.added",
			`{"type":"response.output_item.added","output_index":0,"item":{"id":"msg_1","type":"message","role":"assistant","content":[]}}`,
			want{}},
		{"arguments delta", "response.function_call_arguments.delta",
			`{"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"{\"ci"}`,
			want{tools: `[{"index":0,"function":{"arguments":"{\"ci"}}]`}},
		{"created", "response.created",
			`{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","model":"gpt-4o","output":[],"usage":null}}`,
			want{model: "gpt-4o"}},
		{"completed", "response.completed",
			`{"type":"response.completed","response":{"id":"resp_1","status":"completed","model":"gpt-4o","output":[{"type":"message"}],` +
				`"usage":{"input_tokens":3,"input_tokens_details":{"cached_tokens":1},"output_tokens":8,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":11}}}`,
			want{finish: "stop", model: "gpt-4o",
				usage: `{"prompt_tokens":3,"completion_tokens":8,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":2}}`}},
		{"completed, usage in the chat shape already", "response.completed",
			`{"type":"response.completed","response":{"usage":{"prompt_tokens":1,"completion_tokens":2}}}`,
			want{finish: "stop", usage: `{"prompt_tokens":1,"completion_tokens":2}`}},
		{"failed", "response.failed",
			`{"type":"response.failed","sequence_number":9,"response":{"status":"failed","error":{"code":"server_error","message":"boom"},"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}}`,
			want{errMsg: "boom", errCode: `"server_error"`, usage: `{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}`}},
		{"failed without an error", "response.failed", `{"type":"response.failed","response":{"status":"failed","error":null}}`,
			want{errMsg: "upstream response failed"}},
		{"incomplete", "response.incomplete",
			`{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":1,"output_tokens":4,"total_tokens":5}}}`,
			want{errMsg: "upstream response incomplete: max_output_tokens", errCode: `"max_output_tokens"`,
				usage: `{"prompt_tokens":1,"completion_tokens":4,"total_tokens":5}`}},
		{"error", "error", `{"type":"error","code":"rate_limit_exceeded","message":"slow down","param":null,"sequence_number":3}`,
			want{errMsg: "slow down", errCode: `"rate_limit_exceeded"`}},
		{"error, nested", "error", `{"type":"error","sequence_number":3,"error":{"type":"invalid_request_error","code":"bad","message":"nested"}}`,
			want{errMsg: "nested", errCode: `"bad"`}},
		{"type from the data only", "", `{"type":"response.output_text.delta","delta":"x"}`, want{content: `"x"`}},
		{"type from the event line only", "response.output_text.delta", `{"delta":"y"}`, want{content: `"y"`}},
		{"escaped type", "", `{"type":"response.output_text.delt\u0061","delta":"z"}`, want{content: `"z"`}},
		{"content-free", "response.content_part.added",
			`{"type":"response.content_part.added","item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":""}}`,
			want{}},
		{"unknown type", "response.something_new", `{"type":"response.something_new","delta":"not text"}`, want{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var rp ResponsesParser
			var c chunk.Chunk
			if tt.typ == "response.function_call_arguments.delta" {
				// It belongs to the call added before it.
				if err := rp.Parse(nil, []byte(`{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call"}}`), &c); err != nil {
					t.Fatal(err)
				}
				c.Reset()
			}
			if err := rp.Parse([]byte(tt.typ), []byte(tt.data), &c); err != nil {
				t.Fatal(err)
			}
			if g := got(&c); g != tt.want {
				t.Errorf("\n got %+v\nwant %+v", g, tt.want)
			}
			if string(c.Raw) != tt.data {
				t.Errorf("Raw %q, want the data as sent", c.Raw)
			}
			for _, v := range [][]byte{c.Content, c.Reasoning, c.ToolCalls, c.Usage} {
				if v != nil && !json.Valid(v) {
					t.Errorf("%q is not JSON", v)
				}
			}
		})
	}
}

// TestResponsesParserRefusesNonJSON: data that is not one JSON object is
// no event to relay; in an event typed error, it is the upstream's failure.
func TestResponsesParserRefusesNonJSON(t *testing.T) {
	var rp ResponsesParser
	var c chunk.Chunk
	for _, data := range []string{`{not json`, `[]`, `{"type":"x"} {}`, `"s"`} {
		err := rp.Parse([]byte("response.output_text.delta"), []byte(data), &c)
		var e *chunk.Error
		if err == nil || errors.As(err, &e) {
			t.Errorf("%s: %v, want a decoding error", data, err)
		}
		if err := rp.Parse([]byte("error"), []byte(data), &c); !errors.As(err, &e) || e.Message == "" {
			t.Errorf("typed error %s: %v, want the upstream's failure", data, err)
		}
	}
}

// TestResponsesParserToolIndices: calls are numbered among the calls, not
// among all output items, and each delta finds its call by output_index.
func TestResponsesParserToolIndices(t *testing.T) {
	var rp ResponsesParser
	var c chunk.Chunk
	for _, ev := range []struct{ data, want string }{
		{`{"type":"response.output_item.added","output_index":0,"item":{"type":"reasoning"}}`, ""},
		{`{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","call_id":"a","name":"f"}}`,
			`[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":""}}]`},
		{`{"type":"response.output_item.added","output_index":2,"item":{"type":"function_call","call_id":"b","name":"g"}}`,
			`[{"index":1,"id":"b","type":"function","function":{"name":"g","arguments":""}}]`},
		{`{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{}"}`, `[{"index":0,"function":{"arguments":"{}"}}]`},
		{`{"type":"response.function_call_arguments.delta","output_index":2,"delta":"[]"}`, `[{"index":1,"function":{"arguments":"[]"}}]`},
		{`{"type":"response.function_call_arguments.delta","output_index":7,"delta":"?"}`, `[{"index":2,"function":{"arguments":"?"}}]`},
	} {
		c.Reset()
		if err := rp.Parse(nil, []byte(ev.data), &c); err != nil {
			t.Fatal(err)
		}
		if string(c.ToolCalls) != ev.want {
			t.Errorf("%s:\n got %s\nwant %s", ev.data, c.ToolCalls, ev.want)
		}
	}
	c.Reset()
	if err := rp.Parse(nil, []byte(`{"type":"response.completed","response":{}}`), &c); err != nil || c.FinishReason != "tool_calls" {
		t.Errorf("finish %q (%v), want tool_calls", c.FinishReason, err)
	}
}

func TestParseResponse(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		want       want
	}{
		{"text", `{"id":"resp_1","object":"response","status":"completed","model":"m","error":null,"output":[` +
			`{"type":"reasoning","summary":[{"type":"summary_text","text":"why"}]},` +
			`{"type":"message","content":[{"type":"output_text","text":"Hello "},{"type":"output_text","text":"there"}]}],` +
			`"usage":{"input_tokens":2,"output_tokens":3,"total_tokens":5}}`,
			want{content: `"Hello there"`, reasoning: `"why"`, finish: "stop", model: "m",
				usage: `{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}`}},
		{"function call", `{"object":"response","status":"completed","output":[{"type":"function_call","call_id":"c1","name":"f","arguments":"{\"a\":1}"}]}`,
			want{tools: `[{"function":{"arguments":"{\"a\":1}","name":"f"},"id":"c1","index":0,"type":"function"}]`, finish: "tool_calls"}},
		{"failed", `{"object":"response","status":"failed","error":{"code":"server_error","message":"boom"},"output":[]}`,
			want{errMsg: "boom", errCode: `"server_error"`}},
		{"incomplete", `{"object":"response","status":"incomplete","incomplete_details":{"reason":"content_filter"},"output":[]}`,
			want{errMsg: "upstream response incomplete: content_filter", errCode: `"content_filter"`}},
		{"error body", `{"error":{"message":"no such response","type":"invalid_request_error"}}`,
			want{errMsg: "no such response"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c chunk.Chunk
			if err := ParseResponse([]byte(tt.body), &c); err != nil {
				t.Fatal(err)
			}
			if g := got(&c); g != tt.want {
				t.Errorf("\n got %+v\nwant %+v", g, tt.want)
			}
		})
	}
}

// responsesStream is a short Responses stream, as OpenAI sends one.
const responsesStream = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"model\":\"m\",\"usage\":null}}\n\n" +
	"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Hi sk-secret-key\"}\n\n" +
	"event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"model\":\"m\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1,\"total_tokens\":2}}}\n\n"

// TestResponsesStream: a Responses request goes to POST <base>/responses
// and its stream decodes to chunks that end at response.completed, each
// with its event type, secrets redacted.
func TestResponsesStream(t *testing.T) {
	var path string
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		path = r.Method + " " + r.URL.Path
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, responsesStream)
		w.(http.Flusher).Flush()
		<-r.Context().Done() // an upstream that keeps the stream open: completed is the end
	})
	req, _ := FromResponsesJSON([]byte(`{"model":"m","input":"hi","stream":true}`), false, "")
	s, err := c.Open(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if path != "POST /v1/responses" {
		t.Errorf("asked %s", path)
	}
	var ch chunk.Chunk
	var events []string
	var text string
	for {
		err := s.Next(&ch)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, string(ch.Event))
		text += string(ch.Content)
	}
	if strings.Join(events, " ") != "response.created response.output_text.delta response.completed" {
		t.Errorf("events %v", events)
	}
	if text != `"Hi [redacted]"` {
		t.Errorf("content %s", text)
	}
}

// TestResponsesFailureComesAsAChunkFirst: the upstream's failure event is
// a chunk (for the framing that relays it), then the error.
func TestResponsesFailureComesAsAChunkFirst(t *testing.T) {
	for _, tail := range []string{
		"event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\n",
		"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"boom\",\"sequence_number\":2}\n\n",
	} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, strings.SplitAfter(responsesStream, "\n\n")[0]+tail)
		})
		req, _ := FromResponsesJSON([]byte(`{"model":"m","input":"hi","stream":true}`), false, "")
		s, err := c.Open(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		var ch chunk.Chunk
		if err := s.Next(&ch); err != nil || string(ch.Event) != "response.created" {
			t.Fatalf("first: %v %s", err, ch.Event)
		}
		if err := s.Next(&ch); err != nil || ch.Err == nil || ch.Err.Message != "boom" {
			t.Fatalf("failure chunk: %v %+v", err, ch.Err)
		}
		err = s.Next(&ch)
		var e *chunk.Error
		if !errors.As(err, &e) || e.Message != "boom" {
			t.Fatalf("then %v, want the failure", err)
		}
		s.Close()
	}
}

// TestResponsesStreamCut: a Responses stream that ends before its
// response.completed, or with a chat stream's [DONE], is no proper end.
func TestResponsesStreamCut(t *testing.T) {
	for _, tail := range []string{"", "data: [DONE]\n\n"} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, strings.SplitAfter(responsesStream, "\n\n")[0]+tail)
		})
		req, _ := FromResponsesJSON([]byte(`{"input":"hi","stream":true}`), false, "m")
		s, err := c.Open(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		var ch chunk.Chunk
		_ = s.Next(&ch)
		if err := s.Next(&ch); err == nil || err == io.EOF {
			t.Errorf("tail %q: %v, want a broken stream", tail, err)
		}
		s.Close()
	}
}

// TestRetrieveResponsePassesQuery: GET responses/{id} goes out with the
// client's query as it came, after the base URL's own.
func TestRetrieveResponsePassesQuery(t *testing.T) {
	var got string
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.Method + " " + r.URL.RequestURI() + " body:" + r.Header.Get("Content-Length") + r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, responsesStream)
	})
	c.BaseURL += "?api-version=1"
	req := RetrieveResponse("responses/resp_1", "stream=true&starting_after=3")
	if !req.Stream {
		t.Error("stream=true does not stream")
	}
	s, err := c.Open(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if want := "GET /v1/responses/resp_1?api-version=1&stream=true&starting_after=3 body:Bearer sk-secret-key"; got != want {
		t.Errorf("asked %q\n want %q", got, want)
	}
}

// TestResponsesWholeBody: a whole Response is an answer even when it
// failed; an error body is a 502 before anything is sent.
func TestResponsesWholeBody(t *testing.T) {
	for _, tt := range []struct {
		body   string
		status int
	}{
		{`{"object":"response","status":"failed","error":{"code":"x","message":"m"}}`, 0},
		{`{"object":"response","status":"completed","error":null,"output":[]}`, 0},
		{`{"error":{"message":"no","type":"server_error"}}`, http.StatusBadGateway},
	} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, tt.body)
		})
		s, err := c.Open(context.Background(), RetrieveResponse("responses/r", ""))
		var e *chunk.Error
		switch {
		case tt.status == 0 && err != nil:
			t.Errorf("%s: %v", tt.body, err)
		case tt.status != 0 && (!errors.As(err, &e) || e.Status != tt.status):
			t.Errorf("%s: %v, want %d", tt.body, err, tt.status)
		case err == nil:
			if string(s.Whole()) != tt.body {
				t.Errorf("whole %s", s.Whole())
			}
			s.Close()
		}
	}
}

func TestFromResponsesJSON(t *testing.T) {
	for _, tt := range []struct {
		body         string
		force        bool
		wantBody     string
		stream       bool
		model, error string
	}{
		{body: `{"model":"m","input":"hi","stream":true}`, wantBody: `{"model":"m","input":"hi","stream":true}`, stream: true, model: "m"},
		{body: `{"input":"hi"}`, wantBody: `{"input":"hi","model":"def"}`, model: "def"},
		{body: `{"model":"m","input":"hi"}`, force: true, wantBody: `{"input":"hi","model":"m","stream":true}`, stream: true, model: "m"},
		{body: `{"model":"m","input":[{"role":"user","content":"x"}],"previous_response_id":"resp_1"}`,
			wantBody: `{"model":"m","input":[{"role":"user","content":"x"}],"previous_response_id":"resp_1"}`, model: "m"},
		{body: `[]`, error: "not a JSON object"},
		{body: `{"model":1}`, error: "model must be a string"},
		{body: `{"stream":"yes"}`, error: "stream must be a boolean"},
		{body: `{} {}`, error: "data after"},
	} {
		req, err := FromResponsesJSON([]byte(tt.body), tt.force, "def")
		if tt.error != "" {
			var e *chunk.Error
			if !errors.As(err, &e) || e.Status != http.StatusBadRequest || !strings.Contains(e.Message, tt.error) {
				t.Errorf("%s: %v, want a 400 saying %q", tt.body, err, tt.error)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tt.body, err)
		}
		if string(req.Body) != tt.wantBody || req.Stream != tt.stream || req.Model != tt.model || req.API != Responses {
			t.Errorf("%s: %s stream %v model %q api %v", tt.body, req.Body, req.Stream, req.Model, req.API)
		}
	}
}
