// Package capture grabs a screen, scales it and encodes it to JPEG once per
// tick, shares the frames among any number of viewers through a Hub, and
// writes them as a multipart/x-mixed-replace (MJPEG) body. It imports no
// Caddy package; caddymodule wires it into Caddy.
package capture

import (
	"errors"
	"fmt"
	"image"

	"github.com/kbinani/screenshot"
)

// Grabber captures the whole of one display. Tests fake it.
type Grabber interface {
	Grab() (*image.RGBA, error)
}

// GrabberFunc adapts a function to a Grabber.
type GrabberFunc func() (*image.RGBA, error)

// Grab calls f.
func (f GrabberFunc) Grab() (*image.RGBA, error) { return f() }

// Screen grabs one display through github.com/kbinani/screenshot. On X11
// that library opens a new X connection and a new shared-memory segment for
// every capture, so a Screen holds no state and needs no closing.
type Screen struct {
	// Index is the display number, 0 for the primary display.
	Index int
}

// Grab captures the display. Errors say why it cannot: no display, an X
// server that refuses the connection, an index beyond the displays.
func (s Screen) Grab() (*image.RGBA, error) {
	if err := preflight(); err != nil {
		return nil, err
	}
	// screenshot reports failures to reach the display as an empty rectangle.
	b := screenshot.GetDisplayBounds(s.Index)
	if b.Empty() {
		return nil, s.whyNoBounds()
	}
	img, err := screenshot.CaptureRect(b)
	if err != nil {
		return nil, fmt.Errorf("capturing display %d: %w", s.Index, err)
	}
	return img, nil
}

func (s Screen) whyNoBounds() error {
	n, err := Displays()
	if err != nil {
		return err
	}
	if s.Index >= n {
		return fmt.Errorf("display %d does not exist: there are %d", s.Index, n)
	}
	return fmt.Errorf("display %d has no size", s.Index)
}

// Displays returns how many displays there are, or an error saying why that
// cannot be told (no display reachable, platform not supported).
func Displays() (int, error) {
	if err := preflight(); err != nil {
		return 0, err
	}
	if err := diagnose(); err != nil {
		return 0, err
	}
	n := screenshot.NumActiveDisplays()
	if n > 0 {
		return n, nil
	}
	if _, err := screenshot.Capture(0, 0, 1, 1); errors.Is(err, screenshot.ErrUnsupported) {
		return 0, errors.New("screen capture is not supported by this build (macOS needs cgo)")
	}
	return 0, errors.New("no active display")
}
