package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/ulule/limiter/v3"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/internal/redistest"
)

var (
	delta    = &chunk.Chunk{HasChoices: true, Content: json.RawMessage(`"tok"`)}
	finish   = &chunk.Chunk{HasChoices: true, FinishReason: "stop"}
	nothing  = &chunk.Chunk{HasChoices: true}
	usageFor = func(prompt, completion string) *chunk.Chunk {
		return &chunk.Chunk{Usage: json.RawMessage(`{"prompt_tokens":` + prompt + `,"completion_tokens":` + completion + `,"total_tokens":0}`)}
	}
)

// stream counts deltas into t until it is cut or n were sent, and returns
// how many were delivered (counted without being cut).
func stream(t *Tab, n int) (delivered int, cut *Exceeded) {
	for range n {
		if err := t.Count(delta); err != nil {
			if !errors.As(err, &cut) {
				panic(err)
			}
			return delivered, cut
		}
		delivered++
	}
	return delivered, nil
}

// The example: 50 tokens a minute. The first stream (40 tokens)
// passes; the second is cut about ten tokens later; the third is refused
// before it starts, with the wait until the window ends.
func TestTokenBudget(t *testing.T) {
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			c := Config{Rate: "100-M", Tokens: "50-M"}
			if store == "redis" {
				c.Store, c.Prefix = redistest.Start(t).URL(), "t"
			}
			l, _ := newRedisLimiter(t, c)
			ctx := context.Background()
			start := time.Now()

			tab, d := l.Reserve(ctx, "k", Cost{PromptChars: 8}) // 2 tokens of prompt, nothing bounds it
			if !d.Allowed || d.Limit != 50 || d.Remaining != 0 || d.Window != time.Minute || tab == nil {
				t.Fatalf("first: %+v", d)
			}
			if n, cut := stream(tab, 38); n != 38 || cut != nil {
				t.Fatalf("first stream: %d delivered, cut %v", n, cut)
			}
			for _, c := range []*chunk.Chunk{finish, usageFor("2", "38")} {
				if err := tab.Count(c); err != nil {
					t.Fatal(err)
				}
			}
			tab.Settle()
			tab.Settle() // once only

			tab, d = l.Reserve(ctx, "k", Cost{PromptChars: 8, MaxTokens: 100})
			if !d.Allowed || d.Remaining != 0 {
				t.Fatalf("second: %+v", d)
			}
			n, cut := stream(tab, 1000)
			if n != 8 || cut == nil || cut.Limit != 50 {
				t.Fatalf("second stream: %d delivered (want 8: 40 used, 2 of prompt), cut %v", n, cut)
			}
			if retry := cut.RetryAfter; retry < 50*time.Second || retry > time.Minute {
				t.Errorf("cut: retry after %v", retry)
			}
			if want := "token budget exceeded: 50 tokens per minute; retry in "; !strings.HasPrefix(cut.Error(), want) {
				t.Errorf("message %q", cut.Error())
			}
			if tab.Used() != 11 {
				t.Errorf("used %d, want 11: 2 of prompt, 8 delivered, and the one that crossed, which the upstream generated", tab.Used())
			}
			tab.Settle()

			tab, d = l.Reserve(ctx, "k", Cost{PromptChars: 1, MaxTokens: 1})
			wait := time.Minute - time.Since(start)
			if d.Allowed || tab != nil || d.Remaining != 0 || d.RetryAfter < wait-time.Second || d.RetryAfter > wait+time.Second {
				t.Fatalf("third: %+v, want refused with a wait of about %v", d, wait)
			}
			// The refusal reserved nothing: another client, the same.
			if _, d := l.Reserve(ctx, "other", Cost{MaxTokens: 10}); !d.Allowed || d.Remaining != 40 {
				t.Errorf("another client: %+v", d)
			}
		})
	}
}

// Requests of one client in parallel, whose upstream generates far more
// than they reserved, overdraw the budget by one reservation at most: a
// request past its reservation reserves more, where the others see it.
func TestTokenBudgetParallel(t *testing.T) {
	for _, honest := range []bool{true, false} {
		l := newTest(t, Config{Rate: "100-M", Tokens: "100-M"})
		const want = 20 // MaxTokens, and 1 token of prompt
		var total atomic.Int64
		var admitted atomic.Int32
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				tab, d := l.Reserve(context.Background(), "k", Cost{PromptChars: 4, MaxTokens: want})
				if !d.Allowed {
					return
				}
				admitted.Add(1)
				n := want
				if !honest {
					n = 60 // an upstream that ignores max_tokens
				}
				for range n {
					if tab.Count(delta) != nil {
						break
					}
					time.Sleep(100 * time.Microsecond) // the others' turn
				}
				total.Add(tab.Used())
				tab.Settle()
			})
		}
		wg.Wait()
		t.Logf("honest %v: %d requests admitted, %d tokens used", honest, admitted.Load(), total.Load())
		if got := total.Load(); got > 100+want+1 || got < 80 {
			t.Errorf("honest %v: %d requests used %d tokens of 100, want at most one reservation (%d) over", honest, admitted.Load(), got, want+1)
		}
	}
}

func TestTokenBudgetSettles(t *testing.T) {
	l := newTest(t, Config{Rate: "100-M", Tokens: "1000-M"})
	ctx := context.Background()
	remaining := func() int64 {
		t.Helper()
		tab, d := l.Reserve(ctx, "k", Cost{MaxTokens: 1})
		tab.Refund()
		tab.Settle()
		return d.Remaining + 1
	}
	tab, d := l.Reserve(ctx, "k", Cost{PromptChars: 40, MaxTokens: 100, N: 2})
	if d.Remaining != 1000-10-200 {
		t.Fatalf("reserved %d, want prompt 10 and 2 choices of 100", 1000-d.Remaining)
	}
	stream(tab, 5) // 10 tokens, 2 a delta
	if tab.Used() != 20 {
		t.Errorf("used %d", tab.Used())
	}
	if r := remaining(); r != 1000-210 {
		t.Errorf("while streaming: remaining %d, want the reservation held", r)
	}
	tab.Count(usageFor("12", "30"))
	tab.Count(nothing)
	tab.Settle()
	if r := remaining(); r != 1000-42 {
		t.Errorf("settled: remaining %d, want the reported usage charged", r)
	}
	// A request that every upstream refused costs nothing.
	tab, _ = l.Reserve(ctx, "k", Cost{PromptChars: 400, MaxTokens: 100})
	tab.Refund()
	tab.Settle()
	if r := remaining(); r != 1000-42 {
		t.Errorf("refunded: remaining %d", r)
	}
	// A finished stream is never cut, though its usage crosses the budget.
	tab, _ = l.Reserve(ctx, "k", Cost{MaxTokens: 10})
	for _, c := range []*chunk.Chunk{delta, finish, usageFor("500", "600")} {
		if err := tab.Count(c); err != nil {
			t.Fatalf("cut after the finish: %v", err)
		}
	}
	tab.Settle()
	if _, d := l.Reserve(ctx, "k", Cost{MaxTokens: 1}); d.Allowed {
		t.Errorf("allowed after its usage spent the budget: %+v", d)
	}
	// No budget: nothing to count.
	l = newTest(t, Config{Rate: "1-M"})
	if tab, d := l.Reserve(ctx, "k", Cost{}); tab != nil || d != (Decision{}) || tab.Count(delta) != nil {
		t.Errorf("no budget: %v %+v", tab, d)
	}
}

// Two Limiters on one redis, as two Caddy instances, share one budget.
func TestTokenBudgetRedisShared(t *testing.T) {
	url := redistest.Start(t).URL()
	a, _ := newRedisLimiter(t, Config{Rate: "100-M", Tokens: "50-M", Store: url, Prefix: "p"})
	b, _ := newRedisLimiter(t, Config{Rate: "100-M", Tokens: "50-M", Store: url, Prefix: "p"})
	ctx := context.Background()
	tab, _ := a.Reserve(ctx, "k", Cost{MaxTokens: 30})
	stream(tab, 30)
	tab.Settle()
	tab, d := b.Reserve(ctx, "k", Cost{MaxTokens: 30})
	if !d.Allowed || d.Remaining != 0 {
		t.Fatalf("second instance: %+v", d)
	}
	if n, cut := stream(tab, 30); n != 20 || cut == nil {
		t.Errorf("second instance: %d delivered, cut %v; want 20", n, cut)
	}
	tab.Settle()
	if _, d := a.Reserve(ctx, "k", Cost{MaxTokens: 1}); d.Allowed {
		t.Errorf("first instance after the second spent the budget: %+v", d)
	}
}

func (f *flakyStore) Increment(ctx context.Context, key string, n int64, rate limiter.Rate) (limiter.Context, error) {
	if f.fail.Load() {
		return limiter.Context{}, errDown
	}
	return f.Store.Increment(ctx, key, n, rate)
}

func TestTokenBudgetStoreError(t *testing.T) {
	for _, policy := range []string{"allow", "deny"} {
		l, fs, _ := newFlaky(t, Config{Rate: "5-M", Tokens: "50-M", OnStoreError: policy})
		tab, d := l.Reserve(context.Background(), "k", Cost{MaxTokens: 10})
		if !d.Allowed || tab == nil {
			t.Fatalf("%s, healthy: %+v", policy, d)
		}
		fs.fail.Store(true)
		// A stream under way keeps to what it was granted.
		if n, cut := stream(tab, 100); n != 50 || cut == nil {
			t.Errorf("%s: %d delivered in an outage, want the 50 granted", policy, n)
		}
		tab.Settle()
		tab, d = l.Reserve(context.Background(), "k", Cost{MaxTokens: 10})
		if tab != nil || d.Allowed != (policy == "allow") || d.Limit != 50 || d.Remaining != -1 || d.StoreError == nil {
			t.Errorf("%s, failing: %v %+v", policy, tab, d)
		}
	}
}

func TestSetTokenHeaders(t *testing.T) {
	now := time.Now()
	h := http.Header{}
	Decision{Allowed: true, Limit: 10, Remaining: 3, Reset: now.Add(42 * time.Second), Window: time.Minute}.SetHeaders(h, now)
	Decision{Allowed: true, Limit: 50000, Remaining: 31000, Reset: now.Add(90 * time.Second), Window: time.Hour}.SetTokenHeaders(h, now)
	for k, v := range map[string]string{
		"x-ratelimit-limit-tokens":     "50000",
		"x-ratelimit-remaining-tokens": "31000",
		"x-ratelimit-reset-tokens":     "1m30s",
		"RateLimit-Policy":             `"default";q=10;w=60, "tokens";q=50000;w=3600`,
		"RateLimit":                    `"default";r=3;t=42, "tokens";r=31000;t=90`,
		"X-RateLimit-Remaining":        "3",
		"Retry-After":                  "",
	} {
		if got := h.Values(k); strings.Join(got, "|") != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	h = http.Header{}
	Decision{Limit: 50, Remaining: 0, Reset: now.Add(41500 * time.Millisecond), Window: time.Minute, RetryAfter: 42 * time.Second}.SetTokenHeaders(h, now)
	if h.Get("Retry-After") != "42" || h.Get("x-ratelimit-reset-tokens") != "42s" || h.Get("RateLimit") != `"tokens";r=0;t=42` {
		t.Errorf("refused: %v", h)
	}
}

func TestReadUsage(t *testing.T) {
	for in, want := range map[string]int64{
		`{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}`:                                                                            42,
		`{"prompt_tokens":12,"completion_tokens":30,"total_tokens":99}`:                                                                            42,
		`{"completion_tokens_details":{"reasoning_tokens":9},"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":1},"prompt_tokens":1}`: 4,
		`{"total_tokens":7}`:                    7,
		`{"completion_tokens":5}`:               5,
		`{"prompt_tokens":1.5}`:                 -1,
		`{"prompt_tokens":-1}`:                  -1,
		`{"prompt_tokens":"3"}`:                 -1,
		`{"cached":1}`:                          -1,
		`[1]`:                                   -1,
		`{"prompt_tokens":1,"prompt_tokens":2}`: 2,
	} {
		got, ok := new(Tab).reported([]byte(in))
		if !ok {
			got = -1
		}
		if got != want {
			t.Errorf("%s: %d, want %d", in, got, want)
		}
	}
}

// FuzzReadUsage: what readUsage reads agrees with encoding/json.
func FuzzReadUsage(f *testing.F) {
	for _, s := range []string{`{"prompt_tokens":12,"completion_tokens":30}`, `{"total_tokens":7,"x":[{"prompt_tokens":3}]}`, `{"prompt_tokens":1e3}`, `{`, `{"a":"\"}"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := new(Tab).reported(data)
		if !ok {
			return
		}
		var u map[string]json.RawMessage
		if err := json.Unmarshal(data, &u); err != nil {
			if jsontext.Value(data).IsValid() {
				t.Fatalf("%s: read %d, but encoding/json says %v", data, got, err)
			}
			return // duplicate names or invalid UTF-8, which upstreams send and readUsage allows
		}
		var p, c, tot int64
		_, hasP := u["prompt_tokens"]
		_, hasC := u["completion_tokens"]
		json.Unmarshal(u["prompt_tokens"], &p)
		json.Unmarshal(u["completion_tokens"], &c)
		json.Unmarshal(u["total_tokens"], &tot)
		want := tot
		if hasP || hasC {
			want = p + c
		}
		if got != want {
			t.Fatalf("%s: read %d, want %d", data, got, want)
		}
	})
}

// Counting a stream's chunks allocates nothing, usage reports included.
func TestCountAllocs(t *testing.T) {
	l := newTest(t, Config{Rate: "1-M", Tokens: "1000000000-D"})
	tab, _ := l.Reserve(context.Background(), "k", Cost{})
	usage := usageFor("1", "2")
	tab.Count(usage) // the decoder, once per stream
	if n := testing.AllocsPerRun(1000, func() {
		_ = tab.Count(delta)
		_ = tab.Count(usage)
	}); n != 0 {
		t.Errorf("%v allocations per chunk", n)
	}
}
