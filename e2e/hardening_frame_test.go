package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// framingConfig proxies / to the upstream at to, framing by the format
// query parameter.
func framingConfig(to string) string {
	return fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
	}
}`, to)
}

// cleanEnd tells whether body ends as a finished stream in format.
func cleanEnd(format, body string) bool {
	switch format {
	case "openai":
		return strings.Contains(body, "data: [DONE]")
	case "sse":
		return strings.Contains(body, "event: done")
	case "ndjson":
		return strings.Contains(body, `"done":true`)
	}
	return false
}

// TestErrorEventWithDoneDataFails: an upstream event of type error whose
// data is "[DONE]" is a failure in every framing, never a clean end.
func TestErrorEventWithDoneDataFails(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("partial")+"\n\nevent: error\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, framingConfig(up.URL))
	for _, format := range []string{"openai", "sse", "ndjson", "text"} {
		t.Run(format, func(t *testing.T) {
			resp := get(t, c.URL+"/?prompt=x&format="+format)
			b, err := io.ReadAll(resp.Body)
			body := string(b)
			if err == nil {
				t.Errorf("the response ended cleanly: %q", body)
			}
			if cleanEnd(format, body) {
				t.Errorf("a clean end in %q", body)
			}
			if format != "text" && !strings.Contains(body, `"error":{`) {
				t.Errorf("no error signal in %q", body)
			}
		})
	}
}
