package caddymodule

// The relay: one stream from the pool to the client, through its framing,
// failing over before the first chunk and never after it.

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/ratelimit"
	"github.com/llmstream/caddy-llmstream/resume"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// relay answers req from the pool and returns the outcome with the error
// that ended it: outcomeRejected when nothing was sent and the error is the
// client's answer; otherwise an error means the response broke after its
// headers went out, and its framing's error signal (if any) was sent. Each
// chunk is counted on tab, which cuts the stream once it crosses its
// client's token budget.
func (h *LLMProxy) relay(w http.ResponseWriter, r *http.Request, req *upstream.Request, rec *record, tab *ratelimit.Tab) (string, error) {
	ctx, stop := untilExit(r)
	defer stop()
	// A stream cut for a reason of its own (its token budget) cancels its
	// upstream at once, and no other upstream may take over.
	ctx, cut := context.WithCancelCause(ctx)
	defer cut(nil)
	run := h.pool.Attempt(rec.start, req.Model, h.maxTries, rec)
	st, err := run.Open(ctx, req)
	if err != nil {
		if r.Context().Err() != nil {
			return outcomeClientGone, nil // the client left before the upstream answered
		}
		return outcomeRejected, err
	}
	defer func() { st.Close() }()
	if !req.Stream {
		run.Answered()
		st.Commit()
		req.Release()
		return h.relayWhole(w, r, st, rec, tab)
	}

	fw, done := h.startStream(w, r, req, rec)
	defer done()
	if err := fw.Start(); err != nil {
		return outcomeClientGone, nil
	}
	if rec.streamID == "" {
		fw.KeepAlive(h.heartbeat)
	}
	// Once any chunk went to the client, no other upstream may answer:
	// the client would read two completions spliced (two ids, two role
	// deltas), which SDKs' accumulators reject. So a first chunk that
	// carries nothing to see (OpenAI's and vLLM's role-only chunk) is held
	// back until the next one, and failover stays open until there is
	// something to show.
	var c, held chunk.Chunk
	sent, holding := false, false
	for {
		err := st.Next(&c)
		if err == nil {
			run.Answered()
			rec.read(&c, run.Member())
			if err = tab.Count(&c); err != nil {
				cut(err)
			}
		}
		if err == nil {
			if !sent && contentFree(&c) && (!holding || fw.Format() != frame.OpenAI) {
				if fw.Format() == frame.OpenAI {
					held, holding = c, true
					held.Raw = append([]byte(nil), c.Raw...)
					held.Event = append([]byte(nil), c.Event...)
				}
				// The other framings show nothing of it, however many
				// there are (a Responses stream starts with several).
				continue
			}
			if holding {
				holding = false
				err = fw.Chunk(&held)
			}
			if err == nil {
				if !sent {
					// Committed to this upstream: no copy of the
					// request is kept for another.
					sent = true
					st.Commit()
					req.Release()
				}
				err = fw.Chunk(&c)
			}
			if err == nil {
				rec.flushed()
				continue
			}
			var gone *frame.DownstreamError
			if errors.As(err, &gone) {
				if c.HasDelta() {
					rec.undelivered++ // produced for a client that had left
				}
				return outcomeClientGone, nil
			}
			// A chunk this framing cannot carry is the upstream's fault,
			// and the stream fails like any other broken one.
		}
		if err == io.EOF && holding {
			holding = false
			err = fw.Chunk(&held)
			if err == nil {
				err = io.EOF
			}
		}
		if err == io.EOF {
			if err := fw.Done(); err != nil {
				return outcomeClientGone, nil
			}
			return outcomeCompleted, nil
		}
		if r.Context().Err() != nil && !endedByResume(r.Context()) {
			return outcomeClientGone, nil
		}
		holding = false // a failure drops what was held back
		if run.Retry(ctx, err, sent) {
			st.Close()
			next, nerr := run.Open(ctx, req)
			if nerr == nil {
				st = next
				continue
			}
			if ctx.Err() == nil {
				err = nerr
			}
		}
		if cause := context.Cause(ctx); errors.Is(cause, errShuttingDown) || endedByResume(ctx) {
			err = cause
		}
		e, outcome := h.streamError(err)
		rec.signalled = fw.Fail(e) == nil
		return outcome, err
	}
}

// contentFree tells whether c carries nothing a client would miss if
// another upstream answered instead: no delta, no finish, no usage.
func contentFree(c *chunk.Chunk) bool {
	return !c.HasDelta() && c.FinishReason == "" && c.Usage == nil && c.Err == nil
}

// startStream sends the stream's headers and returns its framing writer,
// with what to call when the stream ends.
func (h *LLMProxy) startStream(w http.ResponseWriter, r *http.Request, req *upstream.Request, rec *record) (*frame.Writer, func()) {
	frame.SetHeaders(w.Header(), rec.format)
	w.WriteHeader(http.StatusOK)
	rec.status = http.StatusOK
	rc := http.NewResponseController(w)
	fw := frame.NewWriter(w, rc.Flush, rec.format)
	fw.HeadersSent = frame.HeadersSent(w.Header())
	fw.IncludeUsage = req.IncludeUsage
	fw.TypedEvents = req.API == upstream.Responses || req.API == upstream.Messages
	fw.StreamID = "llmstream"
	if req.API == upstream.Messages {
		typedMessages(fw)
	}
	rec.fw = fw
	if rec.streamID != "" {
		// A resumable stream is written to its log, not to a client:
		// the clients that read it keep their own time and heartbeats.
		fw.StreamID, fw.NumberEvents, fw.Retry = rec.streamID, true, resumeRetry
		return fw, fw.Close
	}
	if _, iw := caddyhttp.IdleTimeoutsFromContext(r.Context()); iw != nil && h.writeTimeout > 0 {
		// The server already arms a write deadline around every write
		// and flush (its write_idle_timeout): make that one ours for
		// this stream, rather than moving a second one twice per chunk.
		restore := iw.Override(h.writeTimeout, 0, 0)
		return fw, func() { fw.Close(); restore() }
	}
	fw.WriteTimeout, fw.SetDeadline = h.writeTimeout, rc.SetWriteDeadline
	return fw, fw.Close
}

// relayWhole passes on a non-streamed answer, read whole and checked by
// the upstream client before any of it goes out. Its usage is charged on
// tab, which has nothing left to cut.
func (h *LLMProxy) relayWhole(w http.ResponseWriter, r *http.Request, st *upstream.Stream, rec *record, tab *ratelimit.Tab) (string, error) {
	if tab != nil {
		var c chunk.Chunk
		if st.DecodeWhole(&c) == nil {
			_ = tab.Count(&c)
		}
	}
	ct := "application/json"
	if mt, _, _ := mime.ParseMediaType(st.Header().Get("Content-Type")); mt == "text/event-stream" {
		ct = mt // an upstream that streamed anyway
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rec.status = http.StatusOK
	n, err := w.Write(st.Whole())
	rec.bytes = n
	if err != nil {
		return outcomeClientGone, nil
	}
	return outcomeCompleted, nil
}

// streamError maps a failure after the headers went out to what the client
// is told and the outcome logged. Details of broken connections stay in the
// log: they name internal addresses.
func (h *LLMProxy) streamError(err error) (*chunk.Error, string) {
	var ue *chunk.Error
	var spent *ratelimit.Exceeded
	switch {
	case errors.As(err, &spent):
		return &chunk.Error{Type: chunk.TypeRateLimit, Message: spent.Error()}, outcomeRateLimited
	case errors.As(err, &ue):
		return ue, outcomeUpstreamError
	case errors.Is(err, upstream.ErrFirstChunkTimeout), errors.Is(err, upstream.ErrIdleTimeout), errors.Is(err, upstream.ErrTotalTimeout):
		return &chunk.Error{Type: chunk.TypeTimeout, Message: err.Error()}, outcomeTimeout
	case errors.Is(err, errShuttingDown):
		return &chunk.Error{Type: chunk.TypeServer, Message: err.Error()}, outcomeUpstreamError
	case errors.Is(err, resume.ErrCancelled):
		return &chunk.Error{Type: chunk.TypeInvalidRequest, Code: quoted("stream_cancelled"), Message: "the stream was cancelled by its client"}, outcomeCancelled
	case errors.Is(err, resume.ErrUnattended):
		return &chunk.Error{Type: chunk.TypeTimeout, Code: quoted("stream_unattended"), Message: "the stream was cancelled: no client was connected for resume's grace period"}, outcomeClientGone
	case errors.Is(err, frame.ErrContent):
		return &chunk.Error{Type: chunk.TypeUpstream, Message: "upstream sent content this framing cannot carry"}, outcomeUpstreamError
	case errors.Is(err, upstream.ErrZstdWindow):
		return &chunk.Error{Type: chunk.TypeUpstream, Message: "upstream sent zstd with a window over 8 MiB, more than the proxy decodes"}, outcomeUpstreamError
	case errors.Is(err, upstream.ErrLineTooLong):
		return &chunk.Error{Type: chunk.TypeUpstream, Message: "upstream sent an event larger than the proxy accepts"}, outcomeUpstreamError
	default:
		return &chunk.Error{Type: chunk.TypeUpstream, Message: "upstream stream ended abnormally"}, outcomeUpstreamError
	}
}
