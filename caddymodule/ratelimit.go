package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// RateLimit is the rate_limit subdirective shared by llm_proxy and
// desktop_stream. STUB: being written.
type RateLimit struct {
	Rate string `json:"rate,omitempty"`
}

// parseRateLimit reads `rate_limit <rate> [{...}]`, the dispenser being on
// the rate_limit token.
func parseRateLimit(d *caddyfile.Dispenser) (*RateLimit, error) {
	rl := new(RateLimit)
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	rl.Rate = d.Val()
	return rl, nil
}

// Provision takes the limiter for this directive from a usage pool, so that
// counters survive a config reload. owner is the handler's config.
func (rl *RateLimit) Provision(ctx caddy.Context, directive string, owner any) error {
	return errors.New("rate_limit: not implemented yet")
}

// Admit checks one request: it sets the rate-limit headers on w and returns
// a release func to call when the request ends (for max_concurrent), or a
// *chunk.Error with status 429 and RetryAfter when refused.
func (rl *RateLimit) Admit(w http.ResponseWriter, r *http.Request) (release func(), err error) {
	return func() {}, nil
}

// Cleanup releases this directive's hold on the pooled limiter.
func (rl *RateLimit) Cleanup() error { return nil }
