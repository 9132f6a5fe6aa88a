package caddymodule

import (
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/upstream"
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
//	llm_proxy [<matcher>] [<base_url>...] {
//		to <base_url>...
//		upstream <base_url> {
//			api_key <key>
//			model <from> <to>
//			weight <n>
//		}
//		lb_policy round_robin|least_conn|random|first|weighted
//		retries <n>
//		health_check <interval>
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
// Base URLs may be given on the directive's line instead of with `to`.
// All upstreams form one pool.
func (h *LLMProxy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	h.To = append(h.To, d.RemainingArgs()...)
	toOnLine := len(h.To) > 0

	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if name != "header_up" && name != "upstream" && seen[name] {
			return d.Errf("duplicate subdirective %q", name)
		}
		seen[name] = true
		switch name {
		case "to":
			if toOnLine {
				return d.Err("upstream given twice: on the directive's line and with `to`")
			}
			h.To = d.RemainingArgs()
			if len(h.To) == 0 {
				return d.ArgErr()
			}
		case "upstream":
			u, err := parseUpstream(d)
			if err != nil {
				return err
			}
			h.Upstreams = append(h.Upstreams, u)
		case "lb_policy":
			if err := oneArg(d, &h.LBPolicy); err != nil {
				return err
			}
			if _, err := upstream.ParsePolicy(h.LBPolicy); err != nil {
				return d.Err(err.Error())
			}
		case "retries":
			n, err := intArg(d, 0)
			if err != nil {
				return err
			}
			h.Retries = &n
		case "health_check":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.HealthCheck = dur
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

// parseUpstream reads `upstream <base_url> { api_key, model <from> <to>, weight }`.
func parseUpstream(d *caddyfile.Dispenser) (*UpstreamConfig, error) {
	u := new(UpstreamConfig)
	if err := oneArg(d, &u.To); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if name != "model" && seen[name] {
			return nil, d.Errf("duplicate upstream setting %q", name)
		}
		seen[name] = true
		switch name {
		case "api_key":
			if err := oneArg(d, &u.APIKey); err != nil {
				return nil, err
			}
		case "model":
			var from, to string
			if !d.Args(&from, &to) || d.NextArg() {
				return nil, d.ArgErr()
			}
			if u.Models == nil {
				u.Models = map[string]string{}
			}
			if _, dup := u.Models[from]; dup {
				return nil, d.Errf("model %q renamed twice", from)
			}
			u.Models[from] = to
		case "weight":
			n, err := intArg(d, 1)
			if err != nil {
				return nil, err
			}
			u.Weight = n
		default:
			return nil, d.Errf("unknown upstream setting %q: want api_key, model or weight", name)
		}
	}
	return u, nil
}

// intArg reads one whole number of at least lowest.
func intArg(d *caddyfile.Dispenser, lowest int) (int, error) {
	var s string
	if err := oneArg(d, &s); err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lowest {
		return 0, d.Errf("bad number %q: want a whole number of at least %d", s, lowest)
	}
	return n, nil
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
