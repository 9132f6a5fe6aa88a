package upstream

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// An open stream holds no copy of its request once it is committed: the
// body the client sent is collected while the stream goes on.
func TestCommittedStreamHoldsNoRequestBody(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+`{"choices":[{"index":0,"delta":{"content":"a"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // still streaming while the test looks
	})
	big := `{"messages":[{"role":"user","content":"` + strings.Repeat("x", 1<<20) + `"}]}`
	req, err := FromJSON([]byte(big), true, "m")
	if err != nil {
		t.Fatal(err)
	}
	collected := make(chan struct{})
	runtime.SetFinalizer(&req.Body[0], func(*byte) { close(collected) })
	s, err := c.Open(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ch chunk.Chunk
	if err := s.Next(&ch); err != nil {
		t.Fatal(err)
	}
	s.Commit()
	req.Release()
	for deadline := time.Now().Add(5 * time.Second); ; {
		runtime.GC()
		select {
		case <-collected:
			return
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the request body is still held by the open stream after Commit")
		}
	}
}
