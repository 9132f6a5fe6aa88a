package caddymodule

import (
	"net/http"
	"net/netip"
	"net/url"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/llmstream/caddy-llmstream/guard"
)

// clientAddr is the address of r's client for a guard (desktop_stream's
// loopback check, the default rate-limit key): the connection's peer, or,
// when the server's trusted_proxies trust it, the right-most address of the
// forwarding header that is not a trusted proxy (see guard.ClientAddr).
//
// Caddy's client_ip var is that address only under trusted_proxies_strict;
// by default it is the left-most one, which a client writes itself and
// which any proxy that appends passes on. So with a trusted peer the header
// is walked here, whatever the server's mode. Otherwise client_ip is the
// peer, and it is taken as Caddy set it. The zero Addr means unknown.
func clientAddr(r *http.Request) netip.Addr {
	ctx := r.Context()
	if trusted, _ := caddyhttp.GetVar(ctx, caddyhttp.TrustedProxyVarKey).(bool); trusted {
		if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil {
			peer := remoteAddr(r) // the zero Addr for a Unix socket, which Caddy trusted too
			return guard.ClientAddr(peer, forwardedFor(r, srv), func(a netip.Addr) bool {
				return a == peer || trustedProxy(srv, a)
			})
		}
	}
	if ip, ok := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		if a, err := netip.ParseAddr(ip); err == nil {
			return a.Unmap().WithZone("")
		}
	}
	return remoteAddr(r)
}

// remoteAddr is the address of r's connection, the zero Addr if it has
// none (a Unix socket).
func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap().WithZone("")
}

// forwardedFor returns the values of the first of the server's
// client_ip_headers (X-Forwarded-For by default) that r carries.
func forwardedFor(r *http.Request, srv *caddyhttp.Server) []string {
	for _, name := range srv.ClientIPHeaders {
		if v := r.Header.Values(name); len(v) > 0 {
			return v
		}
	}
	if len(srv.ClientIPHeaders) == 0 {
		return r.Header.Values("X-Forwarded-For")
	}
	return nil
}

// trustedProxy tells whether srv's trusted_proxies hold a. Caddy keeps that
// module unexported and answers only for a request's peer, in the
// trusted_proxy var; so ask it about a request from a, with no header.
func trustedProxy(srv *caddyhttp.Server, a netip.Addr) bool {
	probe := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/"}, Header: http.Header{},
		RemoteAddr: netip.AddrPortFrom(a, 0).String()}
	probe = caddyhttp.PrepareRequest(probe, caddy.NewReplacer(), nil, srv)
	trusted, _ := caddyhttp.GetVar(probe.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	return trusted
}
