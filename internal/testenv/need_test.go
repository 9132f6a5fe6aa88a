package testenv

import (
	"errors"
	"fmt"
	"testing"
)

func TestOrList(t *testing.T) {
	for _, c := range []struct {
		names []string
		want  string
	}{
		{[]string{"node"}, "node"},
		{[]string{"chromium", "google-chrome"}, "chromium or google-chrome"},
		{[]string{"chromium", "chromium-browser", "google-chrome"}, "chromium, chromium-browser or google-chrome"},
	} {
		if got := orList(c.names); got != c.want {
			t.Errorf("orList(%q) = %q, want %q", c.names, got, c.want)
		}
	}
}

// recorder stands in for a test, to see what Need does to it.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Fatalf(f string, a ...any) { r.fatal = fmt.Sprintf(f, a...) }
func (r *recorder) Skipf(f string, a ...any)  { r.skip = fmt.Sprintf(f, a...) }

func TestNeed(t *testing.T) {
	missing := errors.New("not on PATH")
	for _, c := range []struct {
		ci          string
		err         error
		fatal, skip bool
	}{
		{"", nil, false, false},
		{"true", nil, false, false},
		{"", missing, false, true},
		{"false", missing, false, true},
		{"true", missing, true, false},
	} {
		t.Setenv("CI", c.ci)
		r := &recorder{}
		Need(r, "a tool", c.err)
		if (r.fatal != "") != c.fatal || (r.skip != "" && r.fatal == "") != c.skip {
			t.Errorf("CI=%q, err %v: fatal %q, skip %q", c.ci, c.err, r.fatal, r.skip)
		}
	}
}
