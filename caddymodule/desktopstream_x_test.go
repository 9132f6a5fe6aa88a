//go:build linux || freebsd || openbsd || netbsd

package caddymodule

import (
	"bytes"
	"image/color"
	"image/jpeg"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/capture/mjpegtest"
	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

// xDisplay starts Xvfb and points the test's DISPLAY at it.
func xDisplay(t *testing.T, geometry string) *xvfbtest.Server {
	t.Helper()
	xvfbtest.Need(t, "Xvfb", "xsetroot")
	x := xvfbtest.Start(t, geometry)
	t.Setenv("DISPLAY", x.Display)
	t.Setenv("XDG_SESSION_TYPE", "x11")
	return x
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body
}

func TestDesktopStreamXvfb(t *testing.T) {
	noLeaks(t)
	// Small, so that grabbing stays fast under -race on a busy machine.
	x := xDisplay(t, "640x360x24")
	xvfbtest.Paint(t, x.Display, "red")

	ds := provision(t, `desktop_stream {
		fps 20
		max_width 320
		max_viewers 2
	}`)
	srv, c := serve(t, ds)

	s := mjpegtest.Open(t, c, srv.URL)
	img := s.Next(t)
	if b := img.Bounds(); b.Dx() != 320 || b.Dy() != 180 {
		t.Fatalf("640x360 with max_width 320 streamed as %v", b)
	}
	if got := centre(img); !near(got, red) {
		t.Fatalf("after xsetroot red: %v", got)
	}

	// A change of colour shows within a second.
	xvfbtest.Paint(t, x.Display, "blue")
	painted := time.Now()
	for !near(centre(s.Next(t)), blue) {
	}
	if d := time.Since(painted); d > time.Second {
		t.Errorf("the stream took %v to follow the screen", d)
	} else {
		t.Logf("followed the screen in %v", d)
	}

	resp, body := get(t, c, srv.URL+"?snapshot")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/jpeg" {
		t.Fatalf("snapshot: %s", resp.Status)
	}
	snap, err := jpeg.Decode(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if b := snap.Bounds(); b.Dx() != 320 || b.Dy() != 180 || !near(centre(snap), blue) {
		t.Fatalf("snapshot %v of colour %v", b, centre(snap))
	}

	// max_viewers 2: the second viewer is in, the third is not.
	s2 := mjpegtest.Open(t, c, srv.URL)
	s2.Next(t)
	if resp, body := get(t, c, srv.URL); resp.StatusCode != 503 || !strings.Contains(string(body), "max_viewers 2") {
		t.Fatalf("third viewer: %s %q", resp.Status, body)
	}

	// Loopback only without allow_remote.
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "203.0.113.9:5555"
	w := httptest.NewRecorder()
	if err := ds.ServeHTTP(w, r, nil); err != nil || w.Code != 403 {
		t.Fatalf("remote client: %d, %v", w.Code, err)
	}

	// With the viewers gone, the loop stops.
	s.Close()
	s2.Close()
	deadline := time.Now().Add(5 * time.Second)
	for ds.hub.Stats().Running {
		if time.Now().After(deadline) {
			t.Fatalf("the loop still runs without viewers: %+v", ds.hub.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	n := ds.hub.Stats().Captures
	time.Sleep(150 * time.Millisecond)
	if ds.hub.Stats().Captures != n {
		t.Fatal("still capturing without viewers")
	}
}

func TestDesktopStreamXvfbValidatesDisplay(t *testing.T) {
	noLeaks(t)
	xDisplay(t, "320x240x24")
	_, err := tryProvision(t, "desktop_stream {\n display 1\n}")
	if err == nil || err.Error() != "display 1 does not exist: there are 1" {
		t.Fatalf("display 1 of 1: %v", err)
	}
}

// The display goes away under a stream and comes back.
func TestDesktopStreamXvfbOutageAndRecovery(t *testing.T) {
	noLeaks(t)
	x := xDisplay(t, "320x240x24")
	xvfbtest.Paint(t, x.Display, "red")
	ds := provision(t, "desktop_stream {\n fps 20\n}")
	srv, c := serve(t, ds)

	s := mjpegtest.Open(t, c, srv.URL)
	s.Next(t)
	x.Stop()
	if err := s.End(); err != nil {
		t.Fatalf("the stream did not end cleanly when the display went: %v", err)
	}
	resp, body := get(t, c, srv.URL+"?snapshot")
	if resp.StatusCode != 503 || !strings.HasPrefix(string(body), "desktop_stream: no X display: cannot connect to "+x.Display) {
		t.Fatalf("without the display: %s %q", resp.Status, body)
	}

	x2 := xvfbtest.StartDisplay(t, x.Display, "320x240x24")
	xvfbtest.Paint(t, x2.Display, "#00ff00")
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, body := get(t, c, srv.URL+"?snapshot")
		if resp.StatusCode == 200 {
			img, err := jpeg.Decode(bytes.NewReader(body))
			if err == nil && near(centre(img), color.RGBA{0, 255, 0, 255}) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery with the display back: %s %q", resp.Status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDesktopStreamNoDisplay(t *testing.T) {
	noLeaks(t)
	for _, c := range []struct{ display, want string }{
		{"", "desktop_stream: no X display: DISPLAY is unset\n"},
		{":4093", "desktop_stream: no X display: cannot connect to :4093: dial unix /tmp/.X11-unix/X4093: connect: no such file or directory\n"},
	} {
		t.Run("DISPLAY="+c.display, func(t *testing.T) {
			t.Setenv("DISPLAY", c.display)
			t.Setenv("XDG_SESSION_TYPE", "x11")
			ds := provision(t, `desktop_stream`) // Caddy starts anyway
			srv, cl := serve(t, ds)
			for _, u := range []string{srv.URL, srv.URL + "?snapshot"} {
				if resp, body := get(t, cl, u); resp.StatusCode != 503 || string(body) != c.want {
					t.Errorf("GET %s: %s %q, want 503 %q", u, resp.Status, body, c.want)
				}
			}
		})
	}
}
