package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/llmstream/caddy-llmstream/capture"
	"github.com/llmstream/caddy-llmstream/guard"
	"github.com/llmstream/caddy-llmstream/web"
)

func init() {
	caddy.RegisterModule(DesktopStream{})
}

// DesktopStream streams a display of the machine Caddy runs on as MJPEG
// (multipart/x-mixed-replace), which an <img> shows as live video.
//
//	GET <path>           the stream
//	GET <path>?snapshot  one JPEG of the latest frame
//	GET <path>?view      a viewer page: the stream, a snapshot button, reconnection
//
// All viewers of the same display with the same fps, quality and max_width
// share one capture-and-encode loop, which runs only while someone watches
// and survives config reloads. Without allow_remote only loopback clients
// asking for a loopback name (or one of allowed_hosts) are served; to serve
// others, put basic_auth (or another authentication) in front.
type DesktopStream struct {
	// Display is the index of the display to capture, 0 for the primary
	// one. Default: 0.
	Display int `json:"display,omitempty"`

	// FPS is how many times a second the screen is grabbed, 1-60. Frames of
	// an unchanged screen are not sent again, except once every 2 seconds
	// as a keepalive. Default: 10.
	FPS int `json:"fps,omitempty"`

	// Quality is the JPEG quality, 1-100. Default: 70.
	Quality int `json:"quality,omitempty"`

	// MaxWidth scales screens wider than this many pixels down to it,
	// keeping the aspect ratio. Default: 0, the native size.
	MaxWidth int `json:"max_width,omitempty"`

	// MaxViewers caps the number of concurrent streams of this handler;
	// further viewers get 503. Snapshots and the viewer page do not count.
	// Default: 0, no cap.
	MaxViewers int `json:"max_viewers,omitempty"`

	// AllowRemote serves clients that are not on the loopback interface.
	// Without it they get 403. Default: false.
	AllowRemote bool `json:"allow_remote,omitempty"`

	// AllowedHosts are host names, without port, that requests may name in
	// their Host besides loopback's (localhost, 127.0.0.0/8, [::1]), with
	// any port. Without allow_remote, any other Host gets 403, so that a
	// web page that DNS rebinding points at 127.0.0.1 cannot read the
	// screen; with allow_remote it does not apply and may not be set.
	// Default: none.
	AllowedHosts []string `json:"allowed_hosts,omitempty"`

	// Per-client rate limit, checked after the access checks. Snapshots
	// and the viewer page count too.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// StallTimeout drops a viewer that took no whole frame for this long,
	// counted from when it last had taken every frame sent: on Linux over
	// TCP, when the client's TCP acknowledged them, so that socket buffers
	// cannot hide a client that stopped reading; elsewhere, when their
	// write returned. Default: 10s.
	StallTimeout caddy.Duration `json:"stall_timeout,omitempty"`

	logger  *zap.Logger
	key     hubKey
	hub     *capture.Hub // nil until Provision took it from hubs
	page    []byte
	viewers *atomic.Int64 // a pointer: CaddyModule's value receiver copies the struct

	// stopCtx is cancelled when this config's servers shut down or the
	// module is cleaned up, whichever comes first; streams end with it.
	stopCtx context.Context
	stop    context.CancelCauseFunc
}

// hubKey identifies a capture loop: viewers with equal settings share one.
type hubKey struct {
	display, fps, quality, maxWidth int
}

// hubs holds the capture loops in use, across config reloads.
var hubs = caddy.NewUsagePool()

var errCleanedUp = errors.New("handler cleaned up")

const (
	defaultFPS     = 10
	defaultQuality = 70

	defaultStallTimeout = 10 * time.Second

	// firstFrameTimeout bounds the wait for the first frame: a DISPLAY on
	// an unreachable host can hold a connection attempt for minutes.
	firstFrameTimeout = 5 * time.Second
)

// Test hooks.
var (
	newGrabber = func(display int) capture.Grabber { return capture.NewScreen(display) }
	// countDisplays tells how many displays there are, or why it cannot.
	countDisplays = capture.Displays
)

// CaddyModule returns the Caddy module information.
func (DesktopStream) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.desktop_stream",
		New: func() caddy.Module { return new(DesktopStream) },
	}
}

// Provision applies the defaults and takes this setting's capture loop from
// the pool. It does not touch the display: Caddy must start without one.
func (ds *DesktopStream) Provision(ctx caddy.Context) error {
	ds.logger = ctx.Logger()
	if ds.RateLimit != nil {
		if err := ds.RateLimit.Provision(ctx, "desktop_stream", ds); err != nil {
			return fmt.Errorf("desktop_stream: %w", err)
		}
	}
	ds.viewers = new(atomic.Int64)
	if ds.FPS == 0 {
		ds.FPS = defaultFPS
	}
	if ds.Quality == 0 {
		ds.Quality = defaultQuality
	}
	if ds.StallTimeout == 0 {
		ds.StallTimeout = caddy.Duration(defaultStallTimeout)
	}
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		srv.RegisterConnContext(withConn) // for the stall clock
	}

	// Streams never end by themselves: every shutdown of the server, a
	// reload's too, must end them (see errShuttingDown).
	ds.stopCtx, ds.stop = stopOnShutdown(ctx)

	page, err := web.Files.ReadFile("desktop.html")
	if err != nil {
		return fmt.Errorf("reading the viewer page: %w", err)
	}
	ds.page = page

	ds.key = hubKey{ds.Display, ds.FPS, ds.Quality, ds.MaxWidth}
	display := ds.Display
	v, _, err := hubs.LoadOrNew(ds.key, func() (caddy.Destructor, error) {
		// The hub outlives this config, so it logs through Caddy's default
		// logger rather than this module's, whose sinks a reload may close.
		log := caddy.Log().Named("http.handlers.desktop_stream")
		return capture.NewHub(newGrabber(display), capture.Options{
			FPS:      ds.FPS,
			Quality:  ds.Quality,
			MaxWidth: ds.MaxWidth,
			OnFailure: func(err error) {
				log.Error("screen capture failing", zap.Int("display", display), zap.Error(err))
			},
			OnRecovery: func() {
				log.Info("screen capture recovered", zap.Int("display", display))
			},
		}), nil
	})
	if err != nil {
		return err
	}
	ds.hub = v.(*capture.Hub)
	return nil
}

// Validate checks the ranges, and that the display exists when a display
// can be reached at all.
func (ds *DesktopStream) Validate() error {
	for _, c := range []struct {
		name      string
		v, lo, hi int
	}{
		{"display", ds.Display, 0, 1 << 10},
		{"fps", ds.FPS, 1, 60},
		{"quality", ds.Quality, 1, 100},
		{"max_width", ds.MaxWidth, 0, 1 << 16},
		{"max_viewers", ds.MaxViewers, 0, 1 << 20},
	} {
		if c.v < c.lo || c.v > c.hi {
			return fmt.Errorf("%s %d out of range %d-%d", c.name, c.v, c.lo, c.hi)
		}
	}
	if ds.StallTimeout < 0 {
		return fmt.Errorf("stall_timeout %v is negative", time.Duration(ds.StallTimeout))
	}
	if ds.AllowRemote && len(ds.AllowedHosts) > 0 {
		return errors.New("allowed_hosts applies only without allow_remote")
	}
	if n, err := countDisplays(); err == nil && ds.Display >= n {
		return fmt.Errorf("display %d does not exist: there are %d", ds.Display, n)
	}
	return nil
}

// Cleanup ends this handler's streams and releases its capture loop, which
// stops when no other config uses it.
func (ds *DesktopStream) Cleanup() error {
	if ds.stop != nil {
		ds.stop(errCleanedUp)
	}
	if ds.RateLimit != nil {
		if err := ds.RateLimit.Cleanup(); err != nil {
			return err
		}
	}
	if ds.hub == nil {
		return nil
	}
	ds.hub = nil
	_, err := hubs.Delete(ds.key)
	return err
}

// ServeHTTP serves the stream, a snapshot or the viewer page. It ends the
// chain: next is not called.
func (ds *DesktopStream) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")

	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		return plainError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed")
	}
	if !ds.AllowRemote {
		if !fromLoopback(r) {
			return plainError(w, http.StatusForbidden, "only loopback clients are served (see allow_remote)")
		}
		if !guard.LoopbackHost(r.Host, ds.AllowedHosts) {
			return plainError(w, http.StatusForbidden, fmt.Sprintf("host %q is not a loopback name (see allowed_hosts)", r.Host))
		}
	}
	if ds.RateLimit != nil {
		release, refused := ds.RateLimit.Admit(w, r)
		if refused != nil {
			return plainError(w, refused.Status, refused.Message)
		}
		defer release()
	}

	q := r.URL.Query()
	switch {
	case q.Has("view"):
		return ds.serveViewer(w)
	case q.Has("snapshot"):
		return ds.serveSnapshot(w, r)
	default:
		return ds.serveStream(w, r)
	}
}

// plainError answers with a plain-text message rather than returning a
// caddyhttp.Error: Caddy's default error response has no body, and the
// message (which display problem, which limit) is what the viewer page
// shows.
func plainError(w http.ResponseWriter, status int, msg string) error {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, "desktop_stream: "+msg)
	return nil
}

// fromLoopback tells whether the direct peer is on the loopback interface,
// and so is the client it forwards for, if the server's trusted_proxies
// trust it (see clientAddr): a local proxy in front must not make every
// client local, nor a client that writes 127.0.0.1 into X-Forwarded-For.
func fromLoopback(r *http.Request) bool {
	return remoteAddr(r).IsLoopback() && clientAddr(r).IsLoopback()
}

func (ds *DesktopStream) serveViewer(w http.ResponseWriter) error {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; img-src 'self' blob:; connect-src 'self'; "+
		"style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Length", strconv.Itoa(len(ds.page)))
	_, err := w.Write(ds.page)
	return err
}

// join adds a viewer to the hub and waits for its first frame.
func (ds *DesktopStream) join(ctx context.Context) (*capture.Viewer, *capture.Frame, error) {
	v, err := ds.hub.Join()
	if err != nil {
		return nil, nil, err
	}
	first, cancel := context.WithTimeoutCause(ctx, firstFrameTimeout,
		fmt.Errorf("no frame from display %d within %v", ds.Display, firstFrameTimeout))
	defer cancel()
	f, err := v.Next(first)
	if err != nil {
		v.Leave()
		return nil, nil, err
	}
	return v, f, nil
}

// unavailable answers 503 for a capture that could not start, unless the
// client left, which needs no answer.
func (ds *DesktopStream) unavailable(w http.ResponseWriter, r *http.Request, err error) error {
	if r.Context().Err() != nil {
		return nil
	}
	if c := ds.logger.Check(zapcore.DebugLevel, "no frame to serve"); c != nil {
		c.Write(zap.Error(err))
	}
	return plainError(w, http.StatusServiceUnavailable, err.Error())
}

func (ds *DesktopStream) serveSnapshot(w http.ResponseWriter, r *http.Request) error {
	ctx, release := until(r, ds.stopCtx)
	v, f, err := ds.join(ctx)
	release()
	if err != nil {
		return ds.unavailable(w, r, err)
	}
	v.Leave()
	h := w.Header()
	h.Set("Content-Type", "image/jpeg")
	h.Set("Content-Length", strconv.Itoa(len(f.JPEG)))
	_, err = w.Write(f.JPEG)
	return err
}

func (ds *DesktopStream) serveStream(w http.ResponseWriter, r *http.Request) error {
	if n := ds.viewers.Add(1); ds.MaxViewers > 0 && n > int64(ds.MaxViewers) {
		ds.viewers.Add(-1)
		return plainError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many viewers (max_viewers %d)", ds.MaxViewers))
	}
	defer ds.viewers.Add(-1)

	ctx, release := until(r, ds.stopCtx)
	defer release()
	v, f, err := ds.join(ctx)
	if err != nil {
		return ds.unavailable(w, r, err)
	}
	defer v.Leave()

	w.Header().Set("Content-Type", capture.StreamContentType)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}

	// The write deadline is not cleared when the stream ends: every end
	// breaks the connection (the client left, or the aborts below).
	rc := http.NewResponseController(w)
	conn := tcpConn(r)
	clock := stallClock{timeout: time.Duration(ds.StallTimeout), p: newProgress(conn), since: time.Now()}
	pw := capture.NewPartWriter(w)
	for {
		switch err := ds.sendFrame(pw, rc, &clock, f, r.ProtoMajor); {
		case errors.Is(err, errStalled):
			ds.dropStalled(r, rc, conn, clock.since)
		case err != nil:
			return nil // the client is gone; there is no one to tell
		}
		if f, err = v.Next(ctx); err != nil {
			break
		}
	}
	if r.Context().Err() != nil {
		return nil
	}

	// The capture failed or the server is stopping: end the multipart body
	// properly, then break the connection. Browsers fire no event for a
	// multipart image that ends after its first frame; a broken one at
	// least drops its picture, which the viewer page watches for to
	// reconnect.
	cause := context.Cause(ctx)
	if cause == nil {
		cause = err
	}
	if c := ds.logger.Check(zapcore.DebugLevel, "ending stream"); c != nil {
		c.Write(zap.Error(cause))
	}
	_ = rc.SetWriteDeadline(clock.deadline(time.Now())) // a stalled viewer must not hold the shutdown
	_ = pw.Close()
	_ = rc.Flush()
	panic(http.ErrAbortHandler)
}

// errStalled is sendFrame's verdict on a viewer that took no whole frame
// within stall_timeout.
var errStalled = errors.New("viewer stalled")

// sendFrame writes and flushes one frame under the stall clock, and notes
// it sent.
func (ds *DesktopStream) sendFrame(pw *capture.PartWriter, rc *http.ResponseController, clock *stallClock, f *capture.Frame, proto int) error {
	now := time.Now()
	deadline := clock.deadline(now)
	if !now.Before(deadline) {
		return errStalled
	}
	// The deadline bounds a write that blocks; not every writer supports
	// one.
	_ = rc.SetWriteDeadline(deadline)
	err := pw.WriteFrame(f.JPEG)
	if err == nil {
		err = rc.Flush()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errStalled
	}
	if err != nil {
		return err
	}
	clock.p.sent()
	if proto == 2 {
		// On HTTP/2 a write deadline is a timer that resets the stream
		// even between writes, as while the screen is still.
		_ = rc.SetWriteDeadline(time.Time{})
	}
	return nil
}

// dropStalled ends the stream of a viewer that has taken no whole frame
// since since. It breaks the response, since the viewer would not read its
// end, and on HTTP/1 resets the connection rather than closing it: a
// closed one keeps in the kernel what the client never read, and net/http
// would flush into it. It does not return.
func (ds *DesktopStream) dropStalled(r *http.Request, rc *http.ResponseController, conn *net.TCPConn, since time.Time) {
	if c := ds.logger.Check(zapcore.DebugLevel, "dropping a stalled viewer"); c != nil {
		c.Write(zap.String("remote_addr", r.RemoteAddr), zap.Duration("stalled_for", time.Since(since)))
	}
	_ = rc.SetWriteDeadline(time.Now())
	if conn != nil && r.ProtoMajor == 1 {
		_ = conn.SetLinger(0)
	}
	panic(http.ErrAbortHandler)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*DesktopStream)(nil)
	_ caddy.Validator             = (*DesktopStream)(nil)
	_ caddy.CleanerUpper          = (*DesktopStream)(nil)
	_ caddyhttp.MiddlewareHandler = (*DesktopStream)(nil)
	_ caddy.Destructor            = (*capture.Hub)(nil)
)
