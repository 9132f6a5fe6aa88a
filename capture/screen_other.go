//go:build !(linux || freebsd || openbsd || netbsd)

package capture

// On macOS and Windows screenshot talks to the OS directly (macOS needs a
// cgo build); its own errors are precise enough.
func preflight() error { return nil }

func diagnose() error { return nil }
