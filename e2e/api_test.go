package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// The tests in api_test.go drive the API beside chat completions through
// `llm_proxy /v1/*`: /v1/models, the pass-through paths (embeddings, legacy
// completions, audio, Anthropic's messages) and the paths it does not serve.

// apiStack starts caddy with llm_simulator on a port of its own and, on
// {PORT}, `llm_proxy /v1/*` in front of it under `encode zstd gzip`, with
// the server's key from the environment. upstreams is the proxy's upstream
// lines, where {SIM} is the simulator's base URL.
func apiStack(t *testing.T, upstreams string) *caddy {
	t.Helper()
	sim := fmt.Sprintf("http://127.0.0.1:%d/v1", testenv.FreePort(t))
	return startCaddy(t, fmt.Sprintf(`%s {
	llm_simulator {
		chunk_interval 5ms
		chunks 8
	}
}

http://127.0.0.1:{PORT} {
	encode zstd gzip
	llm_proxy /v1/* {
		api_key {env.TEST_LLM_KEY}
		%s
	}
}
`, strings.TrimSuffix(sim, "/v1"), strings.ReplaceAll(upstreams, "{SIM}", sim)), withEnv("TEST_LLM_KEY="+testKey))
}

func goClient(c *caddy) openai.Client {
	return openai.NewClient(
		option.WithBaseURL(c.URL+"/v1/"),
		option.WithAPIKey("client-key-never-forwarded"),
		option.WithMaxRetries(0),
		option.WithRequestTimeout(20*time.Second),
	)
}

// TestAPIOpenAIGo drives /v1/models, /v1/embeddings and the legacy
// /v1/completions with the official Go SDK, against the simulator.
func TestAPIOpenAIGo(t *testing.T) {
	c := apiStack(t, "to {SIM}\n\t\tupstream {SIM} {\n\t\t\tmodel text-embedding-3-small llm-simulator\n\t\t}")
	client := goClient(c)
	ctx := t.Context()

	t.Run("models", func(t *testing.T) {
		page, err := client.Models.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]bool{}
		for _, m := range page.Data {
			if m.Object != "model" || m.OwnedBy != "llm-simulator" || m.Created == 0 {
				t.Errorf("entry %+v", m)
			}
			ids[m.ID] = true
		}
		// The second upstream's rename adds its client name to the list.
		if !ids["llm-simulator"] || !ids["sim-tools"] || !ids["text-embedding-3-small"] || len(ids) != len(page.Data) {
			t.Errorf("models %v", ids)
		}
		m, err := client.Models.Get(ctx, "sim-reasoning")
		if err != nil || m.ID != "sim-reasoning" {
			t.Errorf("Get = %+v, %v", m, err)
		}
		_, err = client.Models.Get(ctx, "gpt-9")
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
			t.Errorf("Get of an unknown model = %v", err)
		}
	})

	t.Run("embeddings", func(t *testing.T) {
		res, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: "text-embedding-3-small",
			Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"hello world", "other", "hello world"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Data) != 3 || len(res.Data[0].Embedding) != 64 || res.Usage.PromptTokens != 5 {
			t.Fatalf("embeddings %d, %d dims, usage %+v", len(res.Data), len(res.Data[0].Embedding), res.Usage)
		}
		if fmt.Sprint(res.Data[0].Embedding) != fmt.Sprint(res.Data[2].Embedding) || fmt.Sprint(res.Data[0].Embedding) == fmt.Sprint(res.Data[1].Embedding) {
			t.Error("the same text must get the same vector")
		}
	})

	t.Run("legacy completions, streamed", func(t *testing.T) {
		stream := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
			Model: "gpt-3.5-turbo-instruct", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hello there")},
		})
		defer stream.Close()
		var text strings.Builder
		n := 0
		for stream.Next() {
			n++
			for _, ch := range stream.Current().Choices {
				text.WriteString(ch.Text)
			}
		}
		if err := stream.Err(); err != nil || text.String() != "Echo: hello there This is naïve 流式 text " || n < 8 {
			t.Errorf("text %q in %d chunks, %v", text.String(), n, err)
		}
	})

	t.Run("legacy completions, whole", func(t *testing.T) {
		comp, err := client.Completions.New(ctx, openai.CompletionNewParams{
			Model: "gpt-3.5-turbo-instruct", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hi")},
			MaxTokens: openai.Int(2),
		})
		if err != nil || comp.Choices[0].Text != "Echo: hi " || comp.Choices[0].FinishReason != "length" {
			t.Errorf("completion %+v, %v", comp, err)
		}
	})

	t.Run("upstream error in OpenAI's shape", func(t *testing.T) {
		_, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: "sim-error-400", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")},
		})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "simulated 400") {
			t.Errorf("error %v", err)
		}
	})
}

// TestAPIAudio passes a transcription upload (multipart, large enough to
// stream to the upstream) and a speech answer (binary, streamed) between
// the Go SDK and a scripted upstream: the server's key goes up, the
// client's does not, and the audio comes back piece by piece.
func TestAPIAudio(t *testing.T) {
	upload := bytes.Repeat([]byte("RIFF\x00\x01fake wav "), 200_000) // 3 MiB: over the 1 MiB held in memory
	pieces := [][]byte{[]byte("ID3\x04\x00first-piece\xff\xfb"), bytes.Repeat([]byte{0xff, 0xfb, 0x90, 0x00}, 4096)}
	sent := make(chan struct{})
	var fileOK atomic.Bool
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "Bearer "+testKey {
			t.Errorf("%s: Authorization %q", r.URL.Path, got)
		}
		switch r.URL.Path {
		case "/v1/audio/transcriptions":
			_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
			mr := multipart.NewReader(r.Body, params["boundary"])
			for {
				part, err := mr.NextPart()
				if err != nil {
					break
				}
				b, _ := io.ReadAll(part)
				if part.FormName() == "file" {
					fileOK.Store(bytes.Equal(b, upload))
				}
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"text":"transcribed"}`)
		case "/v1/audio/speech":
			w.Header().Set("Content-Type", "audio/mpeg")
			w.Write(pieces[0])
			w.(http.Flusher).Flush()
			select { // the rest only once the client has the first piece
			case <-sent:
			case <-time.After(10 * time.Second):
				t.Error("the first piece of audio did not reach the client on its own")
			}
			w.Write(pieces[1])
		default:
			http.NotFound(w, r)
		}
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	encode zstd gzip
	llm_proxy /v1/* {
		to %s/v1
		api_key {env.TEST_LLM_KEY}
		max_body 8MiB
	}
}
`, up.URL), withEnv("TEST_LLM_KEY="+testKey))
	client := goClient(c)

	tr, err := client.Audio.Transcriptions.New(t.Context(), openai.AudioTranscriptionNewParams{
		File: openai.File(bytes.NewReader(upload), "speech.wav", "audio/wav"), Model: openai.AudioModelWhisper1,
	})
	if err != nil || tr.Text != "transcribed" || !fileOK.Load() {
		t.Errorf("transcription %+v, %v; upstream got the file whole: %v", tr, err, fileOK.Load())
	}

	resp, err := client.Audio.Speech.New(t.Context(), openai.AudioSpeechNewParams{
		Model: openai.SpeechModelTTS1, Input: "hello", Voice: openai.AudioSpeechNewParamsVoiceUnion{OfString: openai.String("alloy")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "audio/mpeg" {
		t.Errorf("Content-Type %q", ct)
	}
	first := make([]byte, len(pieces[0]))
	if _, err := io.ReadFull(resp.Body, first); err != nil || !bytes.Equal(first, pieces[0]) {
		t.Fatalf("first piece %q, %v", first, err)
	}
	close(sent)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(rest, pieces[1]) {
		t.Errorf("rest: %d bytes, %v", len(rest), err)
	}
}

// messageEvents reads a typed SSE stream: its event types, and the text of
// its text deltas.
func messageEvents(t *testing.T, r io.Reader) (types []string, text string) {
	t.Helper()
	sc := bufio.NewScanner(r)
	typ := ""
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			typ = v
			types = append(types, v)
		}
		if v, ok := strings.CutPrefix(line, "data: "); ok && typ == "content_block_delta" {
			var d struct {
				Delta struct{ Text string } `json:"delta"`
			}
			if err := json.Unmarshal([]byte(v), &d); err != nil {
				t.Fatalf("event data %s: %v", v, err)
			}
			text += d.Delta.Text
		}
	}
	return types, text
}

// TestAPIAnthropicMessages streams /v1/messages through an `auth x-api-key`
// upstream, as Claude Code with ANTHROPIC_BASE_URL calls it: the server's
// key goes as x-api-key with the client's anthropic-version and -beta, and
// the typed events come back one by one.
func TestAPIAnthropicMessages(t *testing.T) {
	const stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n" +
		"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
		"event: ping\ndata: {\"type\": \"ping\"}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n" +
		"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/messages" || r.URL.RawQuery != "beta=true" {
			t.Errorf("asked %s?%s", r.URL.Path, r.URL.RawQuery)
		}
		h := r.Header
		if h.Get("X-Api-Key") != testKey || h.Get("Authorization") != "" ||
			h.Get("Anthropic-Version") != "2023-06-01" || h.Get("Anthropic-Beta") != "claude-code-20250219" {
			t.Errorf("headers %v", h)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Request-Id", "req_1")
		awkward(w, stream, 5, 60, 1, 200)
	})
	c := apiStack(t, fmt.Sprintf("upstream %s/v1 {\n\t\t\tauth x-api-key\n\t\t}\n\t\tupstream {SIM} {\n\t\t\tauth x-api-key\n\t\t}\n\t\tlb_policy first", up.URL))

	body := `{"model":"claude-sonnet-4","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi claude"}]}`
	resp := post(t, c.URL+"/v1/messages?beta=true", body, "X-Api-Key", "client-key-never-forwarded",
		"Authorization", "Bearer client-key-never-forwarded", "Anthropic-Version", "2023-06-01", "Anthropic-Beta", "claude-code-20250219")
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(raw) != stream {
		t.Errorf("scripted upstream: %d %v\n%q", resp.StatusCode, resp.Header, raw)
	}

	// The simulator behind an upstream that is down: failover before the
	// first byte, then its own typed events.
	up.Close()
	resp = post(t, c.URL+"/v1/messages", body, "Anthropic-Version", "2023-06-01")
	types, text := messageEvents(t, resp.Body)
	want := "message_start content_block_start" + strings.Repeat(" content_block_delta", 8) + " content_block_stop message_delta message_stop"
	if resp.StatusCode != 200 || strings.Join(types, " ") != want || text != "Echo: hi claude This is naïve 流式 text " {
		t.Errorf("simulator: %d events %v text %q", resp.StatusCode, types, text)
	}
}

// TestAPIUnknownPaths checks that what the proxy does not serve is refused
// in OpenAI's error shape, never with a bare 404 or 405.
func TestAPIUnknownPaths(t *testing.T) {
	c := apiStack(t, "to {SIM}")
	for _, tt := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/v1/files", 404, ""},
		{"POST", "/v1/fine_tuning/jobs", 404, ""},
		{"DELETE", "/v1/organization/users/u1", 404, ""},
		{"GET", "/v1/embeddings", 405, "POST"},
		{"PUT", "/v1/audio/speech", 405, "POST"},
		{"DELETE", "/v1/models/llm-simulator", 405, "GET, HEAD"},
		{"GET", "/v1/models/no-such-model", 404, ""},
		{"PATCH", "/v1/chat/completions", 405, "GET, POST"},
	} {
		req, _ := http.NewRequestWithContext(context.Background(), tt.method, c.URL+tt.path, nil)
		resp := do(t, req)
		var e struct {
			Error struct{ Message, Type string } `json:"error"`
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tt.status || resp.Header.Get("Allow") != tt.allow || resp.Header.Get("Content-Type") != "application/json" ||
			json.Unmarshal(b, &e) != nil || e.Error.Message == "" || e.Error.Type != "invalid_request_error" {
			t.Errorf("%s %s: %d Allow %q %s", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Allow"), b)
		}
	}
}

// TestAPIOpenAINode runs e2e/node/passthrough.test.mjs, the official OpenAI
// Node SDK's models.list, models.retrieve, embeddings.create and legacy
// completions against `llm_proxy /v1/*` in front of the simulator.
func TestAPIOpenAINode(t *testing.T) {
	nodeTest(t, "passthrough.test.mjs", apiStack(t, "to {SIM}"))
}
