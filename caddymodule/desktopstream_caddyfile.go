package caddymodule

import (
	"net/netip"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("desktop_stream", parseDesktopStream)
	// Before reverse_proxy, like the other handlers that answer by
	// themselves, so a site needs no `order` line or `route` block.
	httpcaddyfile.RegisterDirectiveOrder("desktop_stream", httpcaddyfile.Before, "reverse_proxy")
}

func parseDesktopStream(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	ds := new(DesktopStream)
	if err := ds.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return ds, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	desktop_stream [<matcher>] {
//		display      <index>
//		fps          <1-60>
//		quality      <1-100>
//		max_width    <pixels>
//		max_viewers  <n>
//		allow_remote
//		allowed_hosts <name>...
//		stall_timeout <duration>
//		rate_limit   <rate> [{ ... }]
//	}
//
// Every subdirective is optional and may appear once. The block may be
// omitted: display 0, 10 fps, quality 70, native size, no viewer cap,
// loopback clients asking for a loopback name only, viewers dropped after
// 10s without taking a whole frame, no rate limit.
// allowed_hosts adds names to loopback's, without allow_remote only.
// rate_limit is llm_proxy's, block and all.
func (ds *DesktopStream) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if err := noArgs(d); err != nil {
		return err
	}
	return block(d, "desktop_stream", func(name string) (err error) {
		switch name {
		case "display":
			ds.Display, err = intArg(d, 0, 1<<10)
		case "fps":
			ds.FPS, err = intArg(d, 1, 60)
		case "quality":
			ds.Quality, err = intArg(d, 1, 100)
		case "max_width":
			ds.MaxWidth, err = intArg(d, 1, 1<<16)
		case "max_viewers":
			ds.MaxViewers, err = intArg(d, 1, 1<<20)
		case "allow_remote":
			ds.AllowRemote, err = true, noArgs(d)
		case "allowed_hosts":
			ds.AllowedHosts, err = hostsArg(d)
		case "stall_timeout":
			ds.StallTimeout, err = timeoutArg(d)
		case "rate_limit":
			ds.RateLimit, err = parseRateLimit(d)
		default:
			err = errUnknown
		}
		return err
	})
}

// hostsArg reads one or more host names without port or scheme.
func hostsArg(d *caddyfile.Dispenser) ([]string, error) {
	name := d.Val()
	hosts := d.RemainingArgs()
	if len(hosts) == 0 {
		return nil, d.ArgErr()
	}
	for _, h := range hosts {
		if h == "" || strings.ContainsAny(h, "/:@ ") && !isIPv6(h) {
			return nil, badArg(d, name, h, "a host name without scheme or port, such as desktop.lan")
		}
	}
	return hosts, nil
}

// isIPv6 tells an IPv6 address, bracketed or not, from a host with a port.
func isIPv6(h string) bool {
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
	return err == nil && a.Is6()
}

// timeoutArg reads one duration above 0: a timeout that cannot be off.
func timeoutArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	s, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	const want = "a duration above 0, such as 10s"
	dur, err := parseDuration(d, name, s, want)
	if err == nil && dur == 0 {
		err = badArg(d, name, s, want)
	}
	return dur, err
}

// Interface guard
var _ caddyfile.Unmarshaler = (*DesktopStream)(nil)
