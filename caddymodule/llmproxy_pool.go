package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/llmstream/caddy-llmstream/upstream"
)

// upstreamPools keeps each directive's upstream pool, with its health and
// connections, across config reloads that leave the upstreams unchanged.
var upstreamPools = caddy.NewUsagePool()

// pooledUpstreams is what upstreamPools holds.
type pooledUpstreams struct {
	pool       *upstream.Pool
	models     *upstream.ModelList // the pool's /v1/models, cached
	transports []*http.Transport
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

// Destruct stops the health checks and closes idle connections.
func (p *pooledUpstreams) Destruct() error {
	p.stop()
	p.wg.Wait()
	for _, t := range p.transports {
		t.CloseIdleConnections()
	}
	return nil
}

// provisionPool builds, or takes back from before a reload, the upstream pool.
func (h *LLMProxy) provisionPool(ctx caddy.Context, t *Timeouts) error {
	repl := caddy.NewReplacer()
	policy, err := upstream.ParsePolicy(orDefault(h.LBPolicy, string(upstream.RoundRobin)))
	if err != nil {
		return err
	}
	header := make(http.Header, len(h.HeaderUp))
	for k, vs := range h.HeaderUp {
		for _, v := range vs {
			header.Add(k, repl.ReplaceAll(v, ""))
		}
	}
	ups := make([]UpstreamConfig, 0, len(h.To)+len(h.Upstreams))
	for _, to := range h.To {
		ups = append(ups, UpstreamConfig{To: to})
	}
	for _, u := range h.Upstreams {
		ups = append(ups, *u)
	}
	for i := range ups {
		ups[i].To = repl.ReplaceAll(ups[i].To, "")
		ups[i].APIKey = repl.ReplaceAll(orDefault(ups[i].APIKey, h.APIKey), "")
		ups[i].Auth = orDefault(orDefault(ups[i].Auth, h.Auth), upstream.AuthBearer)
		if _, err := upstream.ParseAuth(ups[i].Auth); err != nil {
			return fmt.Errorf("llm_proxy: %w", err)
		}
	}
	firstChunk := durationOr(t.FirstChunk, defaultFirstChunk)
	idle := durationOr(t.Idle, defaultIdle)
	total := durationOr(t.Total, defaultTotal)
	dial := durationOr(t.Dial, defaultDial)

	// Everything that shapes the pool's members is in its key, hashed so
	// that no key sits in the pool's map in clear.
	id, _ := json.Marshal(struct {
		Ups                     []UpstreamConfig
		Header                  http.Header
		Policy                  upstream.Policy
		Check                   caddy.Duration
		First, Idle, Total, Dia time.Duration
		MaxLine                 int
	}{ups, header, policy, h.HealthCheck, firstChunk, idle, total, dial, h.MaxEventSize})
	sum := sha256.Sum256(id)
	h.poolKey = "llm_proxy:" + hex.EncodeToString(sum[:])

	val, _, err := upstreamPools.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
		p := &pooledUpstreams{pool: &upstream.Pool{Policy: policy, MaxFails: 3}}
		// One transport for plain upstreams, one for h2c:// ones.
		clients := map[bool]*http.Client{}
		clientFor := func(h2c bool) *http.Client {
			if c := clients[h2c]; c != nil {
				return c
			}
			t := upstream.NewTransport(dial)
			if h2c {
				t = upstream.NewH2CTransport(dial)
			}
			p.transports = append(p.transports, t)
			clients[h2c] = upstream.NewHTTPClient(t)
			return clients[h2c]
		}
		for _, u := range ups {
			base, h2c := upstream.CutH2C(u.To)
			client := clientFor(h2c)
			p.pool.Members = append(p.pool.Members, &upstream.Member{
				Client: &upstream.Client{
					HTTP: client, BaseURL: base, Name: upstream.Label(base), APIKey: u.APIKey, Auth: u.Auth, Header: header,
					FirstChunk: firstChunk, Idle: idle, Total: total, MaxLine: h.MaxEventSize,
				},
				Weight: u.Weight,
				Models: u.Models,
			})
		}
		p.models = &upstream.ModelList{Pool: p.pool}
		checkCtx, stop := context.WithCancel(context.Background())
		p.stop = stop
		if h.HealthCheck > 0 && len(p.pool.Members) > 0 {
			p.wg.Add(1)
			go p.healthChecks(checkCtx, time.Duration(h.HealthCheck), h.logger)
		}
		return p, nil
	})
	if err != nil {
		return err
	}
	h.pool, h.modelList = val.(*pooledUpstreams).pool, val.(*pooledUpstreams).models
	return nil
}

// healthChecks fetches each upstream's model list every interval and
// logs when an upstream goes down or comes back.
func (p *pooledUpstreams) healthChecks(ctx context.Context, every time.Duration, log *zap.Logger) {
	defer p.wg.Done()
	tick := time.NewTicker(every)
	defer tick.Stop()
	up := make([]bool, len(p.pool.Members))
	for i := range up {
		up[i] = true
	}
	for {
		for i, m := range p.pool.Members {
			cctx, cancel := context.WithTimeout(ctx, every)
			err := m.Check(cctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			p.pool.MarkHealth(m, err == nil, time.Now(), every)
			if (err == nil) != up[i] {
				up[i] = err == nil
				if err != nil {
					log.Warn("upstream failed its health check", zap.String("upstream", m.Name), zap.Error(err))
				} else {
					log.Info("upstream passed its health check again", zap.String("upstream", m.Name))
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
