package caddymodule

import (
	"strconv"

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
//	}
//
// Every subdirective is optional and may appear once. The block may be
// omitted: display 0, 10 fps, quality 70, native size, no viewer cap,
// loopback clients only.
func (ds *DesktopStream) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}

	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate subdirective %s", name)
		}
		seen[name] = true

		var err error
		switch name {
		case "display":
			ds.Display, err = intInRange(d, 0, 1<<10)
		case "fps":
			ds.FPS, err = intInRange(d, 1, 60)
		case "quality":
			ds.Quality, err = intInRange(d, 1, 100)
		case "max_width":
			ds.MaxWidth, err = intInRange(d, 1, 1<<16)
		case "max_viewers":
			ds.MaxViewers, err = intInRange(d, 1, 1<<20)
		case "allow_remote":
			if d.NextArg() {
				return d.ArgErr()
			}
			ds.AllowRemote = true
		case "rate_limit":
			ds.RateLimit, err = parseRateLimit(d)
		default:
			return d.Errf("unknown subdirective %s", name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// intInRange reads the subdirective's single argument, an integer in [lo, hi].
func intInRange(d *caddyfile.Dispenser, lo, hi int) (int, error) {
	name := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(d.Val())
	if err != nil {
		return 0, d.Errf("%s: %q is not an integer", name, d.Val())
	}
	if n < lo || n > hi {
		return 0, d.Errf("%s: %d is out of range %d-%d", name, n, lo, hi)
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return n, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*DesktopStream)(nil)
