package caddymodule

import (
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/resume"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// streamIDHeader names a resumable stream in its responses, and the stream
// a DELETE cancels.
const streamIDHeader = "X-Stream-ID"

// Results of a resume, as counted.
const (
	resumeResumed      = "resumed"
	resumeNotFound     = "not_found"
	resumeForbidden    = "forbidden"
	resumeNotResumable = "not_resumable"
	resumeEnded        = "ended"
)

var resumeMetrics = struct {
	resumes    *prometheus.CounterVec
	replayed   prometheus.Counter
	unattended prometheus.Counter
}{
	resumes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "caddy", Subsystem: "llm", Name: "resumes_total",
		Help: "Requests to resume a stream, by result (resumed, not_found, forbidden, not_resumable, ended)."}, []string{"result"}),
	replayed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "caddy", Subsystem: "llm", Name: "resume_events_replayed_total",
		Help: "Events sent again to clients that resumed a stream."}),
	unattended: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "caddy", Subsystem: "llm", Name: "resume_streams_unattended_total",
		Help: "Resumable streams that ended with no client connected."}),
}

// streamOwner is whom a stream belongs to: the client's rate-limit key, or
// its address, neither of which a header can forge.
func (h *LLMProxy) streamOwner(r *http.Request) string {
	if h.RateLimit != nil {
		return h.RateLimit.clientKey(r)
	}
	return clientIP(r)
}

// foreign tells whether the stream of meta is another client's than r's,
// which only anyone_with_id lets resume or cancel it.
func (h *LLMProxy) foreign(r *http.Request, meta resume.Meta) bool {
	return !h.Resume.AnyoneWithID && meta.Owner != h.streamOwner(r)
}

// foreignStream is the refusal of another client's stream.
func foreignStream() *chunk.Error {
	return &chunk.Error{Status: http.StatusForbidden, Type: chunk.TypeInvalidRequest,
		Code: quoted("stream_forbidden"), Message: "this stream belongs to another client"}
}

// runFunc answers a request as the chat path does, on w.
type runFunc func(w http.ResponseWriter, r *http.Request) error

// serveResumable runs a new stream whose events are kept: its upstream is
// read by a producer of its own, which outlives the client's connection by
// the grace period, and the client reads the events back from the store
// like any later resume. When the store cannot take the stream (full,
// or Redis down), it is answered as without resume.
func (h *LLMProxy) serveResumable(w http.ResponseWriter, r *http.Request, rec *record, req *upstream.Request, run runFunc) error {
	store := h.Resume.store
	meta := resume.Meta{ID: resume.NewID(), Owner: h.streamOwner(r), Format: rec.format.String(), Model: req.Model}
	log, err := store.Create(r.Context(), meta)
	if err != nil {
		return run(w, r)
	}
	cur, err := store.Read(r.Context(), meta.ID, 0)
	if err != nil {
		_ = log.End(resume.Failed)
		return run(w, r)
	}
	defer cur.Close()

	rec.streamID = meta.ID
	rw := &recorder{header: make(http.Header), headed: make(chan struct{}), log: log}
	pctx, stop := context.WithCancelCause(detached(r.Context()))
	done := make(chan error, 1)
	go func() {
		defer stop(nil)
		go func() {
			select {
			case <-log.Abandoned():
				stop(log.Cause())
			case <-pctx.Done():
			}
		}()
		done <- h.produce(rw, r.WithContext(pctx), rec, log, run)
	}()

	select {
	case <-rw.headed:
	case err := <-done:
		return err // answered on no stream: handle_errors took a refusal
	case <-r.Context().Done():
		return nil // the stream goes on for the grace period
	}
	if rw.status != http.StatusOK {
		// A refusal before the first byte, in the producer's words.
		select {
		case err = <-done:
		case <-r.Context().Done():
			return nil
		}
		maps.Copy(w.Header(), rw.header)
		w.WriteHeader(rw.status)
		_, _ = w.Write(rw.body)
		return err
	}
	maps.Copy(w.Header(), rw.header)
	w.Header().Set(streamIDHeader, meta.ID)
	w.WriteHeader(http.StatusOK)
	return h.pump(w, r, rec.format, cur, nil, 0)
}

// produce runs the stream into its log and ends the log as the stream
// ended. A text stream that failed is aborted by conclude, which has no
// client here: its log ends Failed, and each reader aborts its own.
func (h *LLMProxy) produce(rw *recorder, r *http.Request, rec *record, log resume.Log, run runFunc) (err error) {
	defer func() {
		v := recover()
		if v != nil && v != http.ErrAbortHandler {
			panic(v)
		}
		state := resume.Done
		switch {
		case errors.Is(context.Cause(r.Context()), resume.ErrCancelled):
			state = resume.Cancelled
		case v != nil || rec.outcome != outcomeCompleted:
			state = resume.Failed
		}
		_ = log.End(state)
		if !log.Attached() {
			resumeMetrics.unattended.Inc()
		}
	}()
	return run(rw, r)
}

// serveResume answers a request that presents Last-Event-ID on a proxy
// with resume on: the events after it, then the rest live.
func (h *LLMProxy) serveResume(w http.ResponseWriter, r *http.Request, lastID string) error {
	id, n, ok := parseEventID(lastID)
	if !ok {
		return h.noStream(w, r, resumeNotFound, http.StatusNotFound, "stream_not_found", "no such stream: it ended long ago, or never was")
	}
	store := h.Resume.store
	// Whose it is comes first: a stranger's resume must not attach to the
	// stream, which would keep its upstream alive past its grace.
	meta, err := store.Meta(r.Context(), id)
	if err == nil && h.foreign(r, meta) {
		resumeMetrics.resumes.WithLabelValues(resumeForbidden).Inc()
		return h.reject(w, r, foreignStream())
	}
	var cur resume.Cursor
	if err == nil {
		cur, err = store.Read(r.Context(), id, n)
	}
	if err == nil && meta.Format == frame.Text.String() {
		// A text client counts bytes, not events: read from the start.
		cur.Close()
		cur, err = store.Read(r.Context(), id, 0)
	}
	switch {
	case errors.Is(err, resume.ErrDropped):
		return h.noStream(w, r, resumeNotResumable, http.StatusConflict, "stream_not_resumable",
			"the stream passed resume's max_bytes, and the events after "+lastID+" are no longer kept")
	case err != nil:
		return h.noStream(w, r, resumeNotFound, http.StatusNotFound, "stream_not_found", "no such stream: it ended long ago, or never was")
	}
	defer cur.Close()
	f, _ := frame.ParseFormat(meta.Format)
	skip := 0
	if f == frame.Text {
		skip = n
	}
	// Wait a moment for the first event, so that a client that has it all
	// is told so: 204, which stops an EventSource.
	first, err := h.firstEvent(r.Context(), cur, &skip)
	if err == io.EOF {
		resumeMetrics.resumes.WithLabelValues(resumeEnded).Inc()
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if r.Context().Err() != nil {
		return nil
	}
	resumeMetrics.resumes.WithLabelValues(resumeResumed).Inc()
	replayed := cur.Backlog()
	frame.SetHeaders(w.Header(), f)
	w.Header().Set(streamIDHeader, id)
	w.WriteHeader(http.StatusOK)
	defer func() { resumeMetrics.replayed.Add(float64(replayed)) }()
	return h.pump(w, r, f, cur, first, skip)
}

// firstEvent waits up to resumeFirstWait for cur's first event past skip
// bytes (text), or its end (io.EOF with nothing left). A wait that runs out
// returns nil: the stream is live and quiet.
func (h *LLMProxy) firstEvent(ctx context.Context, cur resume.Cursor, skip *int) ([]byte, error) {
	wait, cancel := context.WithTimeout(ctx, resumeFirstWait)
	defer cancel()
	for {
		ev, _, err := cur.Next(wait)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				return nil, nil
			}
			return nil, err
		}
		if *skip >= len(ev) {
			*skip -= len(ev)
			continue
		}
		ev, *skip = ev[*skip:], 0
		return ev, nil
	}
}

// pump writes cur's events to the client: first (if not nil), then the
// rest as they come, with heartbeats while the stream is quiet, until it
// ends or the client leaves. skip bytes of text are still to be skipped.
func (h *LLMProxy) pump(w http.ResponseWriter, r *http.Request, f frame.Format, cur resume.Cursor, first []byte, skip int) error {
	rc := http.NewResponseController(w)
	deadline := h.writeTimeout > 0
	if _, iw := caddyhttp.IdleTimeoutsFromContext(r.Context()); iw != nil && deadline {
		// As startStream: the server's own write deadline, made ours,
		// rather than a second one moved twice per event.
		defer iw.Override(h.writeTimeout, 0, 0)()
		deadline = false
	}
	var wrote time.Time
	write := func(b []byte) error {
		if deadline && rc.SetWriteDeadline(time.Now().Add(h.writeTimeout)) == nil {
			defer rc.SetWriteDeadline(time.Time{})
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		wrote = time.Now()
		return rc.Flush()
	}
	if !frame.HeadersSent(w.Header()) {
		if err := rc.Flush(); err != nil {
			return nil
		}
	}
	if first != nil && write(first) != nil {
		return nil
	}
	keepalive := f.Keepalive()
	if h.heartbeat <= 0 {
		keepalive = nil
	}
	// One wait of a heartbeat's length serves many events: a timer per
	// event would cost more than the event's own write.
	beat := newBeat(r.Context(), h.heartbeat, keepalive != nil)
	defer beat.stop()
	for {
		ev, _, err := cur.Next(beat.ctx(wrote))
		if errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil && time.Since(wrote) < h.heartbeat {
			continue // events went out meanwhile: no keepalive due yet
		}
		switch {
		case err == nil:
			if skip > 0 {
				if skip >= len(ev) {
					skip -= len(ev)
					continue
				}
				ev, skip = ev[skip:], 0
			}
			if write(ev) != nil {
				return nil
			}
		case r.Context().Err() != nil:
			return nil // the client left: the stream goes on for the grace period
		case errors.Is(err, context.DeadlineExceeded):
			if write(keepalive) != nil {
				return nil
			}
		case err == io.EOF && cur.State() == resume.Done:
			return nil
		case err == io.EOF && f == frame.Text:
			abort(r) // a failure the text framing has no signal for
			return nil
		case err == io.EOF:
			return nil // the stream's own error signal was its last event
		default:
			// Fell too far behind, or the store failed: this client's
			// copy of the stream breaks, in its framing's words.
			fw := frame.NewWriter(w, rc.Flush, f)
			if fw.Fail(&chunk.Error{Type: chunk.TypeServer, Message: "resumable stream broke: " + err.Error()}) != nil {
				abort(r)
			}
			return nil
		}
	}
}

// serveCancel answers a DELETE with X-Stream-ID: the stream is cancelled
// wherever it runs.
func (h *LLMProxy) serveCancel(w http.ResponseWriter, r *http.Request) error {
	id := r.Header.Get(streamIDHeader)
	store := h.Resume.store
	meta, err := store.Meta(r.Context(), id)
	if id == "" || err != nil {
		return h.reject(w, r, &chunk.Error{Status: http.StatusNotFound, Type: chunk.TypeInvalidRequest,
			Code: quoted("stream_not_found"), Message: "no such stream to cancel; send its ID in " + streamIDHeader})
	}
	if h.foreign(r, meta) {
		return h.reject(w, r, foreignStream())
	}
	if err := store.Cancel(r.Context(), id); err != nil && !errors.Is(err, resume.ErrNotFound) {
		return h.reject(w, r, &chunk.Error{Status: http.StatusServiceUnavailable, Type: chunk.TypeServer,
			Message: "the stream could not be cancelled: the resume store failed"})
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// noStream answers a resume that cannot be served: 204 to an EventSource,
// which stops it (any other status makes it report an error), else the
// error in OpenAI's shape.
func (h *LLMProxy) noStream(w http.ResponseWriter, r *http.Request, result string, status int, code, msg string) error {
	resumeMetrics.resumes.WithLabelValues(result).Inc()
	if acceptsEventStream(r) {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return h.reject(w, r, &chunk.Error{Status: status, Type: chunk.TypeInvalidRequest, Code: quoted(code), Message: msg})
}

// acceptsEventStream tells an EventSource's request (which always sends
// Accept: text/event-stream) from a fetch's.
func acceptsEventStream(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/event-stream")
}

// parseEventID splits "<stream>.<n>".
func parseEventID(s string) (id string, n int, ok bool) {
	id, num, found := strings.Cut(s, ".")
	if !found || id == "" || len(id) > 64 {
		return "", 0, false
	}
	n, err := strconv.Atoi(num)
	if errors.Is(err, strconv.ErrRange) && num[0] != '-' {
		err, n = nil, maxEventNumber
	}
	if err != nil || n < 0 {
		return "", 0, false
	}
	// Past any stream's last event, and far from overflowing the next.
	return id, min(n, maxEventNumber), true
}

// maxEventNumber bounds the n of Last-Event-ID: no stream has so many
// events, and a store adds one to it.
const maxEventNumber = 1 << 40

func quoted(s string) []byte { return strconv.AppendQuote(nil, s) }

// recorder is the ResponseWriter a resumable stream's producer writes to:
// each flushed frame becomes the log's next event. A refusal written
// before any stream is kept for the client that is waiting for it.
type recorder struct {
	header http.Header
	status int
	headed chan struct{} // closed at WriteHeader
	frame  []byte        // being written
	body   []byte        // of a refusal
	log    resume.Log
}

func (rw *recorder) Header() http.Header { return rw.header }

func (rw *recorder) WriteHeader(status int) {
	if rw.status != 0 {
		return
	}
	rw.status = status
	close(rw.headed)
}

func (rw *recorder) Write(b []byte) (int, error) {
	rw.WriteHeader(http.StatusOK)
	if rw.status != http.StatusOK {
		rw.body = append(rw.body, b...)
		return len(b), nil
	}
	rw.frame = append(rw.frame, b...)
	return len(b), nil
}

// FlushError appends the frame written since the last flush. A store
// that fails loses resumability, not the stream: its readers learn of it.
func (rw *recorder) FlushError() error {
	rw.WriteHeader(http.StatusOK)
	if len(rw.frame) > 0 && rw.status == http.StatusOK {
		_ = rw.log.Append(rw.frame) // Append keeps a copy
		rw.frame = rw.frame[:0]
	}
	return nil
}

// endedByResume tells whether ctx, a resumable stream's, was ended by its
// client's cancel or by nobody attached: an end its log tells its readers
// in the framing's error signal, rather than a client that left.
func endedByResume(ctx context.Context) bool {
	cause := context.Cause(ctx)
	return errors.Is(cause, resume.ErrCancelled) || errors.Is(cause, resume.ErrUnattended)
}

// beat is the context a pump waits for its next event with: the request's,
// ending a heartbeat after the last write when heartbeats are on. It is
// made anew only once it has ended, not per event.
type beat struct {
	parent context.Context
	every  time.Duration
	on     bool
	cur    context.Context
	cancel context.CancelFunc
}

func newBeat(parent context.Context, every time.Duration, on bool) *beat {
	return &beat{parent: parent, every: every, on: on, cur: parent, cancel: func() {}}
}

func (b *beat) ctx(wrote time.Time) context.Context {
	if b.on && (b.cur == b.parent || b.cur.Err() != nil) {
		b.cancel()
		if wrote.IsZero() {
			wrote = time.Now()
		}
		b.cur, b.cancel = context.WithDeadline(b.parent, wrote.Add(b.every))
	}
	return b.cur
}

func (b *beat) stop() { b.cancel() }
