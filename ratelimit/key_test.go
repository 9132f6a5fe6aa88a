package ratelimit

import "testing"

func TestClientKey(t *testing.T) {
	for _, tc := range []struct {
		ip           string
		v4, v6       int
		want         string
		sameAs, diff string // optional: another input that must (not) share the key
	}{
		{ip: "203.0.113.7", want: "203.0.113.7", diff: "203.0.113.8"},
		{ip: "203.0.113.7", v4: 32, want: "203.0.113.7"},
		{ip: "203.0.113.7", v4: 24, want: "203.0.113.0/24", sameAs: "203.0.113.200", diff: "203.0.114.7"},
		{ip: "203.0.113.7", v4: 1, want: "128.0.0.0/1"},
		{ip: "203.0.113.7", v4: 99, want: "203.0.113.7"},
		{ip: "2001:db8::1", want: "2001:db8::/64", sameAs: "2001:db8::ffff", diff: "2001:db8:0:1::1"},
		{ip: "2001:db8:1:2:3:4:5:6", want: "2001:db8:1:2::/64"},
		{ip: "2001:db8:1:2:3:4:5:6", v6: 48, want: "2001:db8:1::/48", sameAs: "2001:db8:1:ffff::1", diff: "2001:db8:2::1"},
		{ip: "2001:db8::1", v6: 128, want: "2001:db8::1", diff: "2001:db8::2"},
		{ip: "2001:DB8::1", want: "2001:db8::/64"},
		// IPv4-mapped: the IPv4 rules, not a /64 of ::ffff:0:0/96.
		{ip: "::ffff:203.0.113.7", want: "203.0.113.7", sameAs: "203.0.113.7", diff: "::ffff:203.0.113.8"},
		{ip: "::ffff:203.0.113.7", v4: 24, want: "203.0.113.0/24"},
		// Zones name our interface, not the client.
		{ip: "fe80::1%eth0", want: "fe80::/64", sameAs: "fe80::2%eth1"},
		{ip: "fe80::1%eth0", v6: 128, want: "fe80::1"},
		// Address with a port.
		{ip: "203.0.113.7:4711", want: "203.0.113.7", sameAs: "203.0.113.7:4712"},
		{ip: "[2001:db8::1]:443", want: "2001:db8::/64"},
		// Not an address: used as is.
		{ip: "sk-live-abc123", want: "sk-live-abc123"},
		{ip: "", want: ""},
		{ip: "203.0.113", want: "203.0.113"},
		{ip: "user:42", want: "user:42"},
		{ip: " 203.0.113.7", want: " 203.0.113.7"},
	} {
		got := ClientKey(tc.ip, tc.v4, tc.v6)
		if got != tc.want {
			t.Errorf("ClientKey(%q, %d, %d) = %q, want %q", tc.ip, tc.v4, tc.v6, got, tc.want)
		}
		if tc.sameAs != "" {
			if o := ClientKey(tc.sameAs, tc.v4, tc.v6); o != got {
				t.Errorf("%q -> %q and %q -> %q, want one key", tc.ip, got, tc.sameAs, o)
			}
		}
		if tc.diff != "" {
			if o := ClientKey(tc.diff, tc.v4, tc.v6); o == got {
				t.Errorf("%q and %q both -> %q, want distinct keys", tc.ip, tc.diff, got)
			}
		}
	}
}
