package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// TestPassThroughBudget spends a token budget of 40 a minute through the
// pass-through paths, against the simulator (whose usage counts words and
// chunks): embeddings and legacy completions, streamed and whole, are
// charged what they report; a stream without usage is counted event by
// event and cut once it spends the budget; the next request is refused
// with 429 in OpenAI's shape. Each answer's X-Ratelimit-Remaining-Tokens is
// the budget less what earlier requests used and what it reserved.
func TestPassThroughBudget(t *testing.T) {
	sim := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	c := startCaddy(t, fmt.Sprintf(`http://%s {
	llm_simulator {
		chunks 8
	}
}

http://127.0.0.1:{PORT} {
	llm_proxy /v1/* {
		to http://%s/v1
		rate_limit 100-M {
			tokens 40-M
		}
	}
}
`, sim, sim))

	steps := []struct {
		name, path, body string
		remaining        int // after this request's reservation
		used             int // what it is charged
	}{
		// 18 characters reserve 5 tokens and 1; the simulator reports 4 words.
		{"embeddings", "embeddings", `{"model":"text-embedding-3-small","input":"one two three four"}`, 40 - 6, 4},
		{"embeddings again", "embeddings", `{"model":"text-embedding-3-small","input":"one two three four"}`, 40 - 4 - 6, 4},
		// 1 token of prompt and 8 of max_tokens; reported: 1 and 8 chunks.
		{"completions, streamed with usage", "completions",
			`{"model":"m","prompt":"hi","max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}`, 40 - 8 - 9, 9},
		{"completions, whole", "completions", `{"model":"m","prompt":"hi","max_tokens":8}`, 40 - 17 - 9, 9},
	}
	for _, s := range steps {
		resp := post(t, c.URL+"/v1/"+s.path, s.body)
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), `"usage":{`) {
			t.Fatalf("%s: %d %v %.300q", s.name, resp.StatusCode, err, body)
		}
		if got := resp.Header.Get("X-Ratelimit-Remaining-Tokens"); got != fmt.Sprint(s.remaining) {
			t.Errorf("%s: remaining %s, want %d", s.name, got, s.remaining)
		}
	}

	// 26 used: a long stream without usage may use 14 more. It is cut
	// after the event that passed them, with an error event and no [DONE].
	resp := post(t, c.URL+"/v1/completions", `{"model":"sim-long-200","prompt":"hi","max_tokens":200,"stream":true}`)
	body, _ := io.ReadAll(resp.Body)
	events := strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n")
	last := events[len(events)-1]
	if resp.StatusCode != 200 || strings.Contains(string(body), "[DONE]") || len(events) < 10 || len(events) > 20 ||
		!strings.HasPrefix(last, `data: {"error":{"message":"token budget exceeded: 40 tokens per minute; retry in `) {
		t.Fatalf("cut stream: %d, %d events, the last %.300q", resp.StatusCode, len(events), last)
	}

	// Spent: refused before the upstream is asked.
	for _, path := range []string{"embeddings", "completions"} {
		resp := post(t, c.URL+"/v1/"+path, `{"model":"m","input":"x","prompt":"x"}`)
		body, _ := io.ReadAll(resp.Body)
		var e struct {
			Error struct{ Message, Type string }
		}
		if resp.StatusCode != http.StatusTooManyRequests || json.Unmarshal(body, &e) != nil || e.Error.Type != "rate_limit_exceeded" ||
			!strings.HasPrefix(e.Error.Message, "token budget exceeded: 40 tokens per minute") || resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s after the budget was spent: %d %v %s", path, resp.StatusCode, resp.Header, body)
		}
	}
}
