package e2e

import (
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// An upstream that fails right after its role-only first chunk (OpenAI's
// and vLLM's first event) is failed over, and the client reads the other
// upstream's completion alone: one id, one role delta, an answer the
// official openai-go accumulator takes.
func TestFailoverAfterRoleChunkSplicesNothing(t *testing.T) {
	role := func(id string) string {
		return `{"id":"` + id + `","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`
	}
	content := func(id, s string) string {
		return `{"id":"` + id + `","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"` + s + `"},"finish_reason":null}]}`
	}
	broken := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+role("AAA")+"\n\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection breaks after the role chunk
	})
	good := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range []string{role("BBB"), content("BBB", "Hello"), content("BBB", " world"),
			`{"id":"BBB","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`, "[DONE]"} {
			io.WriteString(w, "data: "+ev+"\n\n")
		}
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s %s
		lb_policy first
	}
}`, broken.URL, good.URL))

	client := openai.NewClient(option.WithBaseURL(c.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	s := streamGo(t.Context(), client, openai.ChatCompletionNewParams{Model: "m",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	if s.err != nil {
		t.Fatal(s.err)
	}
	roles := 0
	for _, ch := range s.chunks {
		if ch.ID != "BBB" {
			t.Errorf("chunk from another completion: id %q", ch.ID)
		}
		if len(ch.Choices) > 0 && ch.Choices[0].Delta.Role != "" {
			roles++
		}
	}
	if roles != 1 || s.content() != "Hello world" {
		t.Errorf("%d role deltas, content %q: want one completion, \"Hello world\"", roles, s.content())
	}
	if broken.calls.Load() != 1 || good.calls.Load() != 1 {
		t.Errorf("calls: broken %d, good %d", broken.calls.Load(), good.calls.Load())
	}
}
