package upstream

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// FuzzFromJSON: any client body either becomes a well-formed upstream
// request or a 400 in the OpenAI error shape; nothing panics.
func FuzzFromJSON(f *testing.F) {
	for _, s := range []string{
		`{"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`,
		`{"prompt":"hi"}`, `{"messages":[]}`, `{"stream_options":null,"messages":[1]}`, `{"messages":[{"role":"user"},[[]]]}`, `[]`, `{`, `null`,
		`{"messages":[{}],"tools":[{"type":"function"}],"temperature":1e308}`,
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, force bool) {
		req, err := FromJSON(body, force, "default-model")
		if err != nil {
			var e *chunk.Error
			if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Message == "" {
				t.Fatalf("error %v is not a 400", err)
			}
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(req.Body, &m); err != nil {
			t.Fatalf("upstream body is not a JSON object: %s", req.Body)
		}
		var msgs []json.RawMessage
		if json.Unmarshal(m["messages"], &msgs) != nil || len(msgs) == 0 {
			t.Fatalf("no messages in %s", req.Body)
		}
		for _, msg := range msgs {
			var fields struct {
				Role *string `json:"role"`
			}
			if json.Unmarshal(msg, &fields) != nil || fields.Role == nil {
				t.Fatalf("message %s has no string role", msg)
			}
		}
		if force && (!req.Stream || string(m["stream"]) != "true") {
			t.Fatalf("stream not forced: %s", req.Body)
		}
		if req.Stream {
			var so struct {
				IncludeUsage bool `json:"include_usage"`
			}
			if json.Unmarshal(m["stream_options"], &so) != nil || !so.IncludeUsage {
				t.Fatalf("usage not asked for: %s", req.Body)
			}
		}
	})
}
