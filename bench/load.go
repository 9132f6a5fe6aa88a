package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// load is one run of the load generator: a number of workers, each
// streaming one completion after another until the run ends.
type load struct {
	URL     string // the chat-completions endpoint, with any ?format=
	Body    []byte // the request body
	Streams int    // concurrent streams
	Ramp    time.Duration
	// The measurement window: only what happens inside it is counted.
	From, To time.Time

	client *http.Client

	chunks    atomic.Int64 // stamped chunks received in the window
	completed atomic.Int64 // streams that ended with their done in the window
	started   atomic.Int64 // requests sent in the window
	added     histogram    // receive time minus the simulator's send stamp
	first     histogram    // the same, for each stream's first content chunk
	ttfb      histogram    // request sent to response headers

	mu     sync.Mutex
	errs   map[string]int
	nerrs  int
	active atomic.Int64 // streams open now
}

func newLoad(url string, body []byte, streams int) *load {
	t := &http.Transport{
		MaxIdleConns:        streams + 16,
		MaxIdleConnsPerHost: streams + 16,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		// Read straight from the socket: the generator must cost little.
		ReadBufferSize:  4 << 10,
		WriteBufferSize: 4 << 10,
	}
	return &load{URL: url, Body: body, Streams: streams, client: &http.Client{Transport: t}, errs: map[string]int{}}
}

// run holds l.Streams streams open until ctx ends, starting them evenly over
// l.Ramp.
func (l *load) run(ctx context.Context) {
	var wg sync.WaitGroup
	step := l.Ramp / time.Duration(max(l.Streams, 1))
	for i := range l.Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-time.After(step * time.Duration(i)):
			case <-ctx.Done():
				return
			}
			for ctx.Err() == nil {
				l.stream(ctx)
			}
		}()
	}
	wg.Wait()
	l.client.CloseIdleConnections()
}

func (l *load) inWindow(t time.Time) bool { return !t.Before(l.From) && t.Before(l.To) }

// stream runs one completion and records what it saw.
func (l *load) stream(ctx context.Context) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.URL, bytes.NewReader(l.Body))
	if err != nil {
		l.fail("building request: " + err.Error())
		return
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	counted := l.inWindow(start)
	if counted {
		l.started.Add(1)
	}
	resp, err := l.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			l.fail("request: " + trimErr(err))
			// Do not spin on a target that refuses connections.
			time.Sleep(100 * time.Millisecond)
		}
		return
	}
	defer resp.Body.Close()
	if counted {
		l.ttfb.add(time.Since(start))
	}
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
		l.fail("status " + strconv.Itoa(resp.StatusCode))
		time.Sleep(100 * time.Millisecond)
		return
	}
	l.active.Add(1)
	defer l.active.Add(-1)

	br := bufio.NewReaderSize(resp.Body, 4<<10)
	gotFirst := false
	for {
		line, err := br.ReadSlice('\n')
		now := time.Now()
		if len(line) > 0 {
			switch kind, stamp := parseLine(line); kind {
			case lineStamp:
				if l.inWindow(now) {
					l.chunks.Add(1)
					d := now.Sub(time.Unix(0, stamp))
					l.added.add(d)
					if !gotFirst {
						l.first.add(d)
					}
				}
				gotFirst = true
			case lineDone:
				if l.inWindow(now) {
					l.completed.Add(1)
				}
				io.Copy(io.Discard, br) // let the connection be reused
				return
			case lineError:
				l.fail("error signal: " + strings.TrimSpace(string(line)))
				return
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				l.fail("stream ended without its done: " + trimErr(err))
			}
			return
		}
	}
}

func (l *load) fail(why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nerrs++
	if len(l.errs) < 20 {
		l.errs[why]++
	}
}

// errors returns the error count and a summary of the first kinds seen.
func (l *load) errors() (int, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for why, n := range l.errs {
		fmt.Fprintf(&b, "%dx %s; ", n, why)
	}
	return l.nerrs, strings.TrimSuffix(b.String(), "; ")
}

func trimErr(err error) string {
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

type lineKind uint8

const (
	lineOther lineKind = iota
	lineStamp          // a chunk whose content is the simulator's send stamp
	lineDone           // the framing's end of a proper stream
	lineError          // the framing's error signal
)

var (
	contentKey = []byte(`"content":"`)
	doneOpenAI = []byte("data: [DONE]")
	doneSSE    = []byte("event: done")
	doneNDJSON = []byte(`{"done":true`)
	errSSE     = []byte("event: error")
	errData    = []byte(`data: {"error"`)
	errNDJSON  = []byte(`{"error"`)
)

// parseLine reads one line of any framing: the openai framing's and the
// upstream's own data lines, the sse framing's events and ndjson lines all
// carry the delta as "content":"<stamp> ".
func parseLine(line []byte) (lineKind, int64) {
	switch {
	case bytes.HasPrefix(line, doneOpenAI), bytes.HasPrefix(line, doneSSE), bytes.HasPrefix(line, doneNDJSON):
		return lineDone, 0
	case bytes.HasPrefix(line, errSSE), bytes.HasPrefix(line, errData), bytes.HasPrefix(line, errNDJSON):
		return lineError, 0
	}
	i := bytes.Index(line, contentKey)
	if i < 0 {
		return lineOther, 0
	}
	var n int64
	digits := 0
	for _, c := range line[i+len(contentKey):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
		digits++
	}
	if digits < 10 { // the role chunk's "" or text that is no stamp
		return lineOther, 0
	}
	return lineStamp, n
}

// histogram counts durations: 1 µs buckets up to 100 ms, 1 ms buckets up to
// 100 s. It is safe for concurrent use and allocation-free after creation.
type histogram struct {
	once    sync.Once
	fine    []atomic.Uint32 // 1 µs
	coarse  []atomic.Uint32 // 1 ms from 100 ms
	over    atomic.Uint32
	n       atomic.Int64
	maxNano atomic.Int64
}

const (
	fineBuckets   = 100_000 // µs
	coarseBuckets = 100_000 // ms
)

func (h *histogram) init() {
	h.once.Do(func() {
		h.fine = make([]atomic.Uint32, fineBuckets)
		h.coarse = make([]atomic.Uint32, coarseBuckets)
	})
}

func (h *histogram) add(d time.Duration) {
	h.init()
	if d < 0 {
		d = 0 // a clock step; the floor run shows the same
	}
	h.n.Add(1)
	for {
		m := h.maxNano.Load()
		if int64(d) <= m || h.maxNano.CompareAndSwap(m, int64(d)) {
			break
		}
	}
	switch us := d / time.Microsecond; {
	case us < fineBuckets:
		h.fine[us].Add(1)
	case d/time.Millisecond < coarseBuckets:
		h.coarse[d/time.Millisecond].Add(1)
	default:
		h.over.Add(1)
	}
}

// quantile returns the q-quantile (0..1), to its bucket's resolution.
func (h *histogram) quantile(q float64) time.Duration {
	h.init()
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := int64(q*float64(n-1)) + 1
	var seen int64
	for i := range h.fine {
		if seen += int64(h.fine[i].Load()); seen >= rank {
			return time.Duration(i) * time.Microsecond
		}
	}
	for i := range h.coarse {
		if seen += int64(h.coarse[i].Load()); seen >= rank {
			return time.Duration(i) * time.Millisecond
		}
	}
	return h.max()
}

func (h *histogram) max() time.Duration { return time.Duration(h.maxNano.Load()) }
func (h *histogram) count() int64       { return h.n.Load() }
