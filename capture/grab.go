// Package capture grabs a screen, scales it and encodes it to JPEG once per
// tick, shares the frames among any number of viewers through a Hub, and
// writes them as a multipart/x-mixed-replace (MJPEG) body. It imports no
// Caddy package; caddymodule wires it into Caddy.
package capture

import (
	"errors"
	"fmt"
	"image"
	"sync"

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

// Screen grabs one display. On X11 it keeps one connection and one
// shared-memory segment from grab to grab, until Close; elsewhere, and on a
// Wayland session or an X server with an unusual pixel format, it goes
// through github.com/kbinani/screenshot, which sets both up anew for every
// capture. It is safe for concurrent use.
type Screen struct {
	index int
	mu    sync.Mutex
	x     xScreen
}

// NewScreen returns a Screen grabbing display index, 0 for the primary one.
// It connects to nothing until the first Grab.
func NewScreen(index int) *Screen {
	return &Screen{index: index}
}

// Grab captures the display. Errors say why it cannot: no display, an X
// server that refuses the connection, an index beyond the displays.
func (s *Screen) Grab() (*image.RGBA, error) {
	if err := preflight(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if img, handled, err := s.x.grab(s.index); handled {
		return img, err
	}
	// screenshot reports failures to reach the display as an empty rectangle.
	b := screenshot.GetDisplayBounds(s.index)
	if b.Empty() {
		return nil, s.whyNoBounds()
	}
	img, err := screenshot.CaptureRect(b)
	if err != nil {
		return nil, fmt.Errorf("capturing display %d: %w", s.index, err)
	}
	return img, nil
}

// Close releases the connection to the display, if any. The next Grab
// connects again.
func (s *Screen) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.x.close()
	return nil
}

func (s *Screen) whyNoBounds() error {
	n, err := Displays()
	if err != nil {
		return err
	}
	if s.index >= n {
		return fmt.Errorf("display %d does not exist: there are %d", s.index, n)
	}
	return fmt.Errorf("display %d has no size", s.index)
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
