package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/llmstream/caddy-llmstream/resume"
)

// ResumeConfig keeps the events of streamed completions so that a client
// whose connection dropped resumes its stream: it reads what it missed,
// then the rest live, and the upstream is asked once. See the README's
// "Resuming streams" for the wire protocol.
type ResumeConfig struct {
	// How long a stream's events are kept after it ends. Default: 5m.
	TTL caddy.Duration `json:"ttl,omitempty"`
	// Where streams are kept: memory (this instance) or redis (shared by
	// every instance on the same Redis). Default: memory.
	Store string `json:"store,omitempty"`
	// The Redis URL (redis://[user:pass@]host:port/db) of store redis.
	// Placeholders are expanded when the config loads.
	RedisURL string `json:"redis_url,omitempty"`
	// The most bytes of events kept per stream; past it the oldest are
	// dropped and a resume that needs them is refused. Default: 1 MiB.
	MaxBytes int64 `json:"max_bytes,omitempty"`
	// The most streams kept at once (open and ended); past it new
	// streams are not resumable. Default: 10000.
	MaxStreams int `json:"max_streams,omitempty"`
	// How long the upstream keeps generating with no client connected;
	// then it is cancelled. Default: 30s.
	Grace *caddy.Duration `json:"grace,omitempty"`
	// Let anyone who presents a stream's ID resume or cancel it. Default:
	// only the client that started it (by its rate-limit key, or address).
	AnyoneWithID bool `json:"anyone_with_id,omitempty"`

	store resume.Store
	key   string
}

// Defaults of resume.
const (
	defaultResumeTTL   = 5 * time.Minute
	defaultResumeBytes = 1 << 20
	defaultResumeMax   = 10000
	defaultResumeGrace = 30 * time.Second
	// resumeFirstWait is how long a resume waits for its first event
	// before its headers go out: an ended stream is answered 204.
	resumeFirstWait = time.Second
	// resumeRetry is how long an EventSource waits before it reconnects
	// to a resumable stream (the SSE retry field; browsers wait 3s
	// without it).
	resumeRetry = time.Second
)

// resumeStores keeps each configuration's store across config reloads, so
// that a reload neither drops the streams kept nor opens a second Redis
// client.
var resumeStores = caddy.NewUsagePool()

type pooledStore struct{ resume.Store }

func (p pooledStore) Destruct() error { return p.Close() }

// provision opens (or shares) the store.
func (rc *ResumeConfig) provision(ctx caddy.Context, log *zap.Logger) error {
	repl := caddy.NewReplacer()
	rc.RedisURL = repl.ReplaceAll(rc.RedisURL, "")
	switch rc.Store {
	case "", "memory":
		rc.Store = "memory"
	case "redis":
		if rc.RedisURL == "" {
			return errors.New("resume: store redis needs a URL")
		}
	default:
		return fmt.Errorf("resume: unknown store %q: want memory or redis", rc.Store)
	}
	if rc.MaxBytes < 0 || rc.MaxStreams < 0 || rc.TTL < 0 || rc.Grace != nil && *rc.Grace < 0 {
		return errors.New("resume: sizes and durations must not be negative")
	}
	opts := resume.Options{
		TTL:        orDuration(time.Duration(rc.TTL), defaultResumeTTL),
		MaxBytes:   int(orInt64(rc.MaxBytes, defaultResumeBytes)),
		Grace:      durationOr(rc.Grace, defaultResumeGrace),
		MaxStreams: int(orInt64(int64(rc.MaxStreams), defaultResumeMax)),
	}
	id, _ := json.Marshal(struct {
		Store, URL string
		Opts       resume.Options
	}{rc.Store, rc.RedisURL, opts})
	sum := sha256.Sum256(id)
	rc.key = "resume:" + hex.EncodeToString(sum[:])
	val, _, err := resumeStores.LoadOrNew(rc.key, func() (caddy.Destructor, error) {
		if rc.Store == "memory" {
			return pooledStore{resume.NewMemory(opts)}, nil
		}
		o, err := redis.ParseURL(rc.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("resume: bad redis URL: %w", err)
		}
		o.ContextTimeoutEnabled = true // the store's deadlines bound a hung Redis too
		logf := func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...)) }
		return pooledStore{resume.NewRedis(redis.NewClient(o), "llmstream:resume:", opts, logf)}, nil
	})
	if err != nil {
		return err
	}
	rc.store = val.(pooledStore).Store
	return nil
}

// cleanup lets go of this configuration's hold on the store.
func (rc *ResumeConfig) cleanup() {
	if rc != nil && rc.key != "" {
		_, _ = resumeStores.Delete(rc.key)
	}
}

// parseResume reads
//
//	resume [<ttl>] {
//		store memory|redis <url>
//		max_bytes <size>
//		max_streams <n>
//		grace <duration>
//		anyone_with_id
//	}
func parseResume(d *caddyfile.Dispenser) (*ResumeConfig, error) {
	rc := new(ResumeConfig)
	if d.NextArg() {
		var err error
		if rc.TTL, err = parseDuration(d, "resume", d.Val(), "a duration such as 5m"); err != nil {
			return nil, err
		}
		if err := noArgs(d); err != nil {
			return nil, err
		}
	}
	return rc, block(d, "resume", func(name string) (err error) {
		switch name {
		case "store":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1 && args[0] == "memory":
				rc.Store = "memory"
			case len(args) == 2 && args[0] == "redis":
				rc.Store, rc.RedisURL = "redis", args[1]
			case len(args) == 0 || len(args) > 2:
				err = d.ArgErr()
			default:
				err = badArg(d, name, args[0], "memory, or redis <url>")
			}
		case "max_bytes":
			rc.MaxBytes, err = sizeArg(d)
		case "max_streams":
			rc.MaxStreams, err = intArg(d, 1, unbounded)
		case "grace":
			var g caddy.Duration
			g, err = durationArg(d)
			rc.Grace = &g
		case "anyone_with_id":
			rc.AnyoneWithID, err = true, noArgs(d)
		default:
			err = errUnknown
		}
		return err
	})
}

func orDuration(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func orInt64(n, def int64) int64 {
	if n == 0 {
		return def
	}
	return n
}

// detached is a request context for a stream that outlives its client:
// its values (the replacer, the logger's fields) without its end.
func detached(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }
