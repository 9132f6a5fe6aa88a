package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

// rawTap keeps a copy of the last response body the SDK read, so a test can
// look at the bytes on the wire (heartbeats) next to what the SDK made of
// them. The subtests run one after another, so one tap is enough.
type rawTap struct{ last *syncBuffer }

func (rt *rawTap) middleware(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	resp, err := next(req)
	if err != nil {
		return resp, err
	}
	buf := &syncBuffer{}
	rt.last = buf
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.TeeReader(resp.Body, buf), resp.Body}
	return resp, nil
}

// goStream runs one streamed completion through the SDK's accumulator.
type goStream struct {
	acc    openai.ChatCompletionAccumulator
	chunks []openai.ChatCompletionChunk
	tools  []openai.FinishedChatCompletionToolCall
	err    error
}

func streamGo(ctx context.Context, client openai.Client, params openai.ChatCompletionNewParams) *goStream {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	s := &goStream{}
	stream := client.Chat.Completions.NewStreaming(ctx, params)
	defer stream.Close()
	for stream.Next() {
		chunk := stream.Current()
		s.chunks = append(s.chunks, chunk)
		s.acc.AddChunk(chunk)
		if tc, ok := s.acc.JustFinishedToolCall(); ok {
			s.tools = append(s.tools, tc)
		}
	}
	s.err = stream.Err()
	return s
}

func (s *goStream) content() string {
	if len(s.acc.Choices) == 0 {
		return ""
	}
	return s.acc.Choices[0].Message.Content
}

// TestClientsOpenAIGo drives llm_proxy with the official OpenAI Go SDK: an
// app that only changes its base URL must work unchanged.
func TestClientsOpenAIGo(t *testing.T) {
	c := simStack(t, "chunk_interval 5ms\n\t\tchunks 8", "heartbeat 20ms", "")
	tap := &rawTap{}
	client := openai.NewClient(
		option.WithBaseURL(c.URL+"/v1/"),
		option.WithAPIKey("client-key-never-forwarded"),
		option.WithMaxRetries(0),
		option.WithMiddleware(tap.middleware),
	)
	ctx := t.Context()
	hello := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello streaming world")}
	// The simulator echoes the prompt, then filler words, one per chunk.
	const want = "Echo: hello streaming world This is naïve 流式 "

	t.Run("streaming", func(t *testing.T) {
		s := streamGo(ctx, client, openai.ChatCompletionNewParams{Model: "gpt-4o-mini", Messages: hello})
		if s.err != nil {
			t.Fatal(s.err)
		}
		if got := s.content(); got != want {
			t.Errorf("content %q, want %q", got, want)
		}
		if len(s.chunks) < 8 {
			t.Errorf("%d chunks: the reply was not streamed", len(s.chunks))
		}
		if fr := s.acc.Choices[0].FinishReason; fr != "stop" {
			t.Errorf("finish_reason %q", fr)
		}
		// Not asked for: the usage chunk is not relayed.
		if s.acc.Usage.TotalTokens != 0 {
			t.Errorf("usage without include_usage: %+v", s.acc.Usage)
		}
	})

	t.Run("non-streaming", func(t *testing.T) {
		comp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o-mini", Messages: hello})
		if err != nil {
			t.Fatal(err)
		}
		if got := comp.Choices[0].Message.Content; got != want || comp.Choices[0].FinishReason != "stop" {
			t.Errorf("content %q finish %q", got, comp.Choices[0].FinishReason)
		}
		if comp.Usage.CompletionTokens != 8 || comp.Model != "gpt-4o-mini" {
			t.Errorf("usage %+v model %q", comp.Usage, comp.Model)
		}
	})

	t.Run("usage", func(t *testing.T) {
		s := streamGo(ctx, client, openai.ChatCompletionNewParams{
			Model: "gpt-4o-mini", Messages: hello,
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		if s.err != nil {
			t.Fatal(s.err)
		}
		u := s.acc.Usage
		if u.PromptTokens != 3 || u.CompletionTokens != 8 || u.TotalTokens != 11 {
			t.Errorf("usage %+v, want 3 + 8 = 11", u)
		}
		last := s.chunks[len(s.chunks)-1]
		if len(last.Choices) != 0 || !last.JSON.Usage.Valid() {
			t.Errorf("the last chunk is not the usage chunk: %s", last.RawJSON())
		}
		if s.content() != want {
			t.Errorf("content %q", s.content())
		}
	})

	t.Run("tool calls", func(t *testing.T) {
		s := streamGo(ctx, client, openai.ChatCompletionNewParams{
			Model: "sim-tools", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("weather in Paris?")},
			Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
				Name:       "get_weather",
				Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}},
			})},
		})
		if s.err != nil {
			t.Fatal(s.err)
		}
		pieces := 0
		for _, ch := range s.chunks {
			if len(ch.Choices) > 0 && len(ch.Choices[0].Delta.ToolCalls) > 0 {
				pieces++
			}
		}
		if pieces < 3 {
			t.Errorf("the tool call came in %d deltas, want it in pieces", pieces)
		}
		calls := s.acc.Choices[0].Message.ToolCalls
		if len(calls) != 1 || calls[0].ID != "call_sim_1" || calls[0].Function.Name != "get_weather" || calls[0].Function.Arguments != `{"city":"Paris"}` {
			t.Errorf("assembled tool calls %+v", calls)
		}
		if len(s.tools) != 1 || s.tools[0].Name != "get_weather" || s.tools[0].Arguments != `{"city":"Paris"}` {
			t.Errorf("JustFinishedToolCall %+v", s.tools)
		}
		if fr := s.acc.Choices[0].FinishReason; fr != "tool_calls" {
			t.Errorf("finish_reason %q", fr)
		}
	})

	t.Run("reasoning", func(t *testing.T) {
		s := streamGo(ctx, client, openai.ChatCompletionNewParams{Model: "sim-reasoning", Messages: hello})
		if s.err != nil {
			t.Fatal(s.err)
		}
		var reasoning strings.Builder
		for _, ch := range s.chunks {
			if len(ch.Choices) == 0 {
				continue
			}
			if f, ok := ch.Choices[0].Delta.JSON.ExtraFields["reasoning_content"]; ok {
				var piece string
				if err := json.Unmarshal([]byte(f.Raw()), &piece); err != nil {
					t.Fatalf("reasoning_content %s: %v", f.Raw(), err)
				}
				reasoning.WriteString(piece)
			}
		}
		if got := reasoning.String(); got != "Simulated reasoning: echo the prompt. " {
			t.Errorf("reasoning_content %q", got)
		}
		if s.content() != want {
			t.Errorf("content %q", s.content())
		}
	})

	// A stream that breaks after its first chunks must end in an error,
	// never look like a complete (shorter) reply.
	for _, model := range []string{"sim-error-event", "sim-reset"} {
		t.Run("broken/"+model, func(t *testing.T) {
			s := streamGo(ctx, client, openai.ChatCompletionNewParams{Model: model, Messages: hello})
			if s.err == nil {
				t.Fatalf("clean end after %q", s.content())
			}
			if got := s.content(); got != "Echo: hello streaming " {
				t.Errorf("content before the failure %q", got)
			}
			t.Logf("stream.Err(): %v", s.err)
		})
	}

	t.Run("heartbeats", func(t *testing.T) {
		s := streamGo(ctx, client, openai.ChatCompletionNewParams{Model: "sim-slow-100", Messages: hello})
		if s.err != nil {
			t.Fatal(s.err)
		}
		raw := tap.last.String()
		if n := strings.Count(raw, ": keepalive\n"); n < 3 {
			t.Fatalf("%d heartbeats on the wire, want several between the chunks: %q", n, raw)
		}
		if s.content() != want || len(s.chunks) < 8 {
			t.Errorf("content %q in %d chunks", s.content(), len(s.chunks))
		}
	})

	// Last: the proxy may rest an upstream that answered 429 for its
	// Retry-After, so a later request could be refused too.
	t.Run("rate limit", func(t *testing.T) {
		params := openai.ChatCompletionNewParams{Model: "sim-error-429", Messages: hello}
		check := func(t *testing.T, err error) {
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %v (%T), want *openai.Error", err, err)
			}
			wait, _ := strconv.Atoi(apiErr.Response.Header.Get("Retry-After"))
			if apiErr.StatusCode != 429 || wait < 1 || apiErr.Message == "" {
				t.Errorf("status %d Retry-After %q message %q", apiErr.StatusCode, apiErr.Response.Header.Get("Retry-After"), apiErr.Message)
			}
			t.Logf("%d: %s (Retry-After %d)", apiErr.StatusCode, apiErr.Message, wait)
		}
		t.Run("streaming", func(t *testing.T) {
			s := streamGo(ctx, client, params)
			if len(s.chunks) != 0 {
				t.Errorf("got %d chunks", len(s.chunks))
			}
			check(t, s.err)
		})
		t.Run("non-streaming", func(t *testing.T) {
			_, err := client.Chat.Completions.New(ctx, params)
			check(t, err)
		})
	})
}
