package guard

import (
	"net"
	"strings"
	"testing"
)

func TestLoopbackHost(t *testing.T) {
	allowed := []string{"desktop.internal", "Screen.Example."}
	for _, tt := range []struct {
		host string
		want bool
	}{
		{"localhost", true},
		{"localhost:8080", true},
		{"LocalHost:8080", true},
		{"localhost.:8080", true},
		{"127.0.0.1", true},
		{"127.0.0.1:8080", true},
		{"127.1.2.3:8080", true},
		{"[::1]", true},
		{"[::1]:8080", true},
		{"[::ffff:127.0.0.1]:8080", true},
		{"desktop.internal:8080", true},
		{"DESKTOP.internal", true},
		{"screen.example:443", true},
		{"", false},
		{":8080", false},
		{"rebind.example:8080", false},
		{"rebind.example", false},
		{"localhost.rebind.example", false},
		{"127.0.0.1.nip.io:8080", false},
		{"192.0.2.7:8080", false},
		{"[::2]:8080", false},
		{"[fe80::1%25lo]:8080", false},
		{"sub.desktop.internal", false},
	} {
		if got := LoopbackHost(tt.host, allowed); got != tt.want {
			t.Errorf("LoopbackHost(%q): %v, want %v", tt.host, got, tt.want)
		}
	}
	if LoopbackHost("desktop.internal", nil) {
		t.Error("a name not allowed passed")
	}
}

// FuzzLoopbackHost: whatever a client sends as Host, a yes without allowed
// names means localhost or a loopback address, and a port never changes
// the answer.
func FuzzLoopbackHost(f *testing.F) {
	for _, h := range []string{"localhost:8080", "[::1]", "127.0.0.1", "rebind.example", "[fe80::1%25lo]:1", ""} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, host string) {
		if !LoopbackHost(host, nil) {
			return
		}
		name := hostname(host)
		if ip := net.ParseIP(name); name != "localhost" && (ip == nil || !ip.IsLoopback()) {
			t.Fatalf("LoopbackHost(%q) for %q, which is not loopback", host, name)
		}
		if !strings.Contains(host, ":") || strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			if !LoopbackHost(host+":8080", nil) {
				t.Fatalf("LoopbackHost(%q) but not with a port", host)
			}
		}
	})
}
