package simulator

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// api answers the endpoints beside chat completions, each a POST:
//
//	<prefix>/embeddings   deterministic unit vectors (float or base64)
//	<prefix>/completions  the legacy text completion, streamed or whole
//	<prefix>/messages     Anthropic's Messages API, streamed as its typed
//	                      events (message_start ... message_stop) or whole
//
// The model names of [Models] pick the same behaviours as for chat where
// the endpoint has them (every one has sim-error-<status>).
func (s *Simulator) api(w http.ResponseWriter, r *http.Request, p string) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "",
			"method "+r.Method+" not allowed on "+p+": use POST")
		return
	}
	switch {
	case strings.HasSuffix(p, "/embeddings"):
		s.embeddings(w, r)
	case strings.HasSuffix(p, "/completions"):
		s.completions(w, r)
	default:
		s.messages(w, r)
	}
}

// readJSON reads a request body into v; false means the client has been
// told what is wrong with it, by fail (status, message).
func readJSON(r *http.Request, v any, fail func(int, string)) ([]byte, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		fail(http.StatusBadRequest, "reading request body: "+err.Error())
		return nil, false
	}
	if len(body) > maxBody {
		fail(http.StatusRequestEntityTooLarge, "request body larger than "+strconv.Itoa(maxBody)+" bytes")
		return nil, false
	}
	if err := json.Unmarshal(body, v); err != nil {
		fail(http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return nil, false
	}
	return body, true
}

// openAIFail is readJSON's fail for the OpenAI endpoints.
func openAIFail(w http.ResponseWriter) func(int, string) {
	return func(status int, msg string) { writeError(w, status, "invalid_request_error", "", msg) }
}

// startEvents sends an event stream's headers and returns its writer and
// pacer (the caller stops it), or nil when the client is gone already.
func startEvents(w http.ResponseWriter, r *http.Request) (*events, *pacer) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	p := &pacer{done: r.Context().Done()}
	e := &events{w: w, rc: http.NewResponseController(w), buf: make([]byte, 0, 512)}
	if !e.flush() {
		return nil, p
	}
	return e, p
}

// fault plays the failure of a streamed reply once its content went out,
// errorSE being this API's error event and garbageSE what it cannot parse.
// It tells whether the stream ended.
func (e *events) fault(rp *reply, p *pacer, errorSE, garbageSE string) bool {
	switch rp.kind {
	case errorEvent:
		e.raw(errorSE)
	case reset:
		panic(http.ErrAbortHandler)
	case stall:
		<-p.done
	case garbage:
		e.raw(garbageSE)
	default:
		return false
	}
	return true
}

// whole answers a request that did not stream, after as long as streaming
// the same reply would have taken: body() is the reply, failed writes the
// sim-error-event answer, and sim-stall-first and sim-reset do as for chat.
func whole(w http.ResponseWriter, r *http.Request, rp *reply, failed func(), body func() []byte) {
	p := pacer{done: r.Context().Done()}
	defer p.stop()
	switch rp.kind {
	case stallFirst:
		<-p.done
		return
	case errorEvent:
		failed()
		return
	}
	if !p.wait((rp.interval + rp.jitter/2) * time.Duration(rp.generated())) {
		return
	}
	b := body()
	if rp.kind == reset {
		w.Write(b[:len(b)/2])
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}
