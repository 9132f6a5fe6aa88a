package caddymodule

import (
	"github.com/redis/go-redis/v9"

	"github.com/llmstream/caddy-llmstream/resume"
)

// newRedisStore is resume's store on Redis.
func newRedisStore(c *redis.Client, opts resume.Options, logf func(string, ...any)) resume.Store {
	panic("TEMP")
}
