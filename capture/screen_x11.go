//go:build linux || freebsd || openbsd || netbsd

package capture

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"sync"

	"github.com/jezek/xgb"
)

var quietXGB sync.Once

// preflight explains a missing display before screenshot hides it behind
// an empty rectangle, and stops xgb from logging to stderr: it prints two
// lines for every connection made without an Xauthority file, and
// screenshot connects several times per frame.
func preflight() error {
	quietXGB.Do(func() { xgb.Logger = log.New(io.Discard, "", 0) })
	if os.Getenv("XDG_SESSION_TYPE") == "wayland" {
		// screenshot asks the desktop portal over D-Bus instead of X.
		return nil
	}
	if os.Getenv("DISPLAY") == "" {
		return errors.New("no X display: DISPLAY is unset")
	}
	return nil
}

// diagnose connects to the X server to learn why screenshot could not.
func diagnose() error {
	if os.Getenv("XDG_SESSION_TYPE") == "wayland" {
		return nil
	}
	c, err := xgb.NewConn()
	if err != nil {
		return fmt.Errorf("no X display: %w", err)
	}
	c.Close()
	return nil
}
