//go:build linux || freebsd || openbsd || netbsd

package caddymodule

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/capture/mjpegtest"
	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// caddyBinary builds cmd/caddy once per test run, always to the same
// place, so that runs do not pile up binaries.
var caddyBinary = sync.OnceValues(func() (string, error) {
	dir := filepath.Join(os.TempDir(), "caddy-llmstream-test")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/caddy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v: %s", err, out)
	}
	return bin, nil
})

// syncBuffer collects a process's output while tests read it.
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

// caddyProcess is a running caddy binary.
type caddyProcess struct {
	base   string // its URL
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *syncBuffer
}

// runCaddy runs the built binary on a Caddyfile serving /health and
// /desktop on a free port, with the given DISPLAY ("" unsets it).
func runCaddy(t *testing.T, display string) *caddyProcess {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the caddy binary")
	}
	bin, err := caddyBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := testenv.FreePort(t)
	cfg := filepath.Join(dir, "Caddyfile")
	err = os.WriteFile(cfg, fmt.Appendf(nil, `{
	admin off
	persist_config off
	auto_https off
}

http://127.0.0.1:%d {
	respond /health "ok"
	desktop_stream /desktop {
		fps 20
	}
}
`, port), 0o644)
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "run", "--config", cfg, "--adapter", "caddyfile")
	env := []string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "PATH=" + os.Getenv("PATH")}
	if display != "" {
		env = append(env, "DISPLAY="+display)
	}
	cmd.Env = env
	logs := new(syncBuffer)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("caddy output:\n%s", logs)
		}
	})

	p := &caddyProcess{fmt.Sprintf("http://127.0.0.1:%d", port), cmd, exited, logs}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(p.base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy did not start: %v\n%s", err, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Caddy waits for its servers to drain before it exits, with no time limit
// by default: an endless stream must end when the shutdown begins.
func TestDesktopStreamBinaryExitsWithOpenStream(t *testing.T) {
	x := xvfbtest.Start(t, "320x240x24")
	p := runCaddy(t, x.Display)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	s := mjpegtest.Open(t, &http.Client{Transport: tr}, p.base+"/desktop")
	s.Next(t)

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- s.End() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the stream did not end with its close delimiter: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("an open stream holds Caddy's shutdown")
	}
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("caddy did not exit after SIGTERM")
	}
}

// Caddy starts and serves its other routes without a display; the stream
// answers 503 with the cause, and the failure is logged once, not per
// request, with nothing from the X library.
func TestDesktopStreamBinaryWithoutDisplay(t *testing.T) {
	for _, c := range []struct {
		name, display, want string
	}{
		{"DISPLAY unset", "", "desktop_stream: no X display: DISPLAY is unset\n"},
		{"dead display", ":4093", "desktop_stream: no X display: cannot connect to :4093: dial unix /tmp/.X11-unix/X4093: connect: no such file or directory\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := runCaddy(t, c.display)
			base, logs := p.base, p.logs
			for range 5 {
				for _, u := range []string{base + "/desktop", base + "/desktop?snapshot"} {
					resp, err := http.Get(u)
					if err != nil {
						t.Fatal(err)
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 503 || string(body) != c.want {
						t.Fatalf("GET %s: %s %q, want 503 %q", u, resp.Status, body, c.want)
					}
				}
			}
			if n := strings.Count(logs.String(), "screen capture failing"); n != 1 {
				t.Errorf("the outage was logged %d times, want once:\n%s", n, logs)
			}
			if strings.Contains(logs.String(), "XGB") {
				t.Errorf("the X library logs:\n%s", logs)
			}
		})
	}
}
