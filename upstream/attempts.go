package upstream

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// MayFailOver is the failover rule, the one place that decides whether
// another upstream may answer a request after err. Never once anything of
// this upstream's answer reached the client: the client would read two
// answers spliced. Before that, only for the upstream's own failures:
// unreachable, a 5xx or a 429, a stream that broke, a first chunk too late.
// Not for a request error the upstream explained (a 4xx), an error event it
// sent in its stream (status 0), or the request's own idle or total limit.
func MayFailOver(err error, delivered bool) bool {
	if delivered {
		return false
	}
	var e *chunk.Error
	if errors.As(err, &e) {
		return e.Status == http.StatusTooManyRequests || e.Status >= 500
	}
	return !errors.Is(err, ErrIdleTimeout) && !errors.Is(err, ErrTotalTimeout) &&
		!errors.Is(err, context.Canceled)
}

// Observer hears what an Attempts does, for logs and metrics.
type Observer interface {
	// Opened is called when m answered and streams now.
	Opened(m *Member)
	// Failed is called when m failed; next tells whether another
	// upstream is tried.
	Failed(m *Member, next bool)
}

// Attempts walks one request through the pool's candidates, in the order
// Candidates gives them, failing over by MayFailOver.
type Attempts struct {
	pool   *Pool
	model  string // the model the request names, as the pool parks it
	obs    Observer
	cands  []*Member
	next   int
	member *Member // the one streaming now
	ok     bool    // member has answered with a chunk
}

// Attempt starts the walk of one request for model that arrived at now,
// over at most tries upstreams (all of them if tries < 1).
func (p *Pool) Attempt(now time.Time, model string, tries int, obs Observer) *Attempts {
	return &Attempts{pool: p, model: model, obs: obs, cands: p.Candidates(now, model, tries)}
}

// Member is the upstream streaming now, nil before one answered.
func (a *Attempts) Member() *Member { return a.member }

// Answered records that the streaming upstream delivered, which ends its
// run of consecutive failures.
func (a *Attempts) Answered() {
	if !a.ok {
		a.ok = true
		a.pool.Succeeded(a.member)
	}
}

// Open opens a stream on the next candidate that answers, recording the
// failures of those that do not. Once every candidate failed, it returns
// the pool's all-down answer if nothing was tried, else the last error:
// when every upstream is rate limited, a 429 in the words of the last one
// that refused, with the wait until the first frees up.
func (a *Attempts) Open(ctx context.Context, req *Request) (*Stream, error) {
	return walk(a, ctx, func(m *Member) (*Stream, error) { return m.Open(ctx, req) })
}

// walk is Open for any kind of call: open asks one member.
func walk[T any](a *Attempts, ctx context.Context, open func(*Member) (T, error)) (T, error) {
	var none T
	var last error
	for a.next < len(a.cands) {
		m := a.cands[a.next]
		a.next++
		st, err := open(m)
		if err == nil {
			a.member, a.ok = m, false
			a.obs.Opened(m)
			return st, nil
		}
		if ctx.Err() != nil {
			return none, context.Cause(ctx)
		}
		last = err
		if !a.failed(m, err, false) && a.next < len(a.cands) {
			return none, err // the upstream said why: another would say the same
		}
	}
	now := time.Now()
	if last == nil {
		return none, a.pool.AllDown(now, a.model)
	}
	var e *chunk.Error
	if errors.As(last, &e) && e.Status == http.StatusTooManyRequests {
		if all := a.pool.AllDown(now, a.model); all.Status == http.StatusTooManyRequests {
			limited := *e
			limited.RetryAfter = all.RetryAfter
			return none, &limited
		}
	}
	return none, last
}

// Retry records that the streaming upstream failed with err, and tells
// whether another may be opened: by MayFailOver, while the request is
// still wanted (ctx) and a candidate is left.
func (a *Attempts) Retry(ctx context.Context, err error, delivered bool) bool {
	if a.member == nil || ctx.Err() != nil {
		return false
	}
	return a.failed(a.member, err, delivered)
}

// failed records m's failure in the pool's health, tells the observer, and
// reports whether the next candidate may be tried.
func (a *Attempts) failed(m *Member, err error, delivered bool) bool {
	next := MayFailOver(err, delivered)
	if next {
		a.pool.Failed(m, a.model, err, time.Now())
		next = a.next < len(a.cands)
	}
	a.obs.Failed(m, next)
	return next
}
