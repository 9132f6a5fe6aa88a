// Package xvfbtest starts a private Xvfb for tests that need a real X
// display.
package xvfbtest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Skip skips t for reason, or fails it when the environment variable CI is
// "true": there the tools must be installed.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s", reason)
	}
	t.Skip(reason)
}

// Need skips (or fails, see Skip) t when a program is not installed.
func Need(t testing.TB, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			Skip(t, fmt.Sprintf("%s is not installed (apt-get install xvfb x11-xserver-utils)", p))
		}
	}
}

// Start starts Xvfb on a display number it picks itself (-displayfd), with
// one screen of the given geometry ("1280x720x24"), and returns the display
// name (":N"). The server is killed when t ends. -noreset keeps it alive
// when its last client, the capture, disconnects.
func Start(t testing.TB, geometry string) string {
	t.Helper()
	Need(t, "Xvfb")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command("Xvfb", "-displayfd", "3", "-screen", "0", geometry, "-noreset", "-nolisten", "tcp")
	cmd.ExtraFiles = []*os.File{w}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		w.Close()
		t.Fatalf("starting Xvfb: %v", err)
	}
	w.Close()
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	t.Cleanup(stop)

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case n := <-line:
		if n == "" {
			stop() // before reading stderr, which cmd writes until then
			t.Fatalf("Xvfb did not start: %s", stderr.String())
		}
		return ":" + n
	case <-time.After(10 * time.Second):
		stop()
		t.Fatalf("Xvfb did not report its display within 10s: %s", stderr.String())
	}
	return ""
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
