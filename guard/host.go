package guard

import (
	"net"
	"net/netip"
	"strings"
)

// LoopbackHost tells whether host, a request's Host with or without a port,
// names this machine's loopback interface (localhost, an address of
// 127.0.0.0/8, ::1) or is one of allowed, names compared without case and
// port.
//
// A server that answers any Host can be read by any web page through DNS
// rebinding: the page's own name is made to resolve to 127.0.0.1, and the
// browser, which guards by name, lets the page read the answers. The page
// cannot change the Host its requests carry, its own name; refusing names
// that are not loopback's refuses it. An address literal cannot be rebound,
// but only loopback's name loopback.
func LoopbackHost(host string, allowed []string) bool {
	name := hostname(host)
	if name == "" {
		return false
	}
	if name == "localhost" {
		return true
	}
	if a, err := netip.ParseAddr(name); err == nil {
		if a.Zone() == "" && a.Unmap().IsLoopback() {
			return true
		}
	}
	for _, h := range allowed {
		if hostname(h) == name {
			return true
		}
	}
	return false
}

// hostname is host without port, brackets, trailing dot or case.
func hostname(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
