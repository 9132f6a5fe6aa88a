package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// errShuttingDown ends streams when their server shuts down.
//
// Caddy waits for active requests before a server is done shutting down
// (forever, without a grace period), and only then cleans up modules, so a
// handler's Cleanup comes too late to end a stream: the stream's context
// must end when the shutdown begins. Handlers differ only in which
// shutdowns end their streams:
//
//   - untilExit, for streams that end by themselves (llm_proxy): only the
//     process exiting. On a config reload, open streams go on under the old
//     config while its grace period lasts.
//   - stopOnShutdown, for streams that never end (desktop_stream): every
//     shutdown of the module's server, a reload's too, or the old config
//     would never finish.
var errShuttingDown = errors.New("server is shutting down")

// exitWatches maps each *http.Server to a context cancelled when that
// server shuts down because the process exits.
var exitWatches sync.Map

// exitContext returns a context that is cancelled with errShuttingDown when
// the server serving r shuts down because Caddy is exiting, or nil outside
// a server.
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
	return until(r, exitContext(r))
}

// stopOnShutdown returns a context cancelled with errShuttingDown when the
// server that ctx provisions a module for begins to shut down, and the
// func that cancels it sooner, as a module's Cleanup does.
func stopOnShutdown(ctx caddy.Context) (context.Context, context.CancelCauseFunc) {
	stopCtx, stop := context.WithCancelCause(context.Background())
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		srv.RegisterOnShutdown(func() { stop(errShuttingDown) })
	}
	return stopCtx, stop
}

// until derives from r's context one that also ends, with its cause, when
// ended does (if not nil). Call stop when done.
func until(r *http.Request, ended context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(r.Context())
	if ended == nil {
		return ctx, func() { cancel(nil) }
	}
	unhook := context.AfterFunc(ended, func() { cancel(context.Cause(ended)) })
	return ctx, func() { unhook(); cancel(nil) }
}
