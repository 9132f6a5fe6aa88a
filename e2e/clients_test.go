package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// The tests in clients_*_test.go and browser_chat_test.go drive the proxy
// with real clients: the official OpenAI SDKs for Go and Node, and Chromium
// running the chat page. They run against llm_proxy in front of the
// built-in llm_simulator, both in one caddy process.

// simStack starts caddy with llm_simulator on a port of its own and, on
// {PORT}, llm_proxy in front of it at /v1/chat/completions (the openai
// framing, for the SDKs) and /chat (sse by default, for the page), plus the
// chat page itself (llm_web), under `encode zstd gzip` as in
// Caddyfile.example. simOpts go into the llm_simulator block and
// proxyOpts into both llm_proxy blocks. The proxy's /chat may instead point
// at chatUpstream when it is not empty.
func simStack(t *testing.T, simOpts, proxyOpts, chatUpstream string) *caddy {
	t.Helper()
	sim := fmt.Sprintf("http://127.0.0.1:%d/v1", testenv.FreePort(t))
	if chatUpstream == "" {
		chatUpstream = sim
	}
	return startCaddy(t, fmt.Sprintf(`%s {
	llm_simulator {
		%s
	}
}

http://127.0.0.1:{PORT} {
	encode zstd gzip
	llm_proxy /v1/chat/completions {
		to %s
		api_key {env.TEST_LLM_KEY}
		%s
	}
	llm_proxy /chat {
		to %s
		format sse
		%s
	}
	llm_web
}
`, strings.TrimSuffix(sim, "/v1"), simOpts, sim, proxyOpts, chatUpstream, proxyOpts), withEnv("TEST_LLM_KEY="+testKey))
}
