package caddymodule

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// allowsModel tells whether clients may see and ask for model: the
// `models` allowlist, when there is one.
func (h *LLMProxy) allowsModel(model string) bool { return h.limits.CheckModel(model) == nil }

// serveModels answers GET /v1/models, the pool's models in OpenAI's list
// shape, and GET /v1/models/{id}, one of them (see upstream.ModelList):
// merged from every upstream, under the names clients ask for, filtered by
// allowsModel, kept for a minute.
func (h *LLMProxy) serveModels(w http.ResponseWriter, r *http.Request, api string) error {
	release, refused := h.admitAPI(w, r, api, http.MethodGet, http.MethodHead)
	if refused != nil {
		return h.reject(w, r, refused)
	}
	defer release()

	rec := &record{start: time.Now(), api: api}
	defer h.finish(r, rec)
	list, err := h.modelList.Get(r.Context(), rec.start)
	if err != nil {
		if r.Context().Err() != nil {
			rec.outcome = outcomeClientGone
			return nil
		}
		rec.outcome, rec.err = outcomeRejected, err
		e := asError(err)
		rec.status = e.Status
		return h.reject(w, r, e)
	}
	allowed := make([]upstream.ModelInfo, 0, len(list))
	for _, m := range list {
		if h.allowsModel(m.ID) {
			allowed = append(allowed, m)
		}
	}

	var body any = struct {
		Object string               `json:"object"`
		Data   []upstream.ModelInfo `json:"data"`
	}{"list", allowed}
	if id, one := strings.CutPrefix(api, "models/"); one {
		body = nil
		for i := range allowed {
			if allowed[i].ID == id {
				body = allowed[i]
			}
		}
		if body == nil {
			rec.outcome, rec.status = outcomeRejected, http.StatusNotFound
			return h.reject(w, r, &chunk.Error{Status: http.StatusNotFound, Type: chunk.TypeInvalidRequest,
				Code: json.RawMessage(`"model_not_found"`), Message: "the model " + id + " does not exist or is not served here"})
		}
	}
	b, _ := json.Marshal(body) // strings and numbers only
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rec.status, rec.outcome = http.StatusOK, outcomeCompleted
	if r.Method != http.MethodHead {
		rec.bytes, _ = w.Write(b)
	}
	return nil
}
