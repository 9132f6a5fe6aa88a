package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/llmstream/caddy-llmstream/ratelimit"
)

// limiters holds each limit's counters across config reloads, keyed by the
// limit's identity and settings.
var limiters = caddy.NewUsagePool()

// pooledLimiter is what limiters holds.
type pooledLimiter struct{ *ratelimit.Limiter }

// Destruct stops the memory store's sweeper or closes the redis connections.
func (p pooledLimiter) Destruct() error { return p.Close() }

// identify names the limit of one rate_limit directive: its zone if it has
// one, else the directive and a hash of the owner's config, plus a sequence
// number when one config has several identical directives (they differ only
// in their matchers, which the handler cannot see). Separate directives then
// never share counters by accident, while a reload of the same config finds
// its counters again. settingsID is the hash of the limit's settings, which
// the directives sharing a zone must agree on.
func identify(ctx caddy.Context, directive string, owner any, zone, settingsID string) (string, error) {
	load := loadOf(ctx)
	if zone != "" {
		return "zone:" + zone, load.claimZone(zone, settingsID)
	}
	ownerJSON, err := json.Marshal(owner)
	if err != nil {
		return "", fmt.Errorf("rate_limit: identifying the directive: %w", err)
	}
	return load.nth(directive + ":" + shortHash(ownerJSON)), nil
}

// shortHash is 128 bits of SHA-256 in hex: enough to tell configs or keys
// apart, and it keeps secrets in them out of pool and store keys.
func shortHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// loads tracks the config being loaded, keyed by its context's Done channel,
// which every module of one load shares: it numbers identical directives and
// checks that a zone's directives agree. An entry goes when its load's
// context is cancelled, as the config is unloaded.
var (
	loadsMu sync.Mutex
	loads   = map[<-chan struct{}]*configLoad{}
)

type configLoad struct {
	mu    sync.Mutex
	seen  map[string]int    // identity -> directives provisioned with it
	zones map[string]string // zone -> its settings' hash
}

func loadOf(ctx caddy.Context) *configLoad {
	done := ctx.Done()
	if done == nil { // a context that never ends: no load to share
		return new(configLoad)
	}
	loadsMu.Lock()
	defer loadsMu.Unlock()
	l := loads[done]
	if l == nil {
		l = new(configLoad)
		loads[done] = l
		context.AfterFunc(ctx, func() {
			loadsMu.Lock()
			delete(loads, done)
			loadsMu.Unlock()
		})
	}
	return l
}

// nth returns identity for its first directive in this load, identity#2 for
// the second, and so on.
func (l *configLoad) nth(identity string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string]int{}
	}
	l.seen[identity]++
	if n := l.seen[identity]; n > 1 {
		return identity + "#" + strconv.Itoa(n)
	}
	return identity
}

func (l *configLoad) claimZone(zone, settings string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.zones == nil {
		l.zones = map[string]string{}
	}
	if prev, ok := l.zones[zone]; ok && prev != settings {
		return fmt.Errorf("rate_limit: zone %q is used with different settings: directives sharing a zone must have identical rate_limit settings", zone)
	}
	l.zones[zone] = settings
	return nil
}
