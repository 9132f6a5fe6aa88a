package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/llmstream/caddy-llmstream/frame"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("llm_proxy", parseLLMProxy)
	// Before reverse_proxy, so that llm_proxy on the chat path and
	// reverse_proxy to the app sit in one site block with no order or route.
	httpcaddyfile.RegisterDirectiveOrder("llm_proxy", httpcaddyfile.Before, "reverse_proxy")
}

func parseLLMProxy(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(LLMProxy)
	err := p.UnmarshalCaddyfile(h.Dispenser)
	return p, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	llm_proxy [<matcher>] [<base_url>] {
//		to <base_url>
//		api_key <key>
//		model <name>
//		format openai|sse|ndjson|text
//		heartbeat <duration>
//		max_body <size>
//		max_event_size <size>
//		header_up <name> <value>
//		rate_limit <rate> [{ ... }]
//		timeouts {
//			dial <duration>
//			first_chunk <duration>
//			idle <duration>
//			total <duration>
//			write <duration>
//		}
//	}
//
// The base URL may be given on the directive's line instead of with `to`.
func (h *LLMProxy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		h.To = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	toOnLine := h.To != ""

	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if name != "header_up" && seen[name] {
			return d.Errf("duplicate subdirective %q", name)
		}
		seen[name] = true
		switch name {
		case "to":
			if toOnLine {
				return d.Err("upstream given twice: on the directive's line and with `to`")
			}
			if err := oneArg(d, &h.To); err != nil {
				return err
			}
		case "api_key":
			if err := oneArg(d, &h.APIKey); err != nil {
				return err
			}
		case "model":
			if err := oneArg(d, &h.Model); err != nil {
				return err
			}
		case "format":
			if err := oneArg(d, &h.Format); err != nil {
				return err
			}
			if _, err := frame.ParseFormat(h.Format); err != nil {
				return d.Err(err.Error())
			}
		case "heartbeat":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.Heartbeat = &dur
		case "max_body":
			n, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxBody = n
		case "max_event_size":
			n, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxEventSize = int(n)
		case "header_up":
			var k, v string
			if !d.Args(&k, &v) || d.NextArg() {
				return d.ArgErr()
			}
			if h.HeaderUp == nil {
				h.HeaderUp = http.Header{}
			}
			h.HeaderUp.Add(k, v)
		case "rate_limit":
			rl, err := parseRateLimit(d)
			if err != nil {
				return err
			}
			h.RateLimit = rl
		case "timeouts":
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := h.unmarshalTimeouts(d); err != nil {
				return err
			}
		default:
			return d.Errf("unknown subdirective %q", name)
		}
	}
	return nil
}

func (h *LLMProxy) unmarshalTimeouts(d *caddyfile.Dispenser) error {
	h.Timeouts = new(Timeouts)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate timeout %q", name)
		}
		seen[name] = true
		var field **caddy.Duration
		switch name {
		case "dial":
			field = &h.Timeouts.Dial
		case "first_chunk":
			field = &h.Timeouts.FirstChunk
		case "idle":
			field = &h.Timeouts.Idle
		case "total":
			field = &h.Timeouts.Total
		case "write":
			field = &h.Timeouts.Write
		default:
			return d.Errf("unknown timeout %q: want dial, first_chunk, idle, total or write", name)
		}
		dur, err := durationArg(d)
		if err != nil {
			return err
		}
		*field = &dur
	}
	return nil
}

// oneArg reads exactly one argument into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// durationArg reads one duration argument; "0" and "off" turn a limit off.
func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	var s string
	if err := oneArg(d, &s); err != nil {
		return 0, err
	}
	if s == "off" {
		return 0, nil
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, d.Errf("bad duration %q: %v", s, err)
	}
	if dur < 0 {
		return 0, d.Errf("duration %q must not be negative", s)
	}
	return caddy.Duration(dur), nil
}

// sizeArg reads one size argument such as 1MiB or 4096.
func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	var s string
	if err := oneArg(d, &s); err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > 1<<40 {
		return 0, d.Errf("bad size %q: want a positive size such as 1MiB", s)
	}
	return int64(n), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*LLMProxy)(nil)
