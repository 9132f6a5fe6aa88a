package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// events records what an Attempts told its observer.
type events []string

func (e *events) Opened(m *Member) { *e = append(*e, "open "+m.Name) }
func (e *events) Failed(m *Member, next bool) {
	*e = append(*e, fmt.Sprintf("fail %s next=%v", m.Name, next))
}

// statusPool is a pool of upstreams that answer with the given statuses
// (200 streams one chunk), in the first policy's order.
func statusPool(t *testing.T, statuses ...int) *Pool {
	p := &Pool{Policy: First, MaxFails: 1, CoolDown: time.Minute}
	for i, code := range statuses {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			if code != http.StatusOK {
				w.Header().Set("Retry-After", fmt.Sprint(10*(i+1)))
				w.WriteHeader(code)
				return
			}
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n")
		})
		c.Name = string(rune('a' + i))
		p.Members = append(p.Members, &Member{Client: c})
	}
	return p
}

func TestAttemptsWalk(t *testing.T) {
	req, _ := FromPrompt("hi", "m")
	for _, tt := range []struct {
		statuses []int
		want     string // what the observer heard
		status   int    // of the error; 0 when a stream opened
	}{
		{[]int{502, 200}, "fail a next=true,open b", 0},
		{[]int{400, 200}, "fail a next=false", 400},
		{[]int{502, 503}, "fail a next=true,fail b next=false", 502},
		// Every one rate limited: the first to free up sets the wait.
		{[]int{429, 429}, "fail a next=true,fail b next=false", 429},
	} {
		var heard events
		st, err := statusPool(t, tt.statuses...).Attempt(time.Now(), "m", 0, &heard).Open(context.Background(), req)
		var e *chunk.Error
		switch {
		case tt.status == 0 && err != nil, tt.status != 0 && (!errors.As(err, &e) || e.Status != tt.status):
			t.Errorf("%v: Open = %v, want status %d", tt.statuses, err, tt.status)
		case tt.status == 429 && e.RetryAfter != "10":
			t.Errorf("%v: Retry-After %q, want the shortest wait, 10", tt.statuses, e.RetryAfter)
		}
		if st != nil {
			st.Close()
		}
		if got := strings.Join(heard, ","); got != tt.want {
			t.Errorf("%v: heard %s, want %s", tt.statuses, got, tt.want)
		}
	}
}

// A stream that breaks before any content fails over; once anything
// reached the client, or when the request's context ended, it does not.
func TestAttemptsRetry(t *testing.T) {
	req, _ := FromPrompt("hi", "m")
	broken := errors.New("connection reset")
	for _, tt := range []struct {
		delivered, cancelled bool
		want                 bool
	}{
		{false, false, true},
		{true, false, false},
		{false, true, false},
	} {
		var heard events
		run := statusPool(t, 200, 200).Attempt(time.Now(), "m", 0, &heard)
		ctx, cancel := context.WithCancel(context.Background())
		st, err := run.Open(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		if tt.cancelled {
			cancel()
		}
		if got := run.Retry(ctx, broken, tt.delivered); got != tt.want {
			t.Errorf("Retry(delivered=%v, cancelled=%v) = %v", tt.delivered, tt.cancelled, got)
		}
		cancel()
	}
}
