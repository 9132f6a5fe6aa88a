package guard

import (
	"net/netip"
	"strings"
	"testing"
)

// trustedRanges trusts loopback and 10.0.0.0/8, as a front proxy on the
// machine and a load balancer on the LAN would be.
func trustedRanges(a netip.Addr) bool {
	return a.IsLoopback() || netip.MustParsePrefix("10.0.0.0/8").Contains(a)
}

func TestClientAddr(t *testing.T) {
	for _, tt := range []struct {
		name, peer string
		xff        []string
		want       string // "" for the zero Addr
	}{
		{"direct client", "203.0.113.7", nil, "203.0.113.7"},
		{"direct client forging a header", "203.0.113.7", []string{"127.0.0.1"}, "203.0.113.7"},
		{"local client", "127.0.0.1", nil, "127.0.0.1"},
		{"proxy, one hop", "127.0.0.1", []string{"203.0.113.7"}, "203.0.113.7"},
		{"client forging loopback through a proxy", "127.0.0.1", []string{"127.0.0.1, 203.0.113.7"}, "203.0.113.7"},
		{"forged address in its own field", "127.0.0.1", []string{"127.0.0.1", "203.0.113.7"}, "203.0.113.7"},
		{"rotating the left-most address", "127.0.0.1", []string{"198.51.100.99, 203.0.113.7"}, "203.0.113.7"},
		{"two trusted proxies", "127.0.0.1", []string{"127.0.0.1, 203.0.113.7, 10.0.0.2"}, "203.0.113.7"},
		{"all trusted: the left-most", "127.0.0.1", []string{"10.0.0.9, 10.0.0.2"}, "10.0.0.9"},
		{"trusted proxy, no header", "10.0.0.2", nil, "10.0.0.2"},
		{"trusted proxy, empty header", "10.0.0.2", []string{""}, "10.0.0.2"},
		{"empty entries are skipped", "127.0.0.1", []string{"203.0.113.7, ,"}, "203.0.113.7"},
		{"ports kept by a proxy", "127.0.0.1", []string{"203.0.113.7:5555, [2001:db8::1]:443"}, "2001:db8::1"},
		{"bracketed IPv6", "127.0.0.1", []string{"[2001:db8::1]"}, "2001:db8::1"},
		{"zone dropped", "127.0.0.1", []string{"fe80::1%eth0"}, "fe80::1"},
		{"IPv4-mapped", "::ffff:127.0.0.1", []string{"::ffff:203.0.113.7"}, "203.0.113.7"},
		{"IPv4-mapped peer, untrusted", "::ffff:203.0.113.7", nil, "203.0.113.7"},
		{"garbage from a trusted proxy", "127.0.0.1", []string{"127.0.0.1, unknown"}, ""},
		{"garbage left of the client is never read", "127.0.0.1", []string{"garbage, 203.0.113.7"}, "203.0.113.7"},
		{"garbage left of a trusted hop", "127.0.0.1", []string{"127.0.0.1, garbage, 10.0.0.2"}, ""},
	} {
		got := ClientAddr(netip.MustParseAddr(tt.peer), tt.xff, trustedRanges)
		want := netip.Addr{}
		if tt.want != "" {
			want = netip.MustParseAddr(tt.want)
		}
		if got != want {
			t.Errorf("%s: %v, want %v", tt.name, got, want)
		}
	}
}

// clientAddrReference is ClientAddr written the plain way, to test the
// allocation-free walk against.
func clientAddrReference(peer netip.Addr, xff []string, trusted func(netip.Addr) bool) netip.Addr {
	peer = peer.Unmap().WithZone("")
	if !trusted(peer) {
		return peer
	}
	entries := strings.Split(strings.Join(xff, ","), ",")
	client := peer
	for i := len(entries) - 1; i >= 0; i-- {
		e := strings.TrimSpace(entries[i])
		if e == "" {
			continue
		}
		a, ok := parseHop(e)
		if !ok {
			return netip.Addr{}
		}
		if !trusted(a) {
			return a
		}
		client = a
	}
	return client
}

func FuzzClientAddr(f *testing.F) {
	f.Add("127.0.0.1", "127.0.0.1, 203.0.113.7", "10.0.0.2")
	f.Add("10.0.0.1", "[2001:db8::1]:80,fe80::1%eth0", "")
	f.Add("203.0.113.7", "unknown", ", ,")
	f.Fuzz(func(t *testing.T, peer, a, b string) {
		p, err := netip.ParseAddr(peer)
		if err != nil {
			return
		}
		xff := []string{a, b}
		got := ClientAddr(p, xff, trustedRanges)
		if want := clientAddrReference(p, xff, trustedRanges); got != want {
			t.Fatalf("ClientAddr(%v, %q) = %v, reference %v", p, xff, got, want)
		}
		// The answer is the peer, unknown, or an address the header holds.
		if got.IsValid() && got != p.Unmap().WithZone("") && !holds(a+","+b, got) {
			t.Fatalf("ClientAddr(%v, %q) = %v, which is neither the peer nor in the header", p, xff, got)
		}
		// A client that is not a proxy is never believed.
		if !trustedRanges(p.Unmap()) && got != p.Unmap().WithZone("") {
			t.Fatalf("untrusted peer %v answered as %v", p, got)
		}
	})
}

func holds(list string, a netip.Addr) bool {
	for _, e := range strings.Split(list, ",") {
		if h, ok := parseHop(strings.TrimSpace(e)); ok && h == a {
			return true
		}
	}
	return false
}
