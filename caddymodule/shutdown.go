package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

// errShuttingDown ends streams when the process exits.
var errShuttingDown = errors.New("server is shutting down")

// exitWatches maps each *http.Server to a context cancelled when that
// server shuts down because the process exits.
var exitWatches sync.Map

// exitContext returns a context that is cancelled when the server serving r
// shuts down because Caddy is exiting, or nil outside a server.
//
// Caddy waits for active requests before it exits (forever, without a
// grace period), and only then cleans up modules, so a handler's Cleanup
// comes too late to end an endless stream. A config reload is not an exit:
// open streams go on under the old config while its grace period lasts.
func exitContext(r *http.Request) context.Context {
	srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server)
	if !ok || srv == nil {
		return nil
	}
	if v, ok := exitWatches.Load(srv); ok {
		return v.(context.Context)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	if v, loaded := exitWatches.LoadOrStore(srv, ctx); loaded {
		cancel(nil)
		return v.(context.Context)
	}
	srv.RegisterOnShutdown(func() {
		exitWatches.Delete(srv)
		if caddy.Exiting() {
			cancel(errShuttingDown)
		}
	})
	return ctx
}

// untilExit derives from r's context one that also ends with
// errShuttingDown when the process exits. Call stop when done.
func untilExit(r *http.Request) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(r.Context())
	ec := exitContext(r)
	if ec == nil {
		return ctx, func() { cancel(nil) }
	}
	unhook := context.AfterFunc(ec, func() { cancel(errShuttingDown) })
	return ctx, func() { unhook(); cancel(nil) }
}
