//go:build linux || freebsd || openbsd || netbsd

package capture

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/jezek/xgb"
	"github.com/kbinani/screenshot"

	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

func TestScreenGrabsXvfb(t *testing.T) {
	display := xvfbtest.Start(t, "640x360x24").Display
	t.Setenv("DISPLAY", display)
	t.Setenv("XDG_SESSION_TYPE", "x11")

	xvfbtest.Paint(t, display, "#ff0000")
	s := NewScreen(0)
	defer s.Close()
	img, err := s.Grab()
	if err != nil {
		t.Fatal(err)
	}
	if img.Rect.Dx() != 640 || img.Rect.Dy() != 360 {
		t.Fatalf("grabbed %v, want 640x360", img.Rect)
	}
	if c := img.RGBAAt(320, 180); !near(c, color.RGBA{255, 0, 0, 255}, 0) {
		t.Fatalf("after xsetroot red: %v", c)
	}
	if xgb.Logger.Writer() != io.Discard {
		t.Error("xgb still logs to stderr")
	}

	n, err := Displays()
	if err != nil || n != 1 {
		t.Fatalf("Displays() = %d, %v; want 1", n, err)
	}
	s1 := NewScreen(1)
	defer s1.Close()
	_, err = s1.Grab()
	if err == nil || !strings.Contains(err.Error(), "display 1 does not exist") {
		t.Fatalf("grabbing display 1 of 1: %v", err)
	}
}

func TestScreenErrorsWithoutDisplay(t *testing.T) {
	t.Setenv("XDG_SESSION_TYPE", "x11")
	for _, c := range []struct{ display, want string }{
		{"", "no X display: DISPLAY is unset"},
		// No server listens on this display number.
		{":4093", "no X display: cannot connect to :4093: dial unix /tmp/.X11-unix/X4093"},
	} {
		t.Run(fmt.Sprintf("DISPLAY=%q", c.display), func(t *testing.T) {
			t.Setenv("DISPLAY", c.display)
			if _, err := NewScreen(0).Grab(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Grab() = %v, want %q", err, c.want)
			}
			if _, err := Displays(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Displays() = %v, want %q", err, c.want)
			}
		})
	}
}

// The persistent connection's pixels are screenshot's, through shared
// memory or through the socket, and it survives the server's restart.
func TestScreenMatchesScreenshot(t *testing.T) {
	x := xvfbtest.Start(t, "301x173x24") // odd sizes catch stride mistakes
	t.Setenv("DISPLAY", x.Display)
	t.Setenv("XDG_SESSION_TYPE", "x11")
	// A plaid of two colours tells red from blue and rows from columns.
	out, err := exec.Command("xsetroot", "-display", x.Display, "-mod", "3", "5", "-fg", "#ff8000", "-bg", "#0040c0").CombinedOutput()
	if err != nil {
		xvfbtest.Need(t, "xsetroot")
		t.Fatalf("xsetroot: %v: %s", err, out)
	}
	want, err := screenshot.CaptureDisplay(0)
	if err != nil {
		t.Fatal(err)
	}

	s := NewScreen(0)
	defer s.Close()
	for _, viaSocket := range []bool{false, true} {
		s.x.useShm = s.x.useShm && !viaSocket
		got, err := s.Grab()
		if err != nil {
			t.Fatal(err)
		}
		if s.x.c == nil || s.x.useShm == viaSocket {
			t.Fatalf("viaSocket=%v: fast path not taken (%+v)", viaSocket, s.x)
		}
		if got.Rect != want.Rect || !bytes.Equal(got.Pix, want.Pix) {
			t.Fatalf("viaSocket=%v: pixels differ from screenshot's", viaSocket)
		}
	}

	// The path taken on Wayland and for other pixel formats.
	viaScreenshot := NewScreen(0)
	viaScreenshot.x.fallback = true
	got, err := viaScreenshot.Grab()
	if err != nil || viaScreenshot.x.c != nil || !bytes.Equal(got.Pix, want.Pix) {
		t.Fatalf("through screenshot: %v", err)
	}

	x.Stop()
	if _, err := s.Grab(); err == nil {
		t.Fatal("grabbed from a stopped server")
	}
	x2 := xvfbtest.StartDisplay(t, x.Display, "301x173x24")
	xvfbtest.Paint(t, x2.Display, "#00ff00")
	img, err := s.Grab()
	if err != nil {
		t.Fatalf("after the server came back: %v", err)
	}
	if c := img.RGBAAt(150, 86); c != (color.RGBA{0, 255, 0, 255}) {
		t.Fatalf("after the server came back: %v", c)
	}
}
