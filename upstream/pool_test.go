package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

func testPool(policy Policy, weights ...int) *Pool {
	p := &Pool{Policy: policy, MaxFails: 2, CoolDown: time.Minute}
	for i, w := range weights {
		p.Members = append(p.Members, &Member{Client: &Client{BaseURL: string(rune('a' + i))}, Weight: w})
	}
	return p
}

func firsts(p *Pool, n int, now time.Time) string {
	s := ""
	for i := 0; i < n; i++ {
		s += p.Candidates(now, "", 0)[0].BaseURL
	}
	return s
}

func TestPolicies(t *testing.T) {
	now := time.Now()
	if got := firsts(testPool(RoundRobin, 1, 1, 1), 6, now); got != "abcabc" {
		t.Errorf("round_robin %s", got)
	}
	if got := firsts(testPool(First, 1, 1, 1), 3, now); got != "aaa" {
		t.Errorf("first %s", got)
	}
	if got := firsts(testPool(Weighted, 5, 1, 1), 7, now); got != "aabacaa" {
		t.Errorf("weighted %s, want nginx's smooth order aabacaa", got)
	}
	p := testPool(LeastConn, 1, 1, 1)
	p.Members[0].open.Store(2)
	p.Members[1].open.Store(1)
	p.Members[2].open.Store(3)
	if got := firsts(p, 2, now); got != "bb" {
		t.Errorf("least_conn %s", got)
	}
	seen := map[string]bool{}
	rp := testPool(Random, 1, 1, 1)
	for i := 0; i < 200; i++ {
		seen[rp.Candidates(now, "", 0)[0].BaseURL] = true
	}
	if len(seen) != 3 {
		t.Errorf("random picked only %v", seen)
	}
	// The rest follow in configured order, cut to the tries allowed.
	order := testPool(First, 1, 1, 1).Candidates(now, "", 2)
	if len(order) != 2 || order[0].BaseURL != "a" || order[1].BaseURL != "b" {
		t.Errorf("tries: %v", order)
	}
}

func TestPassiveHealth(t *testing.T) {
	now := time.Now()
	p := testPool(First, 1, 1)
	a := p.Members[0]
	boom := &chunk.Error{Status: http.StatusBadGateway}
	if !p.Failed(a, "m", boom, now) || !a.Healthy(now) {
		t.Fatal("one failure must not park it (max fails 2)")
	}
	p.Failed(a, "m", boom, now)
	if a.Healthy(now) || !a.Healthy(now.Add(time.Minute)) {
		t.Fatal("two failures park it for the cool-down")
	}
	if got := p.Candidates(now, "", 0); len(got) != 1 || got[0].BaseURL != "b" {
		t.Fatalf("parked upstream still a candidate: %v", got)
	}
	// Request errors are the client's: no failover, no mark.
	if p.Failed(p.Members[1], "m", &chunk.Error{Status: 400}, now) || !p.Members[1].Healthy(now) {
		t.Error("a 400 counted against the upstream")
	}
	// 429 parks it for its Retry-After, for that model alone.
	b := p.Members[1]
	if !p.Failed(b, "m", &chunk.Error{Status: 429, RetryAfter: "30"}, now) {
		t.Error("429 must fail over")
	}
	candidate := func(model string, at time.Time) bool {
		for _, m := range p.Candidates(at, model, 0) {
			if m == b {
				return true
			}
		}
		return false
	}
	if candidate("m", now.Add(29*time.Second)) {
		t.Error("429 not parked for its Retry-After")
	}
	if !candidate("other", now) || !b.Healthy(now) {
		t.Error("a 429 for one model parked the upstream for every model")
	}
	// Not all rate limited: 502.
	if e := p.AllDown(now, "m"); e.Status != 502 {
		t.Errorf("AllDown %+v", e)
	}
	p.Succeeded(a)
	p.Failed(a, "m", &chunk.Error{Status: 429, RetryAfter: "7"}, now)
	if e := p.AllDown(now, "m"); e.Status != 429 || e.RetryAfter != "7" {
		t.Errorf("all rate limited: %+v, want 429 with the shortest wait", e)
	}
	if e := p.AllDown(now, "other"); e.Status != 502 {
		t.Errorf("AllDown for a model nobody refused: %+v, want 502", e)
	}
	if !candidate("m", now.Add(30*time.Second)) {
		t.Error("429 parked past its Retry-After")
	}
}

func TestLoneUpstreamIsNeverParked(t *testing.T) {
	now := time.Now()
	p := testPool(RoundRobin, 1)
	for i := 0; i < 5; i++ {
		p.Failed(p.Members[0], "m", &chunk.Error{Status: 503}, now)
	}
	p.Failed(p.Members[0], "m", &chunk.Error{Status: 429, RetryAfter: "60"}, now)
	if !p.Members[0].Healthy(now) {
		t.Error("a lone upstream was parked: its recovery would be hidden")
	}
}

// The failover rule, for every kind of failure, before and after anything
// reached the client.
func TestMayFailOver(t *testing.T) {
	for _, tt := range []struct {
		err              error
		before, afterAny bool
	}{
		{&chunk.Error{Status: 502}, true, false},
		{&chunk.Error{Status: 504}, true, false},
		{&chunk.Error{Status: 429}, true, false},
		{&chunk.Error{Status: 400}, false, false},
		{&chunk.Error{Status: 404}, false, false},
		{&chunk.Error{Message: "an error event in the stream"}, false, false},
		{ErrFirstChunkTimeout, true, false},
		{ErrIdleTimeout, false, false},
		{ErrTotalTimeout, false, false},
		{context.Canceled, false, false},
		{errors.New("connection reset"), true, false},
		{io.ErrUnexpectedEOF, true, false},
	} {
		if got := MayFailOver(tt.err, false); got != tt.before {
			t.Errorf("MayFailOver(%v, nothing delivered) = %v", tt.err, got)
		}
		if got := MayFailOver(tt.err, true); got != tt.afterAny {
			t.Errorf("MayFailOver(%v, delivered) = %v", tt.err, got)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if d := retryAfter("12", now); d != 12*time.Second {
		t.Error(d)
	}
	if d := retryAfter(now.Add(90*time.Second).Format(http.TimeFormat), now); d != 90*time.Second {
		t.Error(d)
	}
	if d := retryAfter("soon", now); d != 0 {
		t.Error(d)
	}
}
