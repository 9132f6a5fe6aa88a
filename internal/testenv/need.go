// Package testenv says, once for every test, what happens when the machine
// lacks something a test needs, and hands out loopback ports.
//
// A test that needs a system tool (redis-server, Xvfb, Chromium, node)
// skips with the reason on a developer's machine but fails under CI=true:
// there the tools must be installed, and a skip would hide that they are
// not.
package testenv

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Need skips t, or fails it under CI=true, when err is not nil: err says
// why what, a tool the test needs, cannot be had.
func Need(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and this test needs %s: %v", what, err)
	}
	t.Skipf("skipping: this test needs %s: %v", what, err)
}

// Program returns the path of the first of names found on PATH. When none
// is there, it calls Need with what, which should say how to install it.
func Program(t testing.TB, what string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	Need(t, what, errors.New("no "+orList(names)+" on PATH"))
	return ""
}

// orList writes names as "a, b or c".
func orList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}
