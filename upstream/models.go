package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// ModelInfo is one entry of a model list, in OpenAI's shape.
type ModelInfo struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// maxModelList bounds an upstream's model list as read.
const maxModelList = 4 << 20

// modelsTimeout bounds one upstream's model list when its client has no
// first-chunk limit.
const modelsTimeout = 30 * time.Second

// ListModels asks the upstream for its model list: GET <base>/models, in
// OpenAI's shape ({"data":[{"id","created","owned_by"}]}) or Anthropic's
// ({"data":[{"id","created_at"}]}, asked for its largest page). The ids
// are the upstream's own, with the server's secrets removed.
func (c *Client) ListModels(ctx context.Context) ([]ModelInfo, error) {
	limit := c.FirstChunk
	if limit <= 0 {
		limit = modelsTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	hr, err := c.newRequest(ctx, http.MethodGet, "models", nil)
	if err != nil {
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeServer, Message: "building upstream request failed"}
	}
	hr.Header.Set("Accept", "application/json")
	if c.Auth == AuthXAPIKey {
		q := hr.URL.Query()
		q.Set("limit", "1000") // Anthropic pages 20 by default, 1000 at most
		hr.URL.RawQuery = q.Encode()
	}
	resp, err := c.HTTP.Do(hr)
	if err != nil {
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, &chunk.Error{Status: http.StatusGatewayTimeout, Type: chunk.TypeTimeout, Message: "no model list from the upstream in time"}
		}
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream, Message: "upstream unreachable"}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, c.statusError(resp)
	}
	body, closeBody, err := decodedBody(resp)
	if err != nil {
		return nil, err
	}
	defer closeBody()
	b, err := io.ReadAll(io.LimitReader(body, maxModelList+1))
	if err != nil || len(b) > maxModelList {
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream, Message: "reading the upstream's model list failed"}
	}
	var list struct {
		Data []struct {
			ID        string    `json:"id"`
			Created   int64     `json:"created"`
			CreatedAt time.Time `json:"created_at"`
			OwnedBy   string    `json:"owned_by"`
		} `json:"data"`
	}
	if err := json.Unmarshal(c.redactor().bytes(b), &list); err != nil {
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream, Message: "upstream's model list is not OpenAI's list shape"}
	}
	out := make([]ModelInfo, 0, len(list.Data))
	for _, d := range list.Data {
		if d.ID == "" {
			continue
		}
		m := ModelInfo{ID: d.ID, Object: "model", Created: d.Created, OwnedBy: d.OwnedBy}
		if m.Created == 0 && !d.CreatedAt.IsZero() {
			m.Created = d.CreatedAt.Unix()
		}
		if m.OwnedBy == "" {
			m.OwnedBy = "system"
		}
		out = append(out, m)
	}
	return out, nil
}

// DefaultModelsTTL is how long a ModelList keeps the pool's list.
const DefaultModelsTTL = 60 * time.Second

// ModelList is a pool's models as its clients see them: every healthy
// member's list, merged in member order, under the names the members'
// renames give them, and kept for TTL.
type ModelList struct {
	Pool *Pool
	TTL  time.Duration // 0: DefaultModelsTTL

	mu    sync.Mutex // held while fetching, so one fetch serves all waiting
	at    time.Time
	cache []ModelInfo
}

// Get returns the pool's models, fetched again once the kept list is older
// than TTL. A member that fails is left out of the list; when every one
// fails, the last failure is the answer, and nothing is kept.
func (l *ModelList) Get(ctx context.Context, now time.Time) ([]ModelInfo, error) {
	ttl := l.TTL
	if ttl <= 0 {
		ttl = DefaultModelsTTL
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cache != nil && now.Sub(l.at) < ttl {
		return l.cache, nil
	}
	list, err := l.fetch(ctx, now)
	if err != nil {
		return nil, err
	}
	l.cache, l.at = list, now
	return list, nil
}

func (l *ModelList) fetch(ctx context.Context, now time.Time) ([]ModelInfo, error) {
	type answer struct {
		list []ModelInfo
		err  error
	}
	members := make([]*Member, 0, len(l.Pool.Members))
	for _, m := range l.Pool.Members {
		if m.Healthy(now) {
			members = append(members, m)
		}
	}
	if len(members) == 0 {
		return nil, l.Pool.AllDown(now, "")
	}
	answers := make([]answer, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Go(func() {
			list, err := m.ListModels(ctx)
			answers[i] = answer{m.clientNames(list), err}
		})
	}
	wg.Wait()
	var last error
	seen := map[string]bool{}
	merged := []ModelInfo{}
	for _, a := range answers {
		if a.err != nil {
			last = a.err
			continue
		}
		for _, m := range a.list {
			if !seen[m.ID] {
				seen[m.ID] = true
				merged = append(merged, m)
			}
		}
	}
	if len(merged) == 0 && last != nil {
		return nil, last
	}
	return merged, nil
}

// clientNames renames an upstream's models back to the names clients ask
// for: a model that the member's renames map to (gpt-4o -> deepseek-chat)
// is listed under each name that maps to it (gpt-4o), not under its own,
// since those are the names the configuration gives it.
func (m *Member) clientNames(list []ModelInfo) []ModelInfo {
	if len(m.Models) == 0 {
		return list
	}
	from := map[string][]string{}
	for client, up := range m.Models {
		from[up] = append(from[up], client)
	}
	out := make([]ModelInfo, 0, len(list))
	for _, info := range list {
		names, ok := from[info.ID]
		if !ok {
			out = append(out, info)
			continue
		}
		slices.Sort(names)
		for _, n := range names {
			renamed := info
			renamed.ID = n
			out = append(out, renamed)
		}
	}
	return out
}
