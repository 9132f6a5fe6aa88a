package caddymodule

import (
	"context"
	"net"
	"net/http"
	"time"
)

// A viewer that stops reading must not hold its slot (max_viewers), its
// handler and Caddy's shutdown for long. A write deadline alone does not
// see it: the kernel's socket buffers, megabytes on a fast link, take in
// frames for minutes before a write blocks. So each viewer is timed by the
// last moment it was known to have taken whole every frame sent; on Linux
// over TCP that is when the client's TCP acknowledged the last byte of the
// frames (see tcpProgress), elsewhere when a frame's write and flush
// returned.

// progress tells whether a viewer has taken the frames sent to it.
type progress interface {
	// sent notes that a frame was written and flushed.
	sent()
	// caughtUp tells whether the viewer has taken every frame noted.
	caughtUp() bool
}

// flushed is the progress of a connection we cannot look into: a frame
// whose flush returned counts as taken.
type flushed struct{}

func (flushed) sent()          {}
func (flushed) caughtUp() bool { return true }

// stallClock times one viewer.
type stallClock struct {
	timeout time.Duration
	p       progress
	since   time.Time // the viewer had taken every frame sent
}

// deadline returns the time by which the viewer must next be seen caught
// up, noting whether it is now.
func (c *stallClock) deadline(now time.Time) time.Time {
	if c.p.caughtUp() {
		c.since = now
	}
	return c.since.Add(c.timeout)
}

// connCtxKey holds the connection a request came on; see withConn.
type connCtxKey struct{}

// withConn is a server's ConnContext hook (RegisterConnContext): it keeps
// the connection for desktop_stream, which asks its kernel how far the
// client got. Several handlers of a server register it; the first wins.
func withConn(ctx context.Context, c net.Conn) context.Context {
	if _, ok := ctx.Value(connCtxKey{}).(net.Conn); ok {
		return ctx
	}
	return context.WithValue(ctx, connCtxKey{}, c)
}

// tcpConn returns the TCP connection r came on, under TLS or a listener
// wrapper's conn, or nil if it has none (HTTP/3, a Unix socket) or the
// server did not keep it.
func tcpConn(r *http.Request) *net.TCPConn {
	c, _ := r.Context().Value(connCtxKey{}).(net.Conn)
	for range 8 { // wrappers of wrappers, but not forever
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = x.NetConn()
		case interface{ Raw() net.Conn }: // proxy_protocol's
			c = x.Raw()
		default:
			return nil
		}
	}
	return nil
}
