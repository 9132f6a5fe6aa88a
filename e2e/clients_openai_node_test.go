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
	node := testenv.Program(t, "node (apt-get install nodejs npm)", "node")
	if _, err := os.Stat(filepath.Join("node", "node_modules", "openai", "package.json")); err != nil {
		testenv.Need(t, "the npm packages of e2e/node (npm ci --prefix e2e/node)", errors.New("e2e/node/node_modules/openai is missing"))
	}

	c := simStack(t, "chunk_interval 5ms\n\t\tchunks 8", "heartbeat 20ms", "")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", "openai.test.mjs")
	cmd.Dir = "node"
	cmd.Env = append(os.Environ(), "LLM_BASE_URL="+c.URL+"/v1", "NO_COLOR=1", "FORCE_COLOR=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	t.Logf("node --test:\n%s", out)
}
