// Command caddy is what `xcaddy build --with github.com/llmstream/caddy-llmstream/caddymodule`
// would generate: Caddy's standard modules plus ours, so `go run ./cmd/caddy` works without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/llmstream/caddy-llmstream/caddymodule"
)

func main() {
	caddycmd.Main()
}
