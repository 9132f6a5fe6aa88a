package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// TestClientsOpenAINode runs e2e/node/openai.test.mjs, the official OpenAI
// Node SDK against llm_proxy in front of llm_simulator, with node's own test
// runner. It needs node and the packages of e2e/node (npm ci --prefix e2e/node).
func TestClientsOpenAINode(t *testing.T) {
	nodeTest(t, "openai.test.mjs", simStack(t, "chunk_interval 5ms\n\t\tchunks 8", "heartbeat 20ms", ""))
}

// TestClientsOpenAINodeBudget runs e2e/node/budget.test.mjs: the Node SDK
// against a token budget of 30 tokens a minute, with max_tokens 8.
func TestClientsOpenAINodeBudget(t *testing.T) {
	nodeTest(t, "budget.test.mjs", simStack(t, "chunk_interval 5ms\n\t\tchunks 8",
		"max_tokens 8\n\t\trate_limit 100-M {\n\t\t\ttokens 30-M\n\t\t}", ""))
}

// nodeTest runs one test file of e2e/node with `node --test`, passing the
// proxy's base URL in LLM_BASE_URL, and env ("NAME=value") besides.
func nodeTest(t *testing.T, file string, c *caddy, env ...string) {
	t.Helper()
	node := testenv.Program(t, "node (apt-get install nodejs npm)", "node")
	if _, err := os.Stat(filepath.Join("node", "node_modules", "openai", "package.json")); err != nil {
		testenv.Need(t, "the npm packages of e2e/node (npm ci --prefix e2e/node)", errors.New("e2e/node/node_modules/openai is missing"))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", file)
	cmd.Dir = "node"
	cmd.Env = append(append(os.Environ(), "LLM_BASE_URL="+c.URL+"/v1", "NO_COLOR=1", "FORCE_COLOR=0"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test %s: %v\n%s", file, err, out)
	}
	t.Logf("node --test %s:\n%s", file, out)
}
