package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/ratelimit"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// passPaths are the API paths below /v1/ passed through to the upstream,
// each a POST. Others under /v1/ answer 404 in OpenAI's shape: files,
// batches, fine-tuning, assistants and the organization's endpoints keep
// state at one upstream, under the server's account, which a pool cannot
// share out and clients should not reach with the server's key.
var passPaths = map[string]bool{
	"embeddings":   true,
	"completions":  true, // the legacy text completion, streamed or whole
	"moderations":  true,
	"audio/speech": true, "audio/transcriptions": true, "audio/translations": true,
	"images/generations": true, "images/edits": true, "images/variations": true,
	// Anthropic's token counting, for auth x-api-key upstreams (its
	// messages are relayed as chat is: llmproxy_messages.go).
	"messages/count_tokens": true,
}

// maxHeldBody is the largest request body held in memory, so that another
// upstream can be asked if the first fails before answering; a larger one
// (audio, images, up to max_body) streams to the upstream as it arrives,
// and one upstream only is tried.
const maxHeldBody = 1 << 20

// servePass answers a request for one of passPaths: passed to the pool
// with the server's key, after the guard and the rate limit, and its
// answer streamed back as it arrives (see upstream.Client.Pass).
func (h *LLMProxy) servePass(w http.ResponseWriter, r *http.Request, api string) error {
	if !passPaths[api] {
		return h.notFound(w, r, api)
	}
	release, refused := h.admitAPI(w, r, api, http.MethodPost)
	if refused != nil {
		return h.reject(w, r, refused)
	}
	defer release()

	rec := &record{start: time.Now(), api: api, span: recordingSpan(r)}
	defer h.finish(r, rec)
	req, err := h.passRequest(r, api)
	if err == nil {
		rec.model = req.Model
		err = h.checkPassModel(req)
	}
	if err != nil {
		rec.outcome, rec.err = outcomeRejected, err
		return h.conclude(w, r, rec)
	}
	// The token budget is spent as chat spends it: its input reserved
	// (with max_tokens where the answer is generated), the answer counted
	// as it passes, its reported usage charged.
	tab, spent := h.RateLimit.Reserve(w, r, ratelimit.PassCost(req.Body, api == "completions"))
	if spent != nil {
		rec.outcome, rec.err = outcomeRejected, &chunk.Error{Status: spent.Status, Type: chunk.TypeRateLimit,
			Message: spent.Message, RetryAfter: spent.RetryAfter}
		return h.conclude(w, r, rec)
	}
	defer tab.Settle()
	rec.outcome, rec.err = h.relayPass(w, r, req, rec, tab)
	if rec.outcome == outcomeRejected {
		tab.Refund() // no upstream generated anything
	}
	return h.conclude(w, r, rec)
}

// checkPassModel holds a request to the models allowlist, when there is
// one: it must name an allowed model where the proxy can read it, in a
// JSON body or a multipart form held whole.
func (h *LLMProxy) checkPassModel(req *upstream.PassRequest) error {
	if len(h.Models) > 0 && req.BodyReader != nil {
		return &chunk.Error{Status: http.StatusBadRequest, Type: chunk.TypeInvalidRequest, Param: "model",
			Message: "this endpoint serves only some models, and the model of a body over 1 MiB cannot be checked before it is sent"}
	}
	return h.limits.CheckModel(req.Model)
}

// genAIOperation is the GenAI semantic conventions' operation name for
// the API path of a request ("" for chat completions).
func genAIOperation(api string) string {
	switch first, _, _ := strings.Cut(api, "/"); {
	case api == "" || api == "chat/completions" || api == "messages" || first == "responses":
		return "chat"
	case api == "completions":
		return "text_completion"
	case api == "embeddings":
		return "embeddings"
	}
	return api
}

// passRequest reads the client's request into one for the upstream: a
// body of up to maxHeldBody is held (with the model it names, for renames
// and the allowlist), a larger one streams.
func (h *LLMProxy) passRequest(r *http.Request, api string) (*upstream.PassRequest, error) {
	if r.ContentLength > h.MaxBody {
		return nil, upstream.BodyError(&http.MaxBytesError{Limit: h.MaxBody})
	}
	p := &upstream.PassRequest{Method: r.Method, Path: api, RawQuery: r.URL.RawQuery, Header: r.Header}
	body := http.MaxBytesReader(nil, r.Body, h.MaxBody)
	held, err := io.ReadAll(io.LimitReader(body, maxHeldBody+1))
	if err != nil {
		return nil, upstream.BodyError(err)
	}
	if len(held) > maxHeldBody {
		p.BodyReader, p.ContentLength = io.MultiReader(bytes.NewReader(held), body), r.ContentLength
		return p, nil
	}
	p.Body, p.ContentLength = held, int64(len(held))
	switch mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt {
	case "application/json":
		p.Model = upstream.BodyModel(held)
	case "multipart/form-data":
		p.Model = formModel(held, params["boundary"])
	}
	return p, nil
}

// formModel is the model field of a multipart form held whole.
func formModel(body []byte, boundary string) string {
	if boundary == "" {
		return ""
	}
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	for {
		part, err := mr.NextPart()
		if err != nil {
			return ""
		}
		if part.FormName() == "model" && part.FileName() == "" {
			b, _ := io.ReadAll(io.LimitReader(part, 256))
			return string(b)
		}
	}
}

// relayPass asks the pool and streams its answer to the client, flushing
// every read. Like relay, it returns outcomeRejected when nothing was sent
// and the error is the client's answer; otherwise an error means the body
// broke after its headers went out, told in an event stream's own error
// event where the stream was between events (signalled). The answer is
// counted on tab as it passes, which ends an event stream that spent its
// client's budget after the event that did.
func (h *LLMProxy) relayPass(w http.ResponseWriter, r *http.Request, req *upstream.PassRequest, rec *record, tab *ratelimit.Tab) (string, error) {
	ctx, stop := untilExit(r)
	defer stop()
	tries := h.maxTries
	if req.BodyReader != nil {
		tries = 1 // a streamed body is gone once sent
	}
	run := h.pool.Attempt(rec.start, req.Model, tries, rec)
	ans, err := run.Pass(ctx, req)
	if err != nil {
		if r.Context().Err() != nil {
			return outcomeClientGone, nil
		}
		return outcomeRejected, err
	}
	defer ans.Close()
	run.Answered()
	ans.Commit()
	rec.firstByte = time.Since(rec.start)
	metrics.ttfb.WithLabelValues(run.Member().Name).Observe(rec.firstByte.Seconds())

	events := ans.EventStream()
	for k, vs := range ans.Header {
		w.Header()[k] = vs
	}
	if events {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Accel-Buffering", "no")
	}
	w.WriteHeader(ans.Status)
	rec.status = ans.Status
	rc := http.NewResponseController(w)
	timed := false // each write bounded by a deadline of ours
	if _, iw := caddyhttp.IdleTimeoutsFromContext(r.Context()); iw != nil && h.writeTimeout > 0 {
		defer iw.Override(h.writeTimeout, 0, 0)() // as startStream does
	} else {
		timed = h.writeTimeout > 0
	}
	send := func(b []byte) error {
		if timed && rc.SetWriteDeadline(time.Now().Add(h.writeTimeout)) == nil {
			defer rc.SetWriteDeadline(time.Time{})
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		return nil
	}

	meter := ratelimit.NewMeter(tab, events)
	buf := make([]byte, 32<<10)
	var last [2]byte // the last two bytes sent: "\n\n" ends an event
	for {
		n, err := ans.Read(buf)
		if n > 0 {
			var spent error
			n, spent = meter.Feed(buf[:n])
			if send(buf[:n]) != nil {
				return outcomeClientGone, nil
			}
			rec.chunks++
			rec.bytes += n
			last = [2]byte{last[1], buf[n-1]}
			if n > 1 {
				last[0] = buf[n-2]
			}
			if spent != nil {
				e, outcome := h.streamError(spent)
				rec.signalled = send(passErrorEvent(req.Path, e)) == nil
				return outcome, spent
			}
		}
		if err == io.EOF {
			meter.End()
			return outcomeCompleted, nil
		}
		if err != nil {
			if r.Context().Err() != nil {
				return outcomeClientGone, nil
			}
			if errors.Is(context.Cause(ctx), errShuttingDown) {
				err = errShuttingDown
			}
			e, outcome := h.streamError(err)
			if events && (rec.bytes == 0 || last == [2]byte{'\n', '\n'}) {
				rec.signalled = send(passErrorEvent(req.Path, e)) == nil
			}
			return outcome, err
		}
	}
}

// passErrorEvent is the event that tells an event stream's client that it
// broke, in the API's own form: Anthropic's `event: error` for messages,
// OpenAI's `data: {"error":...}` for the others.
func passErrorEvent(api string, e *chunk.Error) []byte {
	if strings.HasPrefix(api, "messages") {
		return append(append([]byte("event: error\ndata: "), messagesErrorBody(e)...), "\n\n"...)
	}
	return append(append([]byte("data: "), e.MarshalBody()...), "\n\n"...)
}
