package ratelimit

import (
	"net/http"
	"strconv"
	"time"
)

// names are the header names and the IETF policy item of one limit.
type names struct {
	limit, remaining, reset string
	// resetDuration writes reset as a Go duration ("42s"), as OpenAI does
	// for its tokens, rather than in seconds.
	resetDuration bool
	// policy names the limit's item in the IETF fields, which list one item
	// per limit.
	policy string
}

var (
	requestNames = names{limit: "X-RateLimit-Limit", remaining: "X-RateLimit-Remaining", reset: "X-RateLimit-Reset",
		policy: `"default"`}
	// OpenAI's names, which its SDKs expose.
	tokenNames = names{limit: "X-Ratelimit-Limit-Tokens", remaining: "X-Ratelimit-Remaining-Tokens",
		reset: "X-Ratelimit-Reset-Tokens", resetDuration: true, policy: `"tokens"`}
)

// HeaderNames are the response headers a limit writes: what a page of
// another origin must be allowed to read (CORS) to know where it stands.
func HeaderNames() []string {
	var hs []string
	for _, n := range []names{requestNames, tokenNames} {
		hs = append(hs, n.limit, n.remaining, n.reset)
	}
	return append(hs, "RateLimit-Policy", "RateLimit", "Retry-After")
}

// SetHeaders writes d, a request rate's decision, as response headers,
// relative to now:
//
//	X-RateLimit-Limit: 10
//	X-RateLimit-Remaining: 3
//	X-RateLimit-Reset: 42
//	RateLimit-Policy: "default";q=10;w=60
//	RateLimit: "default";r=3;t=42
//	Retry-After: 42            (refused only)
//
// X-RateLimit-Reset is in seconds until the window ends, rounded up, not an
// epoch as GitHub sends: it then agrees with the t parameter of the IETF
// draft's RateLimit field (draft-ietf-httpapi-ratelimit-headers-09) and with
// Retry-After, and does not depend on the client's clock being right. Rounding
// up means a client that waits that long finds the window over.
//
// When the store failed and the request was let through, only the limit is
// known: Remaining and Reset are left out rather than guessed. A zero Decision
// writes nothing.
func (d Decision) SetHeaders(h http.Header, now time.Time) { d.set(h, now, requestNames) }

// SetTokenHeaders writes d, a token budget's decision ([Limiter.Reserve]),
// in OpenAI's headers, and adds its item to the IETF fields that
// SetHeaders wrote:
//
//	X-Ratelimit-Limit-Tokens: 50000
//	X-Ratelimit-Remaining-Tokens: 31000
//	X-Ratelimit-Reset-Tokens: 42s
//	RateLimit-Policy: "default";q=10;w=60, "tokens";q=50000;w=60
//	RateLimit: "default";r=3;t=42, "tokens";r=31000;t=42
//	Retry-After: 42            (refused only)
//
// Remaining is after this request's reservation, as OpenAI counts it.
func (d Decision) SetTokenHeaders(h http.Header, now time.Time) { d.set(h, now, tokenNames) }

func (d Decision) set(h http.Header, now time.Time, n names) {
	if d.Limit <= 0 {
		return
	}
	limit := strconv.FormatInt(d.Limit, 10)
	h.Set(n.limit, limit)
	addItem(h, "RateLimit-Policy", n.policy+";q="+limit+";w="+strconv.FormatInt(ceilSeconds(d.Window), 10))

	known := d.Remaining >= 0 && !d.Reset.IsZero()
	reset := max(ceilSeconds(d.Reset.Sub(now)), 0)
	if !d.Allowed {
		retry := ceilSeconds(d.RetryAfter)
		if known {
			retry = reset
		}
		// The draft wants t and Retry-After to name the same instant, and
		// Retry-After: 0 would invite an immediate retry.
		retry = max(retry, 1)
		reset = retry
		h.Set("Retry-After", strconv.FormatInt(retry, 10))
	}
	if !known {
		return
	}
	remaining := strconv.FormatInt(d.Remaining, 10)
	resetSecs := strconv.FormatInt(reset, 10)
	h.Set(n.remaining, remaining)
	if n.resetDuration {
		h.Set(n.reset, (time.Duration(reset) * time.Second).String())
	} else {
		h.Set(n.reset, resetSecs)
	}
	addItem(h, "RateLimit", n.policy+";r="+remaining+";t="+resetSecs)
}

// addItem adds an item to a structured-field list in one field line.
func addItem(h http.Header, name, item string) {
	if v := h.Get(name); v != "" {
		item = v + ", " + item
	}
	h.Set(name, item)
}
