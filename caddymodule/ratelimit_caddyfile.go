package caddymodule

import (
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/llmstream/caddy-llmstream/ratelimit"
)

// parseRateLimit reads the rate_limit subdirective, the dispenser being on
// its name. Syntax:
//
//	rate_limit <rate> {
//		key <placeholder>
//		store memory|redis <url>
//		ipv4_prefix <bits>
//		ipv6_prefix <bits>
//		max_concurrent <n>
//		on_store_error allow|deny
//		zone <name>
//		tokens <rate>
//	}
//
// The block is optional. tokens is for llm_proxy only.
func parseRateLimit(d *caddyfile.Dispenser) (*RateLimit, error) {
	rl := new(RateLimit)
	var err error
	if rl.Rate, err = oneArg(d); err != nil {
		return nil, err
	}
	if err := (ratelimit.Config{Rate: rl.Rate}).Validate(); err != nil {
		return nil, d.Errf("rate_limit: %v", err)
	}
	return rl, block(d, "rate_limit", func(name string) (err error) {
		switch name {
		case "key":
			rl.Key, err = nonEmptyArg(d)
		case "store":
			rl.Store, err = storeArg(d, rl.Rate)
		case "ipv4_prefix":
			rl.IPv4Prefix, err = intArg(d, 1, 32)
		case "ipv6_prefix":
			rl.IPv6Prefix, err = intArg(d, 1, 128)
		case "max_concurrent":
			rl.MaxConcurrent, err = intArg(d, 1, unbounded)
		case "on_store_error":
			rl.OnStoreError, err = choiceArg(d, "allow", "deny")
		case "zone":
			rl.Zone, err = nonEmptyArg(d)
		case "tokens":
			if rl.Tokens, err = oneArg(d); err == nil {
				if verr := (ratelimit.Config{Rate: rl.Rate, Tokens: rl.Tokens}).Validate(); verr != nil {
					err = d.Errf("rate_limit: %v", verr)
				}
			}
		default:
			err = errUnknown
		}
		return err
	})
}

// storeArg reads `store memory` (which is "") or `store redis <url>`.
func storeArg(d *caddyfile.Dispenser, rate string) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	switch kind := d.Val(); kind {
	case "memory":
		return "", noArgs(d)
	case "redis":
		url, err := oneArg(d)
		if err != nil {
			return "", err
		}
		// A placeholder is checked once expanded, at provision time. The
		// error never quotes a password.
		if !strings.Contains(url, "{") {
			if err := (ratelimit.Config{Rate: rate, Store: url}).Validate(); err != nil {
				return "", d.Errf("rate_limit: %v", err)
			}
		}
		return url, nil
	default:
		return "", badArg(d, "store", kind, "memory or redis <url>")
	}
}
