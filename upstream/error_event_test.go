package upstream

import (
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// TestErrorEventIsNoEnd: an event of type error is a failure whatever its
// data, "[DONE]" included; taking it for the end would report a clean
// finish to the client.
func TestErrorEventIsNoEnd(t *testing.T) {
	for name, stream := range map[string]string{
		"first event": "event: error\ndata: [DONE]\n\n",
		"after content": `data: {"choices":[{"index":0,"delta":{"content":"a"}}]}` + "\n\n" +
			"event: error\ndata: [DONE]\n\n",
		"after the finish": `data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}` + "\n\n" +
			"event: error\ndata: [DONE]\n\n",
	} {
		t.Run(name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, stream)
			})
			s := open(t, c)
			var ch chunk.Chunk
			var err error
			for range 3 {
				if err = s.Next(&ch); err != nil {
					break
				}
			}
			var e *chunk.Error
			if !errors.As(err, &e) || e.Type != chunk.TypeUpstream || e.Message == "" {
				t.Fatalf("Next = %v, want the upstream's error", err)
			}
		})
	}
}
