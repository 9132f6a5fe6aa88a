package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// modelsPool is a pool whose members answer /models with the given bodies
// ("" fails with 500), counting the calls.
func modelsPool(t *testing.T, calls *atomic.Int32, bodies ...string) *Pool {
	p := &Pool{Policy: First}
	for _, body := range bodies {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			if r.URL.Path != "/v1/models" || r.Header.Get("Authorization") != "Bearer sk-secret-key" {
				t.Errorf("asked %s with %q", r.URL.Path, r.Header.Get("Authorization"))
			}
			if body == "" {
				w.WriteHeader(500)
				return
			}
			io.WriteString(w, body)
		})
		p.Members = append(p.Members, &Member{Client: c})
	}
	return p
}

func ids(list []ModelInfo) string {
	var s []string
	for _, m := range list {
		s = append(s, m.ID)
	}
	return strings.Join(s, ",")
}

func TestModelListMergesAndRenames(t *testing.T) {
	var calls atomic.Int32
	p := modelsPool(t, &calls,
		`{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"},{"id":"text-embedding-3-small","created":2,"owned_by":"openai"}]}`,
		`{"object":"list","data":[{"id":"deepseek-chat","created":3,"owned_by":"deepseek"},{"id":"deepseek-reasoner","created":4,"owned_by":"deepseek"}]}`,
		``, // down: left out
		`{"data":[{"type":"model","id":"claude-sonnet-4","display_name":"Claude","created_at":"2025-05-22T00:00:00Z"}],"has_more":false}`,
	)
	p.Members[1].Models = map[string]string{"gpt-4o": "deepseek-chat", "gpt-4o-mini": "deepseek-chat"}
	l := &ModelList{Pool: p}
	now := time.Now()
	list, err := l.Get(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(list); got != "gpt-4o,text-embedding-3-small,gpt-4o-mini,deepseek-reasoner,claude-sonnet-4" {
		t.Errorf("ids %s", got)
	}
	if m := list[2]; m.Object != "model" || m.Created != 3 || m.OwnedBy != "deepseek" {
		t.Errorf("renamed entry %+v", m)
	}
	if m := list[4]; m.Created != 1747872000 || m.OwnedBy != "system" {
		t.Errorf("Anthropic entry %+v", m)
	}

	// Kept for the TTL, then fetched again.
	if _, err := l.Get(context.Background(), now.Add(59*time.Second)); err != nil || calls.Load() != 4 {
		t.Errorf("within the TTL: %v, %d calls", err, calls.Load())
	}
	if _, err := l.Get(context.Background(), now.Add(61*time.Second)); err != nil || calls.Load() != 8 {
		t.Errorf("after the TTL: %v, %d calls", err, calls.Load())
	}
}

func TestModelListAllFail(t *testing.T) {
	var calls atomic.Int32
	l := &ModelList{Pool: modelsPool(t, &calls, "", "not json")}
	_, err := l.Get(context.Background(), time.Now())
	var e *chunk.Error
	if !errors.As(err, &e) || e.Status != http.StatusBadGateway {
		t.Fatalf("Get = %v, want a 502", err)
	}
	// A failure is not kept.
	l.Get(context.Background(), time.Now())
	if calls.Load() != 4 {
		t.Errorf("%d calls, want 4", calls.Load())
	}
}
