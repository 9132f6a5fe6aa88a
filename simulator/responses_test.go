package simulator

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/upstream"
)

// rsEvent is one event of a simulated Responses stream, decoded.
type rsEvent struct {
	typ  string
	data map[string]any
	raw  string
}

// responsesStream posts body to the simulator's /v1/responses (or GETs
// path) and decodes the stream: its events, and how the body ended.
func responsesStream(t *testing.T, method, path, body string) ([]rsEvent, *http.Response, error) {
	t.Helper()
	srv := httptest.NewServer(New(Config{Chunks: 8}))
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, readErr := io.ReadAll(resp.Body)
	er := upstream.NewEventReader(bytes.NewReader(raw), 0)
	var evs []rsEvent
	for {
		ev, err := er.Next()
		if err != nil {
			if err != io.EOF && readErr == nil {
				readErr = err
			}
			return evs, resp, readErr
		}
		e := rsEvent{typ: string(ev.Type), raw: string(ev.Data)}
		if json.Unmarshal(ev.Data, &e.data) == nil && e.data["type"] != e.typ {
			t.Errorf("event %s has data of type %v", e.typ, e.data["type"])
		}
		evs = append(evs, e)
	}
}

func types(evs []rsEvent) string {
	var s []string
	for _, e := range evs {
		s = append(s, strings.TrimPrefix(e.typ, "response."))
	}
	return strings.Join(s, " ")
}

// deltas joins the delta fields of the events of type typ.
func deltas(evs []rsEvent, typ string) string {
	var b strings.Builder
	for _, e := range evs {
		if e.typ == typ {
			b.WriteString(e.data["delta"].(string))
		}
	}
	return b.String()
}

// checkSequence checks that the events are numbered from first, one by one.
func checkSequence(t *testing.T, evs []rsEvent, first int) {
	t.Helper()
	for i, e := range evs {
		if n, _ := e.data["sequence_number"].(float64); int(n) != first+i {
			t.Fatalf("event %d (%s) has sequence_number %v", i, e.typ, e.data["sequence_number"])
		}
	}
}

func TestResponsesText(t *testing.T) {
	evs, resp, err := responsesStream(t, "POST", "/v1/responses", `{"model":"gpt-4o-mini","input":"hello streaming world","stream":true}`)
	if err != nil || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatal(err, resp.Header)
	}
	want := "created in_progress output_item.added content_part.added" + strings.Repeat(" output_text.delta", 8) +
		" output_text.done content_part.done output_item.done completed"
	if got := types(evs); got != want {
		t.Fatalf("events\n%s\nwant\n%s", got, want)
	}
	checkSequence(t, evs, 0)
	text := "Echo: hello streaming world This is naïve 流式 "
	if got := deltas(evs, "response.output_text.delta"); got != text {
		t.Errorf("text %q", got)
	}
	last := evs[len(evs)-1].data["response"].(map[string]any)
	if last["status"] != "completed" || last["model"] != "gpt-4o-mini" {
		t.Errorf("completed %v", last)
	}
	usage, _ := json.Marshal(last["usage"])
	if string(usage) != `{"input_tokens":3,"input_tokens_details":{"cached_tokens":0},"output_tokens":8,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":11}` {
		t.Errorf("usage %s", usage)
	}
	out, _ := json.Marshal(last["output"])
	if !strings.Contains(string(out), `"text":"`+text+`"`) {
		t.Errorf("output %s", out)
	}
}

func TestResponsesTools(t *testing.T) {
	evs, _, err := responsesStream(t, "POST", "/v1/responses", `{"model":"sim-tools","input":[{"role":"user","content":[{"type":"input_text","text":"weather?"}]}],"stream":true,"tools":[{"type":"function","name":"get_weather"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	want := "created in_progress output_item.added" + strings.Repeat(" function_call_arguments.delta", 5) +
		" function_call_arguments.done output_item.done completed"
	if got := types(evs); got != want {
		t.Fatalf("events\n%s\nwant\n%s", got, want)
	}
	if got := deltas(evs, "response.function_call_arguments.delta"); got != `{"city":"Paris"}` {
		t.Errorf("arguments %s", got)
	}
	item := evs[2].data["item"].(map[string]any)
	if item["type"] != "function_call" || item["call_id"] != "call_sim_1" || item["name"] != "get_weather" {
		t.Errorf("item %v", item)
	}
}

func TestResponsesReasoning(t *testing.T) {
	evs, _, err := responsesStream(t, "POST", "/v1/responses", `{"model":"sim-reasoning","input":"hi","stream":true}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := deltas(evs, "response.reasoning_summary_text.delta"); got != "Simulated reasoning: echo the prompt. " {
		t.Errorf("reasoning %q", got)
	}
	if !strings.HasPrefix(types(evs), "created in_progress output_item.added reasoning_summary_part.added reasoning_summary_text.delta") {
		t.Errorf("events %s", types(evs))
	}
	checkSequence(t, evs, 0)
}

// TestResponsesFailureModels: the failing models fail as a Responses
// stream does.
func TestResponsesFailureModels(t *testing.T) {
	evs, _, err := responsesStream(t, "POST", "/v1/responses", `{"model":"sim-error-event","input":"hi","stream":true}`)
	last := evs[len(evs)-1]
	if err != nil || last.typ != "response.failed" || strings.Count(types(evs), "output_text.delta") != faultAfter {
		t.Errorf("sim-error-event: %v %s", err, types(evs))
	}
	if e := last.data["response"].(map[string]any)["error"].(map[string]any); e["message"] != "simulated upstream error" {
		t.Errorf("failed with %v", e)
	}

	evs, _, err = responsesStream(t, "POST", "/v1/responses", `{"model":"m","input":"hi","stream":true,"max_output_tokens":2}`)
	last = evs[len(evs)-1]
	if err != nil || last.typ != "response.incomplete" || strings.Count(types(evs), "output_text.delta") != 2 {
		t.Errorf("max_output_tokens: %v %s", err, types(evs))
	}

	evs, _, err = responsesStream(t, "POST", "/v1/responses", `{"model":"sim-no-done","input":"hi","stream":true}`)
	if err != nil || evs[len(evs)-1].typ != "response.output_item.done" {
		t.Errorf("sim-no-done: %v %s", err, types(evs))
	}

	evs, _, err = responsesStream(t, "POST", "/v1/responses", `{"model":"sim-garbage","input":"hi","stream":true}`)
	if err != nil || evs[faultAfter+4].raw != "{not json" || evs[len(evs)-1].typ != "response.completed" {
		t.Errorf("sim-garbage: %v %s", err, types(evs))
	}

	if _, _, err = responsesStream(t, "POST", "/v1/responses", `{"model":"sim-reset","input":"hi","stream":true}`); err == nil {
		t.Error("sim-reset: the body ended cleanly")
	}

	_, resp, _ := responsesStream(t, "POST", "/v1/responses", `{"model":"sim-error-429","input":"hi","stream":true}`)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("sim-error-429: %d", resp.StatusCode)
	}
}

func TestResponsesWhole(t *testing.T) {
	srv := httptest.NewServer(New(Config{Chunks: 4}))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/v1/responses", "application/json", strings.NewReader(`{"model":"m","input":"hi there"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Object, Status string
		Output         []struct {
			Type    string
			Content []struct{ Type, Text string }
		}
		Usage struct{ InputTokens, OutputTokens int } `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.Object != "response" || r.Status != "completed" || len(r.Output) != 1 || r.Output[0].Content[0].Text != "Echo: hi there This " {
		t.Errorf("%+v", r)
	}
}

// TestResponsesStored: GET responses/{id} answers under that id, and with
// ?stream=true&starting_after=N replays the events after N.
func TestResponsesStored(t *testing.T) {
	all, _, err := responsesStream(t, "GET", "/v1/responses/resp_abc?stream=true", "")
	if err != nil {
		t.Fatal(err)
	}
	evs, _, err := responsesStream(t, "GET", "/v1/responses/resp_abc?stream=true&starting_after=3", "")
	if err != nil || len(evs) != len(all)-4 {
		t.Fatalf("%v: %d events after 3 of %d", err, len(evs), len(all))
	}
	checkSequence(t, evs, 4)
	if id := all[0].data["response"].(map[string]any)["id"]; id != "resp_abc" {
		t.Errorf("id %v", id)
	}
	_, resp, _ := responsesStream(t, "GET", "/v1/responses/resp_abc?starting_after=x", "")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a bad starting_after: %d", resp.StatusCode)
	}
	for _, tt := range []struct{ method, path string }{{"GET", "/v1/responses"}, {"POST", "/v1/responses/resp_abc"}} {
		if _, resp, _ := responsesStream(t, tt.method, tt.path, "{}"); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: %d", tt.method, tt.path, resp.StatusCode)
		}
	}
}
