package ratelimit

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// parseItem parses the one-item structured field we send, `"name";k=1;k=2`,
// strictly: a quoted name then integer parameters.
func parseItem(t *testing.T, v string) (string, map[string]int64) {
	t.Helper()
	parts := strings.Split(v, ";")
	name, err := strconv.Unquote(parts[0])
	if err != nil || !strings.HasPrefix(parts[0], `"`) {
		t.Fatalf("%q: item name is not an sf-string", v)
	}
	params := map[string]int64{}
	for _, p := range parts[1:] {
		k, val, ok := strings.Cut(p, "=")
		n, err := strconv.ParseInt(val, 10, 64)
		if !ok || err != nil || n < 0 {
			t.Fatalf("%q: parameter %q is not key=non-negative integer", v, p)
		}
		params[k] = n
	}
	return name, params
}

func intHeader(t *testing.T, h http.Header, name string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(h.Get(name), 10, 64)
	if err != nil {
		t.Fatalf("%s: %q is not an integer", name, h.Get(name))
	}
	return n
}

func TestSetHeaders(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name string
		d    Decision
		want map[string]string // every header written, exactly
	}{
		{
			name: "allowed",
			d:    Decision{Allowed: true, Limit: 10, Remaining: 7, Reset: now.Add(41200 * time.Millisecond), Window: time.Minute},
			want: map[string]string{
				"X-RateLimit-Limit":     "10",
				"X-RateLimit-Remaining": "7",
				"X-RateLimit-Reset":     "42",
				"RateLimit-Policy":      `"default";q=10;w=60`,
				"RateLimit":             `"default";r=7;t=42`,
			},
		},
		{
			name: "whole seconds stay whole",
			d:    Decision{Allowed: true, Limit: 100, Remaining: 99, Reset: now.Add(time.Hour), Window: time.Hour},
			want: map[string]string{
				"X-RateLimit-Limit":     "100",
				"X-RateLimit-Remaining": "99",
				"X-RateLimit-Reset":     "3600",
				"RateLimit-Policy":      `"default";q=100;w=3600`,
				"RateLimit":             `"default";r=99;t=3600`,
			},
		},
		{
			name: "refused",
			d:    Decision{Limit: 3, Remaining: 0, Reset: now.Add(300 * time.Millisecond), Window: time.Second, RetryAfter: time.Second},
			want: map[string]string{
				"X-RateLimit-Limit":     "3",
				"X-RateLimit-Remaining": "0",
				"X-RateLimit-Reset":     "1",
				"RateLimit-Policy":      `"default";q=3;w=1`,
				"RateLimit":             `"default";r=0;t=1`,
				"Retry-After":           "1",
			},
		},
		{
			name: "refused, window ended since",
			d:    Decision{Limit: 3, Remaining: 0, Reset: now.Add(-time.Millisecond), Window: time.Second, RetryAfter: time.Second},
			want: map[string]string{
				"X-RateLimit-Limit":     "3",
				"X-RateLimit-Remaining": "0",
				"X-RateLimit-Reset":     "1",
				"RateLimit-Policy":      `"default";q=3;w=1`,
				"RateLimit":             `"default";r=0;t=1`,
				"Retry-After":           "1",
			},
		},
		{
			name: "store failed, allowed",
			d:    Decision{Allowed: true, Limit: 10, Remaining: -1, Window: time.Minute},
			want: map[string]string{
				"X-RateLimit-Limit": "10",
				"RateLimit-Policy":  `"default";q=10;w=60`,
			},
		},
		{
			name: "store failed, denied",
			d:    Decision{Limit: 10, Remaining: -1, Window: time.Minute, RetryAfter: time.Second},
			want: map[string]string{
				"X-RateLimit-Limit": "10",
				"RateLimit-Policy":  `"default";q=10;w=60`,
				"Retry-After":       "1",
			},
		},
		{name: "zero decision", want: map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			tc.d.SetHeaders(h, now)
			for k, v := range tc.want {
				if got := h.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if len(h) != len(tc.want) {
				t.Errorf("wrote %d headers, want %d: %v", len(h), len(tc.want), h)
			}
		})
	}
}

// Headers from a real refusal parse back into a consistent picture.
func TestSetHeadersRoundTrip(t *testing.T) {
	l := newTest(t, Config{Rate: "3-M"})
	var d Decision
	for range 4 {
		d = l.Allow(context.Background(), "k")
	}
	h := http.Header{}
	d.SetHeaders(h, time.Now())

	if n := intHeader(t, h, "X-RateLimit-Limit"); n != 3 {
		t.Errorf("X-RateLimit-Limit = %d", n)
	}
	if n := intHeader(t, h, "X-RateLimit-Remaining"); n != 0 {
		t.Errorf("X-RateLimit-Remaining = %d", n)
	}
	reset := intHeader(t, h, "X-RateLimit-Reset")
	if reset < 59 || reset > 60 {
		t.Errorf("X-RateLimit-Reset = %d, want about 60", reset)
	}
	if retry := intHeader(t, h, "Retry-After"); retry != reset {
		t.Errorf("Retry-After %d and X-RateLimit-Reset %d name different instants", retry, reset)
	}

	name, p := parseItem(t, h.Get("RateLimit-Policy"))
	if name != "default" || p["q"] != 3 || p["w"] != 60 || len(p) != 2 {
		t.Errorf("RateLimit-Policy %q", h.Get("RateLimit-Policy"))
	}
	name, p = parseItem(t, h.Get("RateLimit"))
	if name != "default" || p["r"] != 0 || p["t"] != reset || len(p) != 2 {
		t.Errorf("RateLimit %q", h.Get("RateLimit"))
	}
}
