package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"golang.org/x/net/websocket"
)

// responsesStack starts caddy with llm_simulator on a port of its own and
// llm_proxy for the whole of /v1/ in front of it, under `encode zstd gzip`.
func responsesStack(t *testing.T) *caddy {
	return apiStack(t, "to {SIM}\n\t\theartbeat 20ms")
}

// TestClientsResponsesNode runs e2e/node/responses.test.mjs: the OpenAI Node
// SDK's Responses API, the Vercel AI SDK's default openai(model), LangChain
// JS's ChatOpenAI with useResponsesApi, and Node's WebSocket client.
func TestClientsResponsesNode(t *testing.T) {
	nodeTest(t, "responses.test.mjs", responsesStack(t), "NODE_OPTIONS=--experimental-websocket")
}

// TestClientsResponsesGo drives the Responses API with the official Go SDK's
// stream: text, a tool call, usage, and the upstream's own failure.
func TestClientsResponsesGo(t *testing.T) {
	c := responsesStack(t)
	client := openai.NewClient(option.WithBaseURL(c.URL+"/v1/"), option.WithAPIKey("client-key-never-forwarded"), option.WithMaxRetries(0))
	stream := func(t *testing.T, params responses.ResponseNewParams) ([]responses.ResponseStreamEventUnion, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		s := client.Responses.NewStreaming(ctx, params)
		defer s.Close()
		var evs []responses.ResponseStreamEventUnion
		for s.Next() {
			evs = append(evs, s.Current())
		}
		return evs, s.Err()
	}
	input := responses.ResponseNewParamsInputUnion{OfString: openai.String("hello streaming world")}

	t.Run("text and usage", func(t *testing.T) {
		evs, err := stream(t, responses.ResponseNewParams{Model: "gpt-4o-mini", Input: input})
		if err != nil {
			t.Fatal(err)
		}
		var text strings.Builder
		for i, ev := range evs {
			if ev.SequenceNumber != int64(i) {
				t.Fatalf("event %d (%s) is numbered %d", i, ev.Type, ev.SequenceNumber)
			}
			if ev.Type == "response.output_text.delta" {
				text.WriteString(ev.Delta)
			}
		}
		if got := text.String(); got != "Echo: hello streaming world This is naïve 流式 " {
			t.Errorf("text %q", got)
		}
		last := evs[len(evs)-1]
		if last.Type != "response.completed" || last.Response.Usage.InputTokens != 3 || last.Response.Usage.OutputTokens != 8 || last.Response.Usage.TotalTokens != 11 {
			t.Errorf("last %s, usage %+v", last.Type, last.Response.Usage)
		}
		if got := last.Response.OutputText(); got != text.String() {
			t.Errorf("the completed response's text %q", got)
		}
	})

	t.Run("tool call", func(t *testing.T) {
		evs, err := stream(t, responses.ResponseNewParams{Model: "sim-tools", Input: input,
			Tools: []responses.ToolUnionParam{{OfFunction: &responses.FunctionToolParam{Name: "get_weather",
				Parameters: map[string]any{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}}}}}})
		if err != nil {
			t.Fatal(err)
		}
		var args strings.Builder
		for _, ev := range evs {
			if ev.Type == "response.function_call_arguments.delta" {
				args.WriteString(ev.Delta)
			}
		}
		out := evs[len(evs)-1].Response.Output
		if args.String() != `{"city":"Paris"}` || len(out) != 1 || out[0].Type != "function_call" || out[0].Name != "get_weather" ||
			out[0].CallID != "call_sim_1" || out[0].Arguments.OfString != `{"city":"Paris"}` {
			t.Errorf("arguments %s, output %+v", args.String(), out)
		}
	})

	t.Run("the upstream's failure", func(t *testing.T) {
		evs, err := stream(t, responses.ResponseNewParams{Model: "sim-error-event", Input: input})
		if err != nil {
			t.Fatal(err)
		}
		if last := evs[len(evs)-1]; last.Type != "response.failed" || last.Response.Error.Message != "simulated upstream error" {
			t.Errorf("last %s: %+v", last.Type, last.Response.Error)
		}
	})
}

// framed is what one framing carried of a Responses stream.
type framed struct {
	text, args, tool string
	usage            [3]int64
}

// TestResponsesReframed: a Responses stream re-framed as sse, ndjson and
// text carries the same text, tool call and usage as the openai framing's
// events (text has no tool calls or usage to carry).
func TestResponsesReframed(t *testing.T) {
	c := responsesStack(t)
	for _, model := range []string{"gpt-4o-mini", "sim-tools"} {
		body := `{"model":"` + model + `","input":"hello streaming world"}`
		resp := post(t, c.URL+"/v1/responses", strings.Replace(body, "{", `{"stream":true,`, 1))
		want := fromEvents(t, resp.Body)

		for _, format := range []string{"sse", "ndjson", "text"} {
			resp := post(t, c.URL+"/v1/responses?format="+format, body)
			raw, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			got := fromFraming(t, format, string(raw))
			w := want
			if format == "text" {
				w = framed{text: want.text}
			}
			if got != w {
				t.Errorf("%s, %s:\n got %+v\nwant %+v", model, format, got, w)
			}
		}
		if model == "sim-tools" && (want.tool != "get_weather" || want.args != `{"city":"Paris"}`) {
			t.Errorf("the openai framing's tool call: %+v", want)
		}
		if want.usage[0] != 3 {
			t.Errorf("%s: usage %v", model, want.usage)
		}
	}
}

// fromEvents reads the openai framing of a Responses stream.
func fromEvents(t *testing.T, body io.Reader) framed {
	t.Helper()
	var f framed
	sc := bufio.NewScanner(body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Type, Delta string
			Item        struct{ Type, Name string }
			Response    struct {
				Usage struct {
					In  int64 `json:"input_tokens"`
					Out int64 `json:"output_tokens"`
					All int64 `json:"total_tokens"`
				}
			}
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		switch ev.Type {
		case "response.output_text.delta":
			f.text += ev.Delta
		case "response.function_call_arguments.delta":
			f.args += ev.Delta
		case "response.output_item.added":
			if ev.Item.Type == "function_call" {
				f.tool = ev.Item.Name
			}
		case "response.completed":
			u := ev.Response.Usage
			f.usage = [3]int64{u.In, u.Out, u.All}
		}
	}
	return f
}

// fromFraming reads the sse, ndjson or text framing of a stream.
func fromFraming(t *testing.T, format, raw string) framed {
	t.Helper()
	if format == "text" {
		return framed{text: raw}
	}
	var f framed
	for _, line := range strings.Split(raw, "\n") {
		if format == "sse" {
			var ok bool
			if line, ok = strings.CutPrefix(line, "data: "); !ok {
				continue
			}
		}
		if line == "" {
			continue
		}
		var obj struct {
			Content   string
			ToolCalls []struct {
				Function struct{ Name, Arguments string }
			} `json:"tool_calls"`
			Usage *struct {
				Prompt     int64 `json:"prompt_tokens"`
				Completion int64 `json:"completion_tokens"`
				Total      int64 `json:"total_tokens"`
			}
		}
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("%s line %q: %v", format, line, err)
		}
		f.text += obj.Content
		for _, tc := range obj.ToolCalls {
			f.args += tc.Function.Arguments
			if tc.Function.Name != "" {
				f.tool = tc.Function.Name
			}
		}
		if u := obj.Usage; u != nil {
			f.usage = [3]int64{u.Prompt, u.Completion, u.Total}
		}
	}
	return f
}

// TestResponsesRetrieveQuery: GET /v1/responses/{id}?stream=true&starting_after=N
// reaches the upstream with its query, so the replay starts after N rather
// than at the start, or as an empty 200.
func TestResponsesRetrieveQuery(t *testing.T) {
	c := responsesStack(t)
	resp := get(t, c.URL+"/v1/responses/resp_abc?stream=true&starting_after=3")
	evs := fromSequence(t, resp.Body)
	if resp.StatusCode != http.StatusOK || len(evs) < 5 || evs[0] != 4 {
		t.Errorf("%d: sequence numbers %v, want them from 4", resp.StatusCode, evs)
	}
	for i, n := range evs {
		if n != int64(4+i) {
			t.Fatalf("sequence numbers %v", evs)
		}
	}
	resp = get(t, c.URL+"/v1/responses/resp_abc")
	var r struct{ ID, Object string }
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.ID != "resp_abc" || r.Object != "response" {
		t.Errorf("retrieved %+v %v", r, err)
	}
}

func fromSequence(t *testing.T, body io.Reader) []int64 {
	t.Helper()
	var seq []int64
	sc := bufio.NewScanner(body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var ev struct {
				N int64 `json:"sequence_number"`
			}
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatalf("%q: %v", data, err)
			}
			seq = append(seq, ev.N)
		}
	}
	return seq
}

// TestResponsesWebSocket: Codex's WebSocket mode (an upgrade on
// /v1/responses with OpenAI-Beta: responses_websockets=...) is refused with
// 426 at once, in OpenAI's error shape and without calling the upstream;
// Codex then streams over HTTP, which works.
func TestResponsesWebSocket(t *testing.T) {
	c := responsesStack(t)
	host := strings.TrimPrefix(c.URL, "http://")

	// A WebSocket client.
	cfg, err := websocket.NewConfig("ws://"+host+"/v1/responses", c.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Header.Set("OpenAI-Beta", "responses_websockets=2026-02-06")
	cfg.Header.Set("Authorization", "Bearer client-key")
	start := time.Now()
	if ws, err := websocket.DialConfig(cfg); err == nil {
		ws.Close()
		t.Fatal("the upgrade was accepted")
	} else if de := (*websocket.DialError)(nil); !errors.As(err, &de) || de.Err != websocket.ErrBadStatus {
		t.Errorf("dial: %v, want a refused handshake", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the refusal took %s", d)
	}

	// The same handshake by hand, to read the answer.
	conn, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(conn, "GET /v1/responses HTTP/1.1\r\nHost: "+host+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOpenAI-Beta: responses_websockets=2026-02-06\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		Error struct{ Message, Type string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != http.StatusUpgradeRequired ||
		e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, "HTTP only") {
		t.Errorf("%d %+v %v", resp.StatusCode, e, err)
	}
	resp.Body.Close()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("the connection stayed open after the refusal: %v", err)
	}
	if log := c.Log.String(); !strings.Contains(log, `"upstream":"","model":"","format":"openai","status":426,"outcome":"rejected"`) {
		t.Errorf("no log line of a refusal that called no upstream:\n%s", log)
	}

	// And the fallback: the same request over HTTP streams.
	resp = post(t, c.URL+"/v1/responses", `{"model":"m","input":"hi","stream":true}`)
	if f := fromEvents(t, resp.Body); f.text != "Echo: hi This is naïve 流式 text 🙂 " {
		t.Errorf("HTTP streaming after the refusal: %+v", f)
	}
}
