package ratelimit

import (
	"net/http"
	"strconv"
	"time"
)

// policyName names our single quota policy in the IETF headers, which allow
// several.
const policyName = `"default"`

// SetHeaders writes d as response headers, relative to now:
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
func (d Decision) SetHeaders(h http.Header, now time.Time) {
	if d.Limit <= 0 {
		return
	}
	limit := strconv.FormatInt(d.Limit, 10)
	h.Set("X-RateLimit-Limit", limit)
	h.Set("RateLimit-Policy", policyName+";q="+limit+";w="+strconv.FormatInt(ceilSeconds(d.Window), 10))

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
	h.Set("X-RateLimit-Remaining", remaining)
	h.Set("X-RateLimit-Reset", resetSecs)
	h.Set("RateLimit", policyName+";r="+remaining+";t="+resetSecs)
}
