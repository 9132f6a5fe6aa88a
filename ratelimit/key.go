package ratelimit

import "net/netip"

// ClientKey turns a client address into the key a limit counts against,
// grouping addresses that belong to one client: an IPv4 address is masked to
// v4bits, an IPv6 address to v6bits, so by default every address of a /64 is
// one client ("2001:db8:1:2::/64") and cannot dodge its limit by rotating
// through them. An IPv4-mapped IPv6 address counts as the IPv4 address it
// carries, so dual-stack listeners do not give it a second budget; a zone is
// dropped, it names our interface rather than the client; an address with a
// port ("203.0.113.7:4711") is keyed on the address, so a glue handing over
// the remote address by mistake does not make every connection a new client.
//
// Bits of 0 mean the defaults (32 and 64); bits beyond the address length
// mean the whole address. A full-length mask gives the bare address
// ("203.0.113.7"), anything shorter the network in CIDR notation.
//
// Anything that is not an IP address, such as an API key taken from a
// header, is returned as is.
func ClientKey(ip string, v4bits, v6bits int) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		ap, err := netip.ParseAddrPort(ip)
		if err != nil {
			return ip
		}
		addr = ap.Addr()
	}
	addr = addr.Unmap().WithZone("")

	bits, full := v6bits, 128
	if addr.Is4() {
		bits, full = v4bits, 32
		if bits <= 0 {
			bits = defaultIPv4Prefix
		}
	} else if bits <= 0 {
		bits = defaultIPv6Prefix
	}
	if bits >= full {
		return addr.String()
	}
	p, err := addr.Prefix(bits)
	if err != nil { // unreachable: bits is within 1..full
		return addr.String()
	}
	return p.String()
}
