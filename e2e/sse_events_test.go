package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// What fetch-based SSE clients (@microsoft/fetch-event-source, the most
// used) make of the SSE framings: they deliver every blank-line-ended
// event, with data or not, as a message. So no event may be without data:
// the stream's ID goes with the first data, and a heartbeat is a comment
// line with no blank line after it.
func TestSSEEventsAllCarryData(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.(http.Flusher).Flush()
		time.Sleep(200 * time.Millisecond) // heartbeats before the first event
		io.WriteString(w, "data: "+chunkJSON("hi")+"\n\ndata: "+finishJSON+"\n\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		heartbeat 30ms
	}
}`, up.URL))
	for _, format := range []string{"openai", "sse"} {
		body, _ := io.ReadAll(get(t, c.URL+"/?prompt=x&format="+format).Body)
		if !strings.Contains(string(body), ": keepalive\n") {
			t.Fatalf("%s: no heartbeat in %q", format, body)
		}
		events := strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n")
		for i, ev := range events {
			var data bool
			for _, line := range strings.Split(ev, "\n") {
				data = data || strings.HasPrefix(line, "data: ")
			}
			if !data {
				t.Errorf("%s: event %d has no data, a fetch-based client's empty message: %q", format, i, ev)
			}
		}
		if !strings.Contains(events[0], "id: llmstream\n") {
			t.Errorf("%s: the first event carries no ID: %q", format, events[0])
		}
	}
	// EventSource on the openai framing reconnects with the ID it saw: a
	// finished completion is not started (and billed) again.
	calls := up.calls.Load()
	if resp := get(t, c.URL+"/v1/chat/completions?prompt=x", "Last-Event-ID", "llmstream"); resp.StatusCode != http.StatusNoContent {
		t.Errorf("reconnect on the openai framing: %d, want 204", resp.StatusCode)
	}
	if up.calls.Load() != calls {
		t.Error("a reconnect called the upstream")
	}
}
