package ratelimit

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/ulule/limiter/v3"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// A token budget is counted in the store that counts requests, under keys
// of its own: the counter of a client's window holds what its requests in
// flight reserved and what its finished ones used. Before a request, its
// bound is reserved ([Limiter.Reserve]); while it streams, its tokens are
// counted ([Tab.Count]) without a store call, until they pass what it may
// use; when it ends, the reservation is trued up to what it used
// ([Tab.Settle]). A request may use what it reserved, and no more than the
// budget left it by the others' reservations, so requests in parallel, on
// one instance or many, overdraw a budget by one request's reservation at
// most.
//
// What a request used is the upstream's usage (prompt_tokens plus
// completion_tokens) once the upstream reports it. Until then it is an
// estimate: the prompt at about four characters a token (OpenAI's rule of
// thumb), plus one token per content, reasoning or tool-call delta, and n
// per delta when n choices are generated. Upstreams that send usage with
// every chunk are counted by their own numbers.

// countAll is the limit the store is told for token counters: so high that
// the store's Remaining is never clipped, and the count is exact.
const countAll = 1 << 62

// promptTokens estimates the tokens of a prompt of chars characters.
func promptTokens(chars int) int64 { return (int64(chars) + 3) / 4 }

// Cost is what a request may spend, as it is known before the upstream
// answers.
type Cost struct {
	// PromptChars is the characters of text in its messages.
	PromptChars int
	// MaxTokens bounds its completion (after the operator's cap); 0 when
	// nothing bounds it.
	MaxTokens int
	// N is how many choices are generated; 0 means 1.
	N int
}

// Tab is one request's account with its client's token budget. It belongs
// to the goroutine serving the request; a nil *Tab counts nothing.
type Tab struct {
	l        *Limiter
	key      string
	perDelta int64
	// reserved is what this request has added to the counter; allowance
	// is the budget less the others' part of the counter, when last seen;
	// limit, the smaller, is where Count must ask the store again.
	reserved, allowance, limit int64
	used                       int64
	finished                   bool
	// until is the earliest the window may end: a reservation given back
	// after it could credit the next window.
	until time.Time

	// usage reads the upstream's usage reports.
	dec *jsontext.Decoder
	r   bytes.Reader
}

// Exceeded ends a stream whose client has spent its token budget.
type Exceeded struct {
	Limit      int64
	Window     time.Duration
	RetryAfter time.Duration
}

func (e *Exceeded) Error() string {
	return fmt.Sprintf("%s; retry in %ds", e.Limited(), ceilSeconds(e.RetryAfter))
}

// Limited says which budget was spent: "token budget exceeded: 50 tokens
// per minute".
func (e *Exceeded) Limited() string {
	return "token budget exceeded: " + DescribeRate(e.Limit, e.Window, "token")
}

// HasTokens tells whether the limit has a token budget.
func (l *Limiter) HasTokens() bool { return l.tokens.Limit > 0 }

// Reserve takes what a request may cost from key's token budget, before the
// request goes upstream. It returns the request's Tab, and the Decision
// that SetTokenHeaders tells the client: refused when the budget is spent,
// and then nothing is reserved. Without a token budget it returns a nil Tab
// and a zero Decision. A request that nothing bounds reserves the whole
// budget, which keeps its client's other requests out until it ends.
//
// When the store fails, on_store_error decides; a request let through then
// has no Tab.
func (l *Limiter) Reserve(ctx context.Context, key string, c Cost) (*Tab, Decision) {
	if !l.HasTokens() {
		return nil, Decision{}
	}
	budget := l.tokens.Limit
	perDelta := int64(max(c.N, 1))
	prompt := promptTokens(c.PromptChars)
	want := budget
	if c.MaxTokens > 0 {
		want = min(prompt+perDelta*int64(c.MaxTokens), budget)
	}
	k := l.tokenNS + key
	n, err := l.addTokens(ctx, k, want)
	if err != nil {
		return nil, l.fallbackFor(l.tokens, err)
	}
	d := Decision{Limit: budget, Remaining: max(budget-n.count, 0), Reset: n.end, Window: l.tokens.Period}
	before := n.count - want
	if before >= budget {
		// A refused request spends nothing.
		l.giveBack(k, want, n.until)
		d.Remaining = 0
		d.RetryAfter = time.Duration(max(ceilSeconds(time.Until(n.end)), 1)) * time.Second
		return nil, d
	}
	d.Allowed = true
	t := &Tab{l: l, key: k, perDelta: perDelta, reserved: want, allowance: budget - max(before, 0),
		used: prompt, until: n.until}
	t.limit = min(t.reserved, t.allowance)
	return t, d
}

// Count notes one chunk of the stream: a delta, the upstream's usage, the
// finish. Once the stream has used more than its client's budget allows, it
// returns an *Exceeded, and the stream must end. A stream that finished is
// never cut: its usage, reported after the finish, is charged all the same.
// Count calls the store only when the count passes what the request may
// use without asking, and allocates nothing.
func (t *Tab) Count(c *chunk.Chunk) error {
	if t == nil {
		return nil
	}
	if c.HasDelta() {
		t.used += t.perDelta
	}
	if c.Usage != nil {
		if n, ok := t.reported(c.Usage); ok {
			t.used = n
		}
	}
	if c.FinishReason != "" {
		t.finished = true
	}
	if t.used <= t.limit || t.finished {
		return nil
	}
	return t.over()
}

// over runs when the count passed the request's limit. The store is asked
// again: the client's other requests may have settled for less than they
// reserved, and a request past its own reservation (an upstream that
// ignores max_tokens, reasoning that max_tokens does not bound) reserves
// what it used and as much again, so that the others see it.
func (t *Tab) over() error {
	var step int64
	if t.used > t.reserved {
		step = min(2*t.used, t.l.tokens.Limit) - t.reserved
	}
	n, err := t.l.addTokens(context.Background(), t.key, step)
	if err == nil {
		t.reserved += step
		t.allowance = t.l.tokens.Limit - max(n.count-t.reserved, 0)
		t.limit = min(t.reserved, t.allowance)
	} else {
		// Without the store, the request keeps to what it was granted.
		t.limit = t.allowance
	}
	if t.used <= t.limit {
		return nil
	}
	end := n.end
	if err != nil {
		end = t.until
	}
	return &Exceeded{Limit: t.l.tokens.Limit, Window: t.l.tokens.Period,
		RetryAfter: time.Duration(max(ceilSeconds(time.Until(end)), 1)) * time.Second}
}

// Used is what the request has used so far, as Settle would charge it.
func (t *Tab) Used() int64 {
	if t == nil {
		return 0
	}
	return t.used
}

// Refund makes the request cost nothing, for one that never reached an
// upstream that generated anything (every upstream refused it).
func (t *Tab) Refund() {
	if t != nil {
		t.used = 0
	}
}

// Settle trues the reservation up to what the request used, when it has
// ended. Later calls do nothing.
func (t *Tab) Settle() {
	if t == nil || t.l == nil {
		return
	}
	delta := t.used - t.reserved
	l, k := t.l, t.key
	t.l = nil
	if delta > 0 {
		_, _ = l.addTokens(context.Background(), k, delta)
	} else if delta < 0 {
		l.giveBack(k, -delta, t.until)
	}
}

// giveBack returns n unused tokens to the counter k, unless its window may
// have ended: the tokens were reserved in that window, and a counter
// created afresh would start below zero.
func (l *Limiter) giveBack(k string, n int64, until time.Time) {
	if time.Now().Before(until) {
		_, _ = l.addTokens(context.Background(), k, -n)
	}
}

// tokenCount is a token counter after an addition.
type tokenCount struct {
	count int64
	// end is when the window ends at the latest, until the earliest: the
	// memory store knows it to the nanosecond, redis's answer to a second.
	end, until time.Time
}

// addTokens adds n (which may be negative or 0) to the token counter k.
func (l *Limiter) addTokens(ctx context.Context, k string, n int64) (tokenCount, error) {
	if l.mem != nil {
		count, end := l.mem.cache.Increment(k, n, l.tokens.Period)
		return tokenCount{count, end, end}, nil
	}
	sctx, cancel := context.WithTimeout(ctx, l.timeout)
	lc, err := l.store.Increment(sctx, k, n, limiter.Rate{Period: l.tokens.Period, Limit: countAll})
	cancel()
	if err != nil {
		err = fmt.Errorf("rate limit store: %w", err)
		if ctx.Err() == nil {
			l.storeFailed(err)
		}
		return tokenCount{}, err
	}
	l.storeWorks()
	return tokenCount{count: countAll - lc.Remaining, end: windowEnd(lc, l.tokens.Period), until: time.Unix(lc.Reset, 0)}, nil
}

// reported reads prompt_tokens + completion_tokens from a usage object (or
// total_tokens when it has neither), reusing one decoder for the stream.
func (t *Tab) reported(usage []byte) (int64, bool) {
	t.r.Reset(usage)
	if t.dec == nil {
		t.dec = jsontext.NewDecoder(&t.r, usageOptions...)
	} else {
		t.dec.Reset(&t.r, usageOptions...)
	}
	return readUsage(t.dec)
}

// usageOptions are the chunk parser's: lenient where upstreams are sloppy.
// Not tracking names for duplicates also keeps the decoder from allocating.
var usageOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}

// readUsage walks a usage object for its token counts.
func readUsage(d *jsontext.Decoder) (int64, bool) {
	if d.PeekKind() != '{' {
		return 0, false
	}
	if _, err := d.ReadToken(); err != nil {
		return 0, false
	}
	var prompt, completion, total int64
	found, foundTotal := false, false
	for d.PeekKind() == '"' {
		name, err := d.ReadValue()
		if err != nil {
			return 0, false
		}
		var dst *int64
		switch string(name) { // no allocation: the compiler compares in place
		case `"prompt_tokens"`:
			dst, found = &prompt, true
		case `"completion_tokens"`:
			dst, found = &completion, true
		case `"total_tokens"`:
			dst, foundTotal = &total, true
		}
		v, err := d.ReadValue()
		if err != nil {
			return 0, false
		}
		if dst != nil {
			n, ok := parseCount(v)
			if !ok {
				return 0, false
			}
			*dst = n
		}
	}
	switch {
	case found:
		return prompt + completion, true
	case foundTotal:
		return total, true
	}
	return 0, false
}

// parseCount reads a JSON number that is a token count: a non-negative
// integer, with nothing after it.
func parseCount(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 15 {
		return 0, false
	}
	var n int64
	for _, b := range v {
		if b < '0' || b > '9' {
			return 0, false
		}
		n = n*10 + int64(b-'0')
	}
	return n, true
}

// fallbackFor is the on_store_error decision for the rate r.
func (l *Limiter) fallbackFor(r limiter.Rate, err error) Decision {
	d := l.fallback(err)
	d.Limit, d.Window = r.Limit, r.Period
	return d
}
