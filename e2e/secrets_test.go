package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
	"time"
)

// The server's key and a gateway token in the base URL's query never reach
// a client or the log, whatever field of whatever answer the upstream
// quotes them in.
func TestSecretsNeverReachClients(t *testing.T) {
	const key, token = "sk-e2e-secret-key-0123", "gw-token-e2e-4567"
	quote := "Bearer " + key + " (POST /v1/chat/completions?key=" + token + ")"
	q, _ := json.Marshal(quote)
	errBody := fmt.Sprintf(`{"error":{"message":%s,"type":%s,"param":%s,"code":%s}}`, q, q, q, q)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Model string }
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &req)
		switch req.Model {
		case "status-400":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			io.WriteString(w, errBody)
		case "status-429":
			w.Header().Set("Retry-After", quote)
			w.WriteHeader(429)
			io.WriteString(w, errBody)
		case "event":
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: "+chunkJSON("hi")+"\n\nevent: error\ndata: "+errBody+"\n\n")
		case "whole":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, errBody) // a 200 that is an error
		}
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s/v1?key=%s
		api_key %s
	}
}`, up.URL, token, key))

	for _, model := range []string{"status-400", "status-429", "event", "whole"} {
		for _, format := range []string{"openai", "sse", "ndjson"} {
			stream := model != "whole"
			resp := post(t, c.URL+"/v1/chat/completions?format="+format,
				fmt.Sprintf(`{"model":%q,"stream":%v,"messages":[{"role":"user","content":"hi"}]}`, model, stream))
			dump, _ := httputil.DumpResponse(resp, true) // a broken body still shows what came
			if strings.Contains(string(dump), key) || strings.Contains(string(dump), token) {
				t.Errorf("%s in %s: a secret reaches the client:\n%s", model, format, dump)
			}
			if model == "whole" && resp.StatusCode != http.StatusBadGateway {
				t.Errorf("a 200 JSON error not streamed is relayed with status %d, want 502", resp.StatusCode)
			}
		}
	}
	// The config itself is logged at debug level by Caddy (a real one
	// names the key by placeholder); no line about a request may hold one.
	for _, line := range strings.Split(c.Log.String(), "\n") {
		if strings.Contains(line, `"adjusted config"`) {
			continue
		}
		if strings.Contains(line, key) || strings.Contains(line, token) {
			t.Errorf("a secret is in Caddy's log: %s", line)
		}
	}
}

// A non-streamed answer that takes longer than first_chunk to arrive is
// relayed whole: once its first bytes came, only the idle limit applies.
func TestSlowWholeAnswerIsRelayed(t *testing.T) {
	const answer = `{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"slow but whole"},"finish_reason":"stop"}]}`
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for i := 0; i < len(answer); i += 16 {
			io.WriteString(w, answer[i:min(i+16, len(answer))])
			w.(http.Flusher).Flush()
			time.Sleep(60 * time.Millisecond) // about 600 ms in all
		}
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		timeouts {
			first_chunk 200ms
			idle 2s
		}
	}
}`, up.URL))
	resp := post(t, c.URL+"/v1/chat/completions", `{"stream":false,"messages":[{"role":"user","content":"hi"}]}`)
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != answer {
		t.Fatalf("status %d, %v, body %q: want the whole answer", resp.StatusCode, err, body)
	}
}
