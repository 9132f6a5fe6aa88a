// Package e2e tests the real caddy binary, built from ./cmd/caddy, over
// loopback HTTP with real clients and scripted upstreams.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

var caddyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "llmstream-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	caddyBin = filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy")
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building caddy:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// caddy is a running caddy process.
type caddy struct {
	URL   string // http://127.0.0.1:<port>
	Admin string
	Log   *syncBuffer
	cmd   *exec.Cmd
	dir   string
	// exited is closed once the process has exited.
	exited chan struct{}
}

// caddyOption adds to what startCaddy runs caddy with.
type caddyOption func(*caddySetup)

type caddySetup struct {
	globals string
	env     []string
}

// withGlobals adds global options, such as `servers { trusted_proxies ... }`:
// a Caddyfile has one global block, and startCaddy writes it.
func withGlobals(options string) caddyOption {
	return func(s *caddySetup) { s.globals += options + "\n" }
}

// withEnv adds variables ("NAME=value") to the environment caddy inherits
// from the test. An empty value unsets a variable for the code that reads
// it with os.Getenv.
func withEnv(vars ...string) caddyOption {
	return func(s *caddySetup) { s.env = append(s.env, vars...) }
}

// startCaddy runs the binary with a Caddyfile in which {PORT} stands for a
// free port, under a global block of its own (the admin endpoint on another
// free port, debug logs) and the options'. It waits until the site answers.
func startCaddy(t *testing.T, caddyfile string, opts ...caddyOption) *caddy {
	t.Helper()
	var setup caddySetup
	for _, o := range opts {
		o(&setup)
	}
	port, admin := testenv.FreePort(t), testenv.FreePort(t)
	cf := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tdebug\n%s}\n", admin, setup.globals) +
		strings.ReplaceAll(caddyfile, "{PORT}", fmt.Sprint(port))
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cf), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &caddy{URL: fmt.Sprintf("http://127.0.0.1:%d", port), Admin: fmt.Sprintf("127.0.0.1:%d", admin),
		Log: &syncBuffer{}, dir: dir, exited: make(chan struct{})}
	c.cmd = exec.Command(caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	c.cmd.Env = append(append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir), setup.env...)
	c.cmd.Stdout, c.cmd.Stderr = c.Log, c.Log
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.exited
		if t.Failed() {
			t.Logf("caddy log:\n%s", c.Log.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 100*time.Millisecond)
		if err == nil {
			conn.Close()
			return c
		}
		select {
		case <-c.exited:
			t.Fatalf("caddy exited before it served: %v\n%s", c.cmd.ProcessState, c.Log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy did not start: %v\n%s", err, c.Log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get sends a request with a deadline that keeps a broken test from hanging.
func do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(req.Context(), 20*time.Second)
	t.Cleanup(cancel)
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func get(t *testing.T, url string, header ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func post(t *testing.T, url, body string, header ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

// decoder decodes a response body incrementally, as a browser would.
func decoder(enc string, r io.Reader) (io.Reader, error) {
	switch enc {
	case "gzip":
		return gzip.NewReader(r)
	case "zstd":
		return zstd.NewReader(r)
	}
	return r, nil
}
