package caddymodule

import (
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
//		rate_limit   <rate> [{ ... }]
//	}
//
// Every subdirective is optional and may appear once. The block may be
// omitted: display 0, 10 fps, quality 70, native size, no viewer cap,
// loopback clients only, no rate limit. rate_limit is llm_proxy's, block
// and all.
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
		case "rate_limit":
			ds.RateLimit, err = parseRateLimit(d)
		default:
			err = errUnknown
		}
		return err
	})
}

// Interface guard
var _ caddyfile.Unmarshaler = (*DesktopStream)(nil)
