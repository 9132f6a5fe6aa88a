// Package ssetest reads event streams and serves a scripted chat stream,
// for the tests of resumable streams in caddymodule and e2e.
package ssetest

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Event is one event of an SSE body.
type Event struct{ ID, Name, Data string }

// Read reads up to max events (0: to the end) of an SSE body; comments,
// retry fields and events without data are skipped.
func Read(br *bufio.Reader, max int) []Event {
	var evs []Event
	var ev Event
	for max == 0 || len(evs) < max {
		line, err := br.ReadString('\n')
		if err != nil {
			return evs
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.Data != "" {
				evs = append(evs, ev)
			}
			ev = Event{}
		case strings.HasPrefix(line, "id: "):
			ev.ID = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.Name = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.Data = line[6:]
		}
	}
	return evs
}

// Words is what an Upstream of n chunks says from chunk from to chunk to:
// "w<from> ... w<to> ".
func Words(from, to int) string {
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "w%d ", i)
	}
	return b.String()
}

// Upstream streams a chat completion of n chunks, "w1 " to "wn ", one per
// gap, then its finish and [DONE]. It counts its requests, and those the
// proxy cancelled, noting when on Cancels.
type Upstream struct {
	*httptest.Server
	Requests, Cancelled atomic.Int32
	Cancels             chan time.Time
}

// NewUpstream starts an Upstream, closed when t ends.
func NewUpstream(t testing.TB, n int, gap time.Duration) *Upstream {
	u := &Upstream{Cancels: make(chan time.Time, 64)}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.Requests.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := 1; i <= n; i++ {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w%d \"}}]}\n\n", i)
			f.Flush()
			select {
			case <-r.Context().Done():
				u.Cancelled.Add(1)
				select {
				case u.Cancels <- time.Now():
				default:
				}
				return
			case <-time.After(gap):
			}
		}
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
	}))
	t.Cleanup(u.Close)
	return u
}
