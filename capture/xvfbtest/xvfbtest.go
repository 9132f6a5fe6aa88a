// Package xvfbtest starts a private Xvfb for tests that need a real X
// display.
package xvfbtest

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// Need skips t when a program is not installed, or fails it under CI=true
// (see testenv.Need).
func Need(t testing.TB, programs ...string) {
	t.Helper()
	for _, p := range programs {
		testenv.Program(t, p+" (apt-get install xvfb x11-xserver-utils)", p)
	}
}

// Server is a running Xvfb.
type Server struct {
	// Display is its display name, ":N".
	Display string

	cmd  *exec.Cmd
	once sync.Once
}

// Start starts Xvfb on a display number it picks itself (-displayfd), with
// one screen of the given geometry ("1280x720x24"). It is killed when t
// ends. -noreset keeps it alive when its last client, the capture,
// disconnects.
func Start(t testing.TB, geometry string) *Server {
	t.Helper()
	return start(t, "", geometry)
}

// StartDisplay starts Xvfb on the given display (":N"), as Start does.
func StartDisplay(t testing.TB, display, geometry string) *Server {
	t.Helper()
	return start(t, display, geometry)
}

func start(t testing.TB, display, geometry string) *Server {
	t.Helper()
	Need(t, "Xvfb")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var args []string
	if display != "" {
		args = append(args, display)
	}
	args = append(args, "-displayfd", "3", "-screen", "0", geometry, "-noreset", "-nolisten", "tcp")
	cmd := exec.Command("Xvfb", args...)
	cmd.ExtraFiles = []*os.File{w}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		w.Close()
		t.Fatalf("starting Xvfb: %v", err)
	}
	w.Close()
	s := &Server{cmd: cmd}
	t.Cleanup(s.Stop)

	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	select {
	case n := <-line:
		if n == "" {
			s.Stop() // before reading stderr, which cmd writes until then
			t.Fatalf("Xvfb did not start: %s", stderr.String())
		}
		s.Display = ":" + n
		return s
	case <-time.After(10 * time.Second):
		s.Stop()
		t.Fatalf("Xvfb did not report its display within 10s: %s", stderr.String())
	}
	return nil
}

// Stop terminates the server and waits for it to exit, so that its display
// number can be used again. Calling it again does nothing.
func (s *Server) Stop() {
	s.once.Do(func() {
		// SIGTERM lets Xvfb remove its socket and lock file.
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			_ = s.cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-done
		}
	})
}

// Paint fills the root window of display with a colour name or #rrggbb,
// through xsetroot.
func Paint(t testing.TB, display, colour string) {
	t.Helper()
	Need(t, "xsetroot")
	out, err := exec.Command("xsetroot", "-display", display, "-solid", colour).CombinedOutput()
	if err != nil {
		t.Fatalf("xsetroot -solid %s: %v: %s", colour, err, out)
	}
}
