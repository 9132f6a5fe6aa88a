package testenv

import "testing"

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
