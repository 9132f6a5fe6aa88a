package e2e

import (
	"encoding/json"
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

// TestDoneEventStringsAreJSON: the finish reason and model the done event
// repeats hold control characters; the event is still JSON that gives
// them back.
func TestDoneEventStringsAreJSON(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"model":"m\u0001\"","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"st\u0007\u007f\u0000op"}]}`+"\n\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, framingConfig(up.URL))
	for _, format := range []string{"sse", "ndjson"} {
		t.Run(format, func(t *testing.T) {
			b, err := io.ReadAll(get(t, c.URL+"/?prompt=x&format="+format).Body)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			last := strings.TrimPrefix(lines[len(lines)-1], "data: ")
			var done struct {
				FinishReason string `json:"finish_reason"`
				Model        string `json:"model"`
			}
			if err := json.Unmarshal([]byte(last), &done); err != nil {
				t.Fatalf("done %q is not JSON: %v", last, err)
			}
			if done.FinishReason != "st\a\x7f\x00op" || done.Model != "m\x01\"" {
				t.Errorf("done %q: finish %q model %q", last, done.FinishReason, done.Model)
			}
		})
	}
}
