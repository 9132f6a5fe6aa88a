package guard

import (
	"net/netip"
	"strings"
)

// ClientAddr returns the address of the client a request comes from, as far
// as what the client cannot forge tells. peer is the address of the
// connection; xff holds the field values of the forwarding header
// (X-Forwarded-For), in the order received, each a comma-separated list to
// which every proxy appended the address it was connected from; trusted
// tells the addresses of the proxies the operator trusts.
//
// A peer that is not trusted is the client, whatever it sends. Otherwise the
// header is walked from the right, from the proxy nearest to us back towards
// the client: the first address that is not trusted is the client, since
// only a trusted proxy's word vouches for what lies left of it; what a
// client writes at the left, forged addresses included, is never reached
// while a proxy appended its real address after it. When every address is
// trusted, the left-most one is the client, and with no header the peer. An
// entry that is not an address ends the walk with the zero Addr: who came
// before it is unknown. Addresses are returned without zone, IPv4-mapped
// IPv6 as IPv4, and trusted sees them so.
func ClientAddr(peer netip.Addr, xff []string, trusted func(netip.Addr) bool) netip.Addr {
	peer = plain(peer)
	if !trusted(peer) {
		return peer
	}
	client := peer
	for i := len(xff) - 1; i >= 0; i-- {
		rest := xff[i]
		for rest != "" {
			var entry string
			if c := strings.LastIndexByte(rest, ','); c >= 0 {
				rest, entry = rest[:c], rest[c+1:]
			} else {
				rest, entry = "", rest
			}
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			a, ok := parseHop(entry)
			if !ok {
				return netip.Addr{}
			}
			if !trusted(a) {
				return a
			}
			client = a
		}
	}
	return client
}

// parseHop reads one X-Forwarded-For entry: an address, bracketed or not
// when IPv6, with or without a port (some proxies keep it) or zone.
func parseHop(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return plain(a), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return plain(ap.Addr()), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return plain(a), true
		}
	}
	return netip.Addr{}, false
}

func plain(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }
