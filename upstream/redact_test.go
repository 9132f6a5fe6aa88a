package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// quoting is an upstream that quotes the key and the base URL's query token
// in every field of its answers, as the outside review's scripted upstream
// did.
const quoted = `Bearer sk-secret-key ?key=gw-token-12345`

func leaks(s string) bool {
	return strings.Contains(s, "sk-secret-key") || strings.Contains(s, "gw-token-12345")
}

func TestRedactsEveryFieldAndHeader(t *testing.T) {
	errBody := `{"error":{"message":"` + quoted + `","type":"` + quoted + `","param":"` + quoted + `","code":"` + quoted + `"}}`
	for _, tt := range []struct {
		name    string
		status  int
		header  string // Retry-After
		body    string
		stream  bool
		ctype   string
		wantErr bool
	}{
		{"400 error fields", 400, "", errBody, true, "application/json", true},
		{"429 Retry-After", 429, quoted, errBody, true, "application/json", true},
		{"in-stream error event", 200, "", "event: error\ndata: " + errBody + "\n\n", true, "text/event-stream", true},
		{"in-stream error chunk", 200, "", "data: " + errBody + "\n\n", true, "text/event-stream", true},
		{"200 JSON error, streamed", 200, "", errBody, true, "application/json", true},
		{"200 JSON error, not streamed", 200, "", errBody, false, "application/json", true},
		{"200 answer quoting it, not streamed", 200, "", `{"choices":[{"message":{"content":"` + quoted + `"}}]}`, false, "application/json", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.header != "" {
					w.Header().Set("Retry-After", tt.header)
				}
				w.Header().Set("Content-Type", tt.ctype)
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			c.BaseURL += "?key=gw-token-12345"
			body := `{"messages":[{"role":"user","content":"hi"}],"stream":` + map[bool]string{true: "true", false: "false"}[tt.stream] + `}`
			req, _ := FromJSON([]byte(body), false, "m")
			s, err := c.Open(context.Background(), req)
			if err == nil && tt.stream {
				defer s.Close()
				var ch chunk.Chunk
				err = s.Next(&ch)
			}
			var e *chunk.Error
			switch {
			case tt.wantErr && !errors.As(err, &e):
				t.Fatalf("got %v, want an upstream error", err)
			case tt.wantErr:
				if leaks(string(e.MarshalBody())) || leaks(e.RetryAfter) || leaks(e.Error()) {
					t.Errorf("a secret reaches the client: %s Retry-After %q", e.MarshalBody(), e.RetryAfter)
				}
				if tt.status == 200 && !tt.stream && e.Status != http.StatusBadGateway {
					t.Errorf("a 200 JSON error gets status %d, want 502", e.Status)
				}
			case err != nil:
				t.Fatal(err)
			default:
				defer s.Close()
				if leaks(string(s.Whole())) || !strings.Contains(string(s.Whole()), "[redacted]") {
					t.Errorf("whole answer %s", s.Whole())
				}
			}
		})
	}
}

func TestValidRetryAfter(t *testing.T) {
	for in, want := range map[string]string{
		"7": "7", " 12 ": "12", "Bearer sk-x": "", "-1": "", "1e9": "",
		"Wed, 21 Oct 2015 07:28:00 GMT": "Wed, 21 Oct 2015 07:28:00 GMT",
	} {
		if got := validRetryAfter(in); got != want {
			t.Errorf("validRetryAfter(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedactorAllocatesNothingWithoutSecrets(t *testing.T) {
	r := newRedactor("sk-secret-key", "https://gw.example/v1?key=gw-token-12345&v=1")
	data := []byte(`{"choices":[{"index":0,"delta":{"content":"hello"}}]}`)
	if n := testing.AllocsPerRun(100, func() { r.bytes(data) }); n != 0 {
		t.Errorf("%v allocations per clean event", n)
	}
	if got := string(r.bytes([]byte("a gw-token-12345 b sk-secret-key v=1"))); got != "a [redacted] b [redacted] v=1" {
		t.Errorf("redacted %q", got)
	}
}
