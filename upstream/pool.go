package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// Policy names how a Pool picks the upstream a request tries first.
type Policy string

// The policies.
const (
	RoundRobin Policy = "round_robin"
	LeastConn  Policy = "least_conn" // fewest open streams
	Random     Policy = "random"
	First      Policy = "first"    // the first healthy one, in configured order
	Weighted   Policy = "weighted" // smooth weighted round robin
)

// ParsePolicy checks a policy name.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case RoundRobin, LeastConn, Random, First, Weighted:
		return p, nil
	}
	return "", fmt.Errorf("unknown lb_policy %q: want round_robin, least_conn, random, first or weighted", s)
}

// Member is one upstream of a Pool with its health.
type Member struct {
	*Client
	Weight int               // for the weighted policy; <1 counts as 1
	Models map[string]string // model renames for this upstream

	open      atomic.Int64 // streams open now
	fails     atomic.Int32 // consecutive failures
	downUntil atomic.Int64 // unix nanoseconds; skipped until then
	// parked maps a model to the unix nanoseconds until which this
	// upstream is skipped for it, after a 429: quotas are per model, so
	// one model's spent quota never locks out the others.
	parked  sync.Map
	current int // smooth weighted round robin state, under Pool.mu
}

// Open opens a stream on this member, renaming the model if it says so,
// and counts it as open until the stream is closed.
func (m *Member) Open(ctx context.Context, req *Request) (*Stream, error) {
	if to, ok := m.Models[req.Model]; ok {
		req = req.WithModel(to)
	}
	s, err := m.Client.Open(ctx, req)
	if err != nil {
		return nil, err
	}
	m.open.Add(1)
	s.onClose = func() { m.open.Add(-1) }
	return s, nil
}

// Healthy tells whether m may be tried at t for any model.
func (m *Member) Healthy(t time.Time) bool { return t.UnixNano() >= m.downUntil.Load() }

// parkedUntil is when m's 429 for model ends, 0 if it is not parked for it
// at t. An ended park is dropped, so the map holds only live ones.
func (m *Member) parkedUntil(model string, t time.Time) int64 {
	v, ok := m.parked.Load(model)
	if !ok {
		return 0
	}
	until := v.(int64)
	if t.UnixNano() >= until {
		m.parked.CompareAndDelete(model, v)
		return 0
	}
	return until
}

// Pool is a set of upstreams with a balancing policy and passive health:
// an upstream that keeps failing is skipped for a cool-down, one that
// answered 429 for a model is skipped for that model for its Retry-After.
type Pool struct {
	Members  []*Member
	Policy   Policy
	MaxFails int           // consecutive failures before a cool-down; <1 means 1
	CoolDown time.Duration // how long a failing upstream is skipped; 0 means 10s

	mu sync.Mutex
	rr atomic.Uint64
}

// ErrAllDown is wrapped by the error Candidates' callers get when no
// upstream may be tried.
var ErrAllDown = errors.New("every upstream is down")

// Candidates lists the members that may answer a request for model, in the
// order it tries them: the policy's choice first, then the others in
// configured order from it. It returns at most tries members (all of them
// if tries < 1).
func (p *Pool) Candidates(now time.Time, model string, tries int) []*Member {
	healthy := make([]*Member, 0, len(p.Members))
	for _, m := range p.Members {
		if m.Healthy(now) && m.parkedUntil(model, now) == 0 {
			healthy = append(healthy, m)
		}
	}
	if len(healthy) == 0 {
		return nil
	}
	start := 0
	switch p.Policy {
	case LeastConn:
		for i, m := range healthy {
			if m.open.Load() < healthy[start].open.Load() {
				start = i
			}
		}
	case Random:
		start = rand.IntN(len(healthy))
	case First:
	case Weighted:
		start = p.smoothWeighted(healthy)
	default:
		start = int(p.rr.Add(1)-1) % len(healthy)
	}
	order := append(healthy[start:len(healthy):len(healthy)], healthy[:start]...)
	if tries > 0 && tries < len(order) {
		order = order[:tries]
	}
	return order
}

// smoothWeighted is nginx's smooth weighted round robin: each pick adds
// every weight to its member's current value and takes the largest, which
// then gives back the total. Picks interleave instead of bunching.
func (p *Pool) smoothWeighted(ms []*Member) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	total, best := 0, 0
	for i, m := range ms {
		w := max(m.Weight, 1)
		m.current += w
		total += w
		if m.current > ms[best].current {
			best = i
		}
	}
	ms[best].current -= total
	return best
}

// Succeeded records a stream that delivered its first chunk.
func (p *Pool) Succeeded(m *Member) { m.fails.Store(0) }

// Failed records a failure of m for a request for model: a 429 parks m for
// that model for its Retry-After, and enough other failures in a row park
// it for a cool-down. It reports whether the failure was the upstream's
// (MayFailOver): request errors (4xx) are the client's and leave m alone.
func (p *Pool) Failed(m *Member, model string, err error, now time.Time) bool {
	if !MayFailOver(err, false) {
		return false
	}
	// With one upstream there is nothing to fail over to: parking it would
	// only turn its recovered answers into ours, and its 429s are often
	// for one model or key, not for the whole upstream.
	alone := len(p.Members) < 2
	var e *chunk.Error
	if errors.As(err, &e) && e.Status == http.StatusTooManyRequests {
		if alone {
			return true
		}
		wait := retryAfter(e.RetryAfter, now)
		if wait <= 0 {
			wait = p.coolDown()
		}
		m.parked.Store(model, now.Add(wait).UnixNano())
		return true
	}
	if int(m.fails.Add(1)) >= max(p.MaxFails, 1) && !alone {
		m.downUntil.Store(now.Add(p.coolDown()).UnixNano())
	}
	return true
}

// MarkHealth sets m's health from an active check.
func (p *Pool) MarkHealth(m *Member, ok bool, now time.Time, interval time.Duration) {
	if ok {
		m.downUntil.Store(0)
		m.fails.Store(0)
		return
	}
	m.downUntil.Store(now.Add(max(interval, p.coolDown())).UnixNano())
}

// AllDown is the answer when no upstream may be tried for model: 429 with
// the shortest wait when every one is parked for it, else 502.
func (p *Pool) AllDown(now time.Time, model string) *chunk.Error {
	var soonest int64
	for _, m := range p.Members {
		until := m.parkedUntil(model, now)
		if until == 0 {
			return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream, Message: ErrAllDown.Error()}
		}
		if soonest == 0 || until < soonest {
			soonest = until
		}
	}
	wait := time.Duration(soonest - now.UnixNano())
	secs := int64((wait + time.Second - 1) / time.Second)
	return &chunk.Error{Status: http.StatusTooManyRequests, Type: chunk.TypeRateLimit,
		Message: "every upstream is rate limited for " + strconv.Quote(model), RetryAfter: strconv.FormatInt(max(secs, 1), 10)}
}

func (p *Pool) coolDown() time.Duration {
	if p.CoolDown <= 0 {
		return 10 * time.Second
	}
	return p.CoolDown
}

// retryAfter reads a Retry-After value: seconds, or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now)
	}
	return 0
}
