package caddymodule

import (
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/guard"
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
	if err := p.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return p, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	llm_proxy [<matcher>] [<base_url>...] {
//		to <base_url>...
//		upstream <base_url> {
//			api_key <key>
//			auth bearer|x-api-key
//			model <from> <to>
//			weight <n>
//		}
//		lb_policy round_robin|least_conn|random|first|weighted
//		retries <n>
//		health_check <interval>
//		api_key <key>
//		auth bearer|x-api-key
//		model <name>
//		format openai|sse|ndjson|text
//		heartbeat <duration>
//		max_body <size>
//		max_event_size <size>
//		header_up <name> <value>
//		rate_limit <rate> [{ ... }]
//		models <name>...
//		max_tokens <n> [reject|clamp]
//		max_n <n>
//		max_messages <n>
//		max_prompt <n>
//		cors <origin>... {
//			allow_credentials
//			max_age <duration>
//		}
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

	return block(d, "llm_proxy", func(name string) (err error) {
		switch name {
		case "to":
			if toOnLine {
				return d.Err("upstream given twice: on the directive's line and with `to`")
			}
			if h.To = d.RemainingArgs(); len(h.To) == 0 {
				err = d.ArgErr()
			}
		case "upstream":
			var u *UpstreamConfig
			if u, err = parseUpstream(d); err == nil {
				h.Upstreams = append(h.Upstreams, u)
			}
		case "lb_policy":
			h.LBPolicy, err = parsedArg(d, upstream.ParsePolicy)
		case "retries":
			var n int
			n, err = intArg(d, 0, unbounded)
			h.Retries = &n
		case "health_check":
			h.HealthCheck, err = durationArg(d)
		case "api_key":
			h.APIKey, err = oneArg(d)
		case "auth":
			h.Auth, err = parsedArg(d, upstream.ParseAuth)
		case "model":
			h.Model, err = oneArg(d)
		case "format":
			h.Format, err = parsedArg(d, frame.ParseFormat)
		case "heartbeat":
			var dur caddy.Duration
			dur, err = durationArg(d)
			h.Heartbeat = &dur
		case "max_body":
			h.MaxBody, err = sizeArg(d)
		case "max_event_size":
			var n int64
			n, err = sizeArg(d)
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
			h.RateLimit, err = parseRateLimit(d)
		case "models":
			if h.Models = d.RemainingArgs(); len(h.Models) == 0 {
				err = d.ArgErr()
			}
		case "max_tokens":
			h.MaxTokens, h.MaxTokensClamp, err = parseMaxTokens(d)
		case "max_n":
			h.MaxN, err = intArg(d, 1, unbounded)
		case "max_messages":
			h.MaxMessages, err = intArg(d, 1, unbounded)
		case "max_prompt":
			h.MaxPrompt, err = intArg(d, 1, unbounded)
		case "cors":
			h.CORS, err = parseCORS(d)
		case "resume":
			h.Resume, err = parseResume(d)
		case "timeouts":
			if err = noArgs(d); err == nil {
				err = h.unmarshalTimeouts(d)
			}
		default:
			err = errUnknown
		}
		return err
	}, "header_up", "upstream")
}

// parseUpstream reads `upstream <base_url> { api_key, auth, model <from> <to>, weight }`.
func parseUpstream(d *caddyfile.Dispenser) (*UpstreamConfig, error) {
	u := new(UpstreamConfig)
	var err error
	if u.To, err = oneArg(d); err != nil {
		return nil, err
	}
	return u, block(d, "upstream", func(name string) (err error) {
		switch name {
		case "api_key":
			u.APIKey, err = oneArg(d)
		case "auth":
			u.Auth, err = parsedArg(d, upstream.ParseAuth)
		case "model":
			var from, to string
			if !d.Args(&from, &to) || d.NextArg() {
				return d.ArgErr()
			}
			if _, dup := u.Models[from]; dup {
				return d.Errf("model %q renamed twice", from)
			}
			if u.Models == nil {
				u.Models = map[string]string{}
			}
			u.Models[from] = to
		case "weight":
			u.Weight, err = intArg(d, 1, unbounded)
		default:
			err = errUnknown
		}
		return err
	}, "model")
}

// parseMaxTokens reads `max_tokens <n> [reject|clamp]`.
func parseMaxTokens(d *caddyfile.Dispenser) (n int, clamp bool, err error) {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return 0, false, d.ArgErr()
	}
	if n, err = parseInt(d, "max_tokens", args[0], 1, unbounded); err != nil {
		return 0, false, err
	}
	if len(args) == 2 {
		if err = choice(d, "max_tokens", args[1], "reject", "clamp"); err != nil {
			return 0, false, err
		}
	}
	return n, len(args) == 2 && args[1] == "clamp", nil
}

// parseCORS reads `cors <origin>... [{ allow_credentials, max_age <duration> }]`,
// refusing what guard.CORS would refuse at load time.
func parseCORS(d *caddyfile.Dispenser) (*CORSConfig, error) {
	c := &CORSConfig{Origins: d.RemainingArgs()}
	if len(c.Origins) == 0 {
		return nil, d.ArgErr()
	}
	err := block(d, "cors", func(name string) (err error) {
		switch name {
		case "allow_credentials":
			c.AllowCredentials, err = true, noArgs(d)
		case "max_age":
			c.MaxAge, err = durationArg(d)
		default:
			err = errUnknown
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	check := guard.CORS{Origins: slices.Clone(c.Origins), Credentials: c.AllowCredentials, MaxAge: time.Duration(c.MaxAge)}
	if err := check.Validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return c, nil
}

func (h *LLMProxy) unmarshalTimeouts(d *caddyfile.Dispenser) error {
	h.Timeouts = new(Timeouts)
	return block(d, "timeouts", func(name string) error {
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
			return errUnknown
		}
		dur, err := durationArg(d)
		*field = &dur
		return err
	})
}

// Interface guard
var _ caddyfile.Unmarshaler = (*LLMProxy)(nil)
