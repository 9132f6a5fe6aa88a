package ratelimit

import (
	"strconv"
	"time"
)

// Refusal is a request turned away, in no handler's shape: each handler
// tells the client in its own (an LLM client expects OpenAI's error JSON, a
// desktop viewer plain text). The response headers, Retry-After among them,
// are set by the time a handler gets one.
type Refusal struct {
	// Status is the HTTP status to answer with: 429.
	Status int
	// RetryAfter is the Retry-After header's value, in seconds.
	RetryAfter string
	// Message says why, for a person: which limit, and when to retry.
	Message string
}

// DescribeRate says "10 requests per minute" for noun "request".
func DescribeRate(limit int64, window time.Duration, noun string) string {
	var unit string
	switch window {
	case time.Second:
		unit = "second"
	case time.Minute:
		unit = "minute"
	case time.Hour:
		unit = "hour"
	case 24 * time.Hour:
		unit = "day"
	default:
		unit = window.String()
	}
	if limit != 1 {
		noun += "s"
	}
	return strconv.FormatInt(limit, 10) + " " + noun + " per " + unit
}
