//go:build linux || freebsd || openbsd || netbsd

package capture

import (
	"fmt"
	"image/color"
	"io"
	"strings"
	"testing"

	"github.com/jezek/xgb"

	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

func TestScreenGrabsXvfb(t *testing.T) {
	display := xvfbtest.Start(t, "640x360x24").Display
	t.Setenv("DISPLAY", display)
	t.Setenv("XDG_SESSION_TYPE", "x11")

	xvfbtest.Paint(t, display, "#ff0000")
	img, err := Screen{}.Grab()
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
	_, err = Screen{Index: 1}.Grab()
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
			if _, err := (Screen{}).Grab(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Grab() = %v, want %q", err, c.want)
			}
			if _, err := Displays(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Displays() = %v, want %q", err, c.want)
			}
		})
	}
}
