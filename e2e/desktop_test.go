//go:build linux || freebsd || openbsd || netbsd

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/capture/mjpegtest"
	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

// desktopCaddy runs caddy with desktop_stream at /desktop, at fps frames a
// second, beside another route, /health. Its screen capture uses display
// ("" for none), whatever the test's own session is.
func desktopCaddy(t *testing.T, fps int, display string) *caddy {
	t.Helper()
	return startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	respond /health "ok"
	desktop_stream /desktop {
		fps %d
	}
}`, fps), withEnv("DISPLAY="+display, "XDG_SESSION_TYPE="))
}

// Caddy waits for its servers to drain before it exits, with no time limit
// by default: an endless stream must end when the shutdown begins.
func TestDesktopStreamExitsWithOpenStream(t *testing.T) {
	x := xvfbtest.Start(t, "320x240x24")
	c := desktopCaddy(t, 20, x.Display)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	s := mjpegtest.Open(t, &http.Client{Transport: tr}, c.URL+"/desktop")
	s.Next(t)

	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { ended <- s.End() }()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("the stream did not end with its close delimiter: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("an open stream holds Caddy's shutdown")
	}
	select {
	case <-c.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("caddy did not exit after SIGTERM")
	}
}

// Caddy starts and serves its other routes without a display; the stream
// answers 503 with the cause, and the failure is logged once, not per
// request, with nothing from the X library.
func TestDesktopStreamWithoutDisplay(t *testing.T) {
	for _, tc := range []struct {
		name, display, want string
	}{
		{"DISPLAY unset", "", "desktop_stream: no X display: DISPLAY is unset\n"},
		{"dead display", ":4093", "desktop_stream: no X display: cannot connect to :4093: dial unix /tmp/.X11-unix/X4093: connect: no such file or directory\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := desktopCaddy(t, 20, tc.display)
			if resp := get(t, c.URL+"/health"); resp.StatusCode != 200 {
				t.Fatalf("GET /health: %s", resp.Status)
			}
			for range 5 {
				for _, u := range []string{c.URL + "/desktop", c.URL + "/desktop?snapshot"} {
					resp, err := http.Get(u)
					if err != nil {
						t.Fatal(err)
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 503 || string(body) != tc.want {
						t.Fatalf("GET %s: %s %q, want 503 %q", u, resp.Status, body, tc.want)
					}
				}
			}
			if n := strings.Count(c.Log.String(), "screen capture failing"); n != 1 {
				t.Errorf("the outage was logged %d times, want once:\n%s", n, c.Log)
			}
			if strings.Contains(c.Log.String(), "XGB") {
				t.Errorf("the X library logs:\n%s", c.Log)
			}
		})
	}
}
