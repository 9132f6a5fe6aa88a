package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/goleak"

	"github.com/llmstream/caddy-llmstream/capture"
	"github.com/llmstream/caddy-llmstream/capture/mjpegtest"
)

func TestDesktopStreamCaddyfile(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     DesktopStream
		err      string
	}{
		{name: "bare", in: `desktop_stream`},
		{name: "empty block", in: `desktop_stream {
		}`},
		{name: "all", in: `desktop_stream {
			display 1
			fps 25
			quality 85
			max_width 1280
			max_viewers 3
			allow_remote
		}`, want: DesktopStream{Display: 1, FPS: 25, Quality: 85, MaxWidth: 1280, MaxViewers: 3, AllowRemote: true}},
		{name: "allowed_hosts", in: `desktop_stream {
			allowed_hosts desktop.lan Screen.Example 192.0.2.7 [2001:db8::7] 2001:db8::8
		}`, want: DesktopStream{AllowedHosts: []string{"desktop.lan", "Screen.Example", "192.0.2.7", "[2001:db8::7]", "2001:db8::8"}}},
		{name: "stall_timeout", in: `desktop_stream {
			stall_timeout 1m30s
		}`, want: DesktopStream{StallTimeout: caddy.Duration(90 * time.Second)}},
		{name: "bounds", in: `desktop_stream {
			fps 60
			quality 1
		}`, want: DesktopStream{FPS: 60, Quality: 1}},

		{name: "argument", in: `desktop_stream :0`, err: "wrong argument count"},
		{name: "unknown", in: `desktop_stream {
			framerate 10
		}`, err: "desktop_stream: unknown subdirective framerate"},
		{name: "rate_limit bad rate", in: `desktop_stream {
			rate_limit 10
		}`, err: "rate_limit"},
		{name: "duplicate", in: `desktop_stream {
			fps 10
			fps 20
		}`, err: "desktop_stream: duplicate subdirective fps"},
		{name: "duplicate flag", in: `desktop_stream {
			allow_remote
			allow_remote
		}`, err: "desktop_stream: duplicate subdirective allow_remote"},
		{name: "not a number", in: `desktop_stream {
			fps ten
		}`, err: `bad fps "ten": want an integer from 1 to 60`},
		{name: "fps zero", in: `desktop_stream {
			fps 0
		}`, err: `bad fps "0": want an integer from 1 to 60`},
		{name: "fps too high", in: `desktop_stream {
			fps 61
		}`, err: `bad fps "61"`},
		{name: "quality too high", in: `desktop_stream {
			quality 101
		}`, err: `bad quality "101": want an integer from 1 to 100`},
		{name: "negative display", in: `desktop_stream {
			display -1
		}`, err: `bad display "-1"`},
		{name: "zero max_width", in: `desktop_stream {
			max_width 0
		}`, err: `bad max_width "0"`},
		{name: "zero max_viewers", in: `desktop_stream {
			max_viewers 0
		}`, err: `bad max_viewers "0"`},
		{name: "float", in: `desktop_stream {
			quality 70.5
		}`, err: `bad quality "70.5"`},
		{name: "missing value", in: `desktop_stream {
			quality
		}`, err: "wrong argument count"},
		{name: "two values", in: `desktop_stream {
			max_width 800 600
		}`, err: "wrong argument count"},
		{name: "allowed_hosts without names", in: `desktop_stream {
			allowed_hosts
		}`, err: "wrong argument count"},
		{name: "allowed_hosts with a port", in: `desktop_stream {
			allowed_hosts desktop.lan:8080
		}`, err: `bad allowed_hosts "desktop.lan:8080": want a host name without scheme or port`},
		{name: "allowed_hosts with a scheme", in: `desktop_stream {
			allowed_hosts desktop.lan http://desktop.lan
		}`, err: `bad allowed_hosts "http://desktop.lan"`},
		{name: "stall_timeout zero", in: `desktop_stream {
			stall_timeout 0
		}`, err: `bad stall_timeout "0": want a duration above 0, such as 10s`},
		{name: "stall_timeout off", in: `desktop_stream {
			stall_timeout off
		}`, err: `bad stall_timeout "off"`},
		{name: "stall_timeout negative", in: `desktop_stream {
			stall_timeout -1s
		}`, err: `bad stall_timeout "-1s"`},
		{name: "flag with value", in: `desktop_stream {
			allow_remote yes
		}`, err: "wrong argument count"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var ds DesktopStream
			err := ds.UnmarshalCaddyfile(caddyfile.NewTestDispenser(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want %q", err, c.err)
				}
				// Errors carry the file and line.
				if !strings.Contains(err.Error(), "Testfile:") {
					t.Errorf("error %q does not say where", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := [...]any{ds.Display, ds.FPS, ds.Quality, ds.MaxWidth, ds.MaxViewers, ds.AllowRemote, fmt.Sprint(ds.AllowedHosts), ds.StallTimeout}
			want := [...]any{c.want.Display, c.want.FPS, c.want.Quality, c.want.MaxWidth, c.want.MaxViewers, c.want.AllowRemote, fmt.Sprint(c.want.AllowedHosts), c.want.StallTimeout}
			if got != want {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
}

// screen is a fake display for the handler: a solid colour, or an error.
type screen struct {
	mu  sync.Mutex
	c   color.RGBA
	err error
}

func (s *screen) Grab() (*image.RGBA, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	img := image.NewRGBA(image.Rect(0, 0, 160, 90))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = s.c.R, s.c.G, s.c.B, 255
	}
	return img, nil
}

func (s *screen) set(c color.RGBA, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c, s.err = c, err
}

// fakeDisplays makes the handler grab from scr and see n displays (or err)
// for the rest of the test.
func fakeDisplays(t *testing.T, scr capture.Grabber, n int, err error) {
	t.Helper()
	g, c := newGrabber, countDisplays
	newGrabber = func(int) capture.Grabber { return scr }
	countDisplays = func() (int, error) { return n, err }
	t.Cleanup(func() { newGrabber, countDisplays = g, c })
}

// provision parses a Caddyfile snippet, provisions and validates the
// handler, and cleans it up when the test ends.
func provision(t *testing.T, in string) *DesktopStream {
	t.Helper()
	ds, err := tryProvision(t, in)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func tryProvision(t *testing.T, in string) (*DesktopStream, error) {
	t.Helper()
	ds := new(DesktopStream)
	if err := ds.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := ds.Provision(ctx); err != nil {
		_ = ds.Cleanup()
		return nil, err
	}
	t.Cleanup(func() { _ = ds.Cleanup() })
	if err := ds.Validate(); err != nil {
		return nil, err
	}
	return ds, nil
}

// serve runs ds behind a real HTTP server, so that streams, aborts and
// flushes behave as they do in Caddy.
func serve(t *testing.T, ds *DesktopStream) (*httptest.Server, *http.Client) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := ds.ServeHTTP(w, r, nil); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
	})
	return srv, &http.Client{Transport: tr}
}

func noLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func centre(img image.Image) color.RGBA {
	b := img.Bounds()
	r, g, bl, _ := img.At((b.Min.X+b.Max.X)/2, (b.Min.Y+b.Max.Y)/2).RGBA()
	return color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8), 255}
}

// near allows for JPEG's loss.
func near(a, b color.RGBA) bool {
	d := func(x, y uint8) bool { return max(int(x)-int(y), int(y)-int(x)) <= 24 }
	return d(a.R, b.R) && d(a.G, b.G) && d(a.B, b.B)
}

var (
	red   = color.RGBA{255, 0, 0, 255}
	green = color.RGBA{0, 255, 0, 255}
	blue  = color.RGBA{0, 0, 255, 255}
)

func TestDesktopStreamProvision(t *testing.T) {
	noLeaks(t)
	fakeDisplays(t, &screen{c: red}, 0, errors.New("no X display: DISPLAY is unset"))

	// Without a display, Caddy still starts: the display is not checked.
	ds := provision(t, `desktop_stream`)
	if ds.FPS != 10 || ds.Quality != 70 || ds.MaxWidth != 0 || ds.MaxViewers != 0 || ds.AllowRemote ||
		time.Duration(ds.StallTimeout) != 10*time.Second {
		t.Fatalf("defaults: %+v", ds)
	}

	// With one, the index is.
	fakeDisplays(t, &screen{c: red}, 2, nil)
	if _, err := tryProvision(t, "desktop_stream {\n display 1\n}"); err != nil {
		t.Fatalf("display 1 of 2: %v", err)
	}
	_, err := tryProvision(t, "desktop_stream {\n display 2\n}")
	if err == nil || err.Error() != "display 2 does not exist: there are 2" {
		t.Fatalf("display 2 of 2: %v", err)
	}

	// JSON skips the Caddyfile's checks; Validate has them too.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	bad := &DesktopStream{FPS: 120}
	if err := bad.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer bad.Cleanup()
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "fps 120 out of range") {
		t.Fatalf("fps 120: %v", err)
	}
	neg := &DesktopStream{StallTimeout: caddy.Duration(-time.Second)}
	if err := neg.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer neg.Cleanup()
	if err := neg.Validate(); err == nil || err.Error() != "stall_timeout -1s is negative" {
		t.Fatalf("stall_timeout -1s: %v", err)
	}
	if _, err := tryProvision(t, "desktop_stream {\n allow_remote\n allowed_hosts desktop.lan\n}"); err == nil ||
		err.Error() != "allowed_hosts applies only without allow_remote" {
		t.Fatalf("allowed_hosts with allow_remote: %v", err)
	}

	// Cleanup works even when Provision never ran.
	if err := new(DesktopStream).Cleanup(); err != nil {
		t.Fatal(err)
	}
}

func TestDesktopStreamSharesLoopAcrossReload(t *testing.T) {
	noLeaks(t)
	fakeDisplays(t, &screen{c: red}, 1, nil)
	old := provision(t, "desktop_stream {\n fps 5\n}")
	// A reload provisions the new config before cleaning up the old one.
	cur := provision(t, "desktop_stream {\n fps 5\n allow_remote\n}")
	other := provision(t, "desktop_stream {\n fps 6\n}")
	if old.hub != cur.hub {
		t.Fatal("equal settings got two capture loops")
	}
	if other.hub == cur.hub {
		t.Fatal("different settings share a capture loop")
	}
	hub := cur.hub
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := hub.Join(); err != nil {
		t.Fatalf("the loop did not survive the old config: %v", err)
	} // the viewer is left joined: Cleanup must stop the loop anyway
	if err := cur.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := hub.Join(); !errors.Is(err, capture.ErrClosed) {
		t.Fatalf("the loop outlived its last config: %v", err)
	}
}

func TestDesktopStreamServesStream(t *testing.T) {
	noLeaks(t)
	scr := &screen{c: red}
	fakeDisplays(t, scr, 1, nil)
	ds := provision(t, `desktop_stream`)
	srv, c := serve(t, ds)

	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := resp.Header
	if resp.StatusCode != 200 || h.Get("Content-Type") != "multipart/x-mixed-replace; boundary=frame" ||
		h.Get("Cache-Control") != "no-store" || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("%s %v", resp.Status, h)
	}
	for k := range h {
		if strings.HasPrefix(k, "Access-Control-") {
			t.Errorf("CORS header %s", k)
		}
	}

	// The raw bytes: the first part with its length, then the delimiter
	// right behind the frame.
	br := bufio.NewReader(resp.Body)
	head := "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
	got := make([]byte, len(head))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != head {
		t.Fatalf("stream starts %q, %v", got, err)
	}
	line, _ := br.ReadString('\n')
	n, err := strconv.Atoi(strings.TrimSuffix(line, "\r\n"))
	if err != nil {
		t.Fatalf("Content-Length line %q", line)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("headers end with %q", blank)
	}
	frame := make([]byte, n)
	if _, err := io.ReadFull(br, frame); err != nil {
		t.Fatal(err)
	}
	img, err := jpeg.Decode(bytes.NewReader(frame))
	if err != nil {
		t.Fatalf("the %d bytes Content-Length announced are no JPEG: %v", n, err)
	}
	if !near(centre(img), red) {
		t.Fatalf("frame colour %v", centre(img))
	}
	delim := make([]byte, len("\r\n--frame"))
	if _, err := io.ReadFull(br, delim); err != nil || string(delim) != "\r\n--frame" {
		t.Fatalf("after the frame: %q, %v", delim, err)
	}
	// The screen does not change: the same picture follows within a tick,
	// so that browsers paint the first.
	const next = "\r\nContent-Type: image/jpeg\r\nContent-Length: "
	rest := make([]byte, len(next))
	if _, err := io.ReadFull(br, rest); err != nil || string(rest) != next {
		t.Fatalf("second part starts %q, %v", rest, err)
	}
}

func TestDesktopStreamFollowsScreen(t *testing.T) {
	noLeaks(t)
	scr := &screen{c: red}
	fakeDisplays(t, scr, 1, nil)
	ds := provision(t, "desktop_stream {\n fps 50\n}")
	srv, c := serve(t, ds)

	s := mjpegtest.Open(t, c, srv.URL)
	if got := centre(s.Next(t)); !near(got, red) {
		t.Fatalf("first frame %v", got)
	}
	scr.set(blue, nil)
	for {
		if near(centre(s.Next(t)), blue) {
			break
		}
	}
}

func TestDesktopStreamSnapshotAndPage(t *testing.T) {
	noLeaks(t)
	fakeDisplays(t, &screen{c: green}, 1, nil)
	ds := provision(t, `desktop_stream`)
	srv, c := serve(t, ds)

	resp, err := c.Get(srv.URL + "/desk?snapshot")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/jpeg" ||
		resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("snapshot: %s %v", resp.Status, resp.Header)
	}
	img, err := jpeg.Decode(bytes.NewReader(body))
	if err != nil || !near(centre(img), green) {
		t.Fatalf("snapshot: %v", err)
	}
	if img.Bounds().Dx() != 160 || img.Bounds().Dy() != 90 {
		t.Fatalf("snapshot size %v", img.Bounds())
	}

	resp, err = c.Head(srv.URL + "?snapshot")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/jpeg" {
		t.Fatalf("HEAD snapshot: %s %v", resp.Status, resp.Header)
	}

	resp, err = c.Head(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != capture.StreamContentType {
		t.Fatalf("HEAD stream: %s %v", resp.Status, resp.Header)
	}

	resp, err = c.Get(srv.URL + "/desk?view")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" ||
		!bytes.Contains(body, []byte(`<img id="screen"`)) || resp.Header.Get("Content-Security-Policy") == "" {
		t.Fatalf("viewer page: %s %v", resp.Status, resp.Header)
	}
}

func TestDesktopStreamRefusals(t *testing.T) {
	noLeaks(t)
	fakeDisplays(t, &screen{c: red}, 1, nil)
	local := provision(t, `desktop_stream`)
	named := provision(t, "desktop_stream {\n allowed_hosts desktop.lan\n}")
	remote := provision(t, "desktop_stream {\n allow_remote\n}")

	for _, c := range []struct {
		name   string
		ds     *DesktopStream
		req    func() *http.Request
		status int
		body   string
	}{
		{"remote client", local, func() *http.Request {
			r := httptest.NewRequest("GET", "/?snapshot", nil)
			r.RemoteAddr = "192.0.2.7:40000"
			return r
		}, 403, "desktop_stream: only loopback clients are served (see allow_remote)\n"},
		{"remote behind a local proxy", local, func() *http.Request {
			r := httptest.NewRequest("GET", "/?snapshot", nil)
			r.RemoteAddr = "127.0.0.1:40000"
			return withClientIP(r, "198.51.100.2")
		}, 403, ""},
		{"unparsable peer", local, func() *http.Request {
			r := httptest.NewRequest("GET", "/?snapshot", nil)
			r.RemoteAddr = "@"
			return r
		}, 403, ""},
		{"IPv6 loopback", local, func() *http.Request {
			r := httptest.NewRequest("GET", "http://[::1]:8080/?snapshot", nil)
			r.RemoteAddr = "[::1]:40000"
			return r
		}, 200, ""},
		{"IPv4-mapped loopback", local, func() *http.Request {
			r := httptest.NewRequest("GET", "http://localhost:8080/?snapshot", nil)
			r.RemoteAddr = "[::ffff:127.0.0.1]:40000"
			return withClientIP(r, "127.0.0.1")
		}, 200, ""},
		{"DNS-rebound page", local, func() *http.Request {
			r := httptest.NewRequest("GET", "http://rebind.example:8080/?snapshot", nil)
			r.RemoteAddr = "127.0.0.1:40000"
			return r
		}, 403, "desktop_stream: host \"rebind.example:8080\" is not a loopback name (see allowed_hosts)\n"},
		{"allowed host", named, func() *http.Request {
			r := httptest.NewRequest("GET", "http://desktop.lan:8080/?snapshot", nil)
			r.RemoteAddr = "127.0.0.1:40000"
			return r
		}, 200, ""},
		{"loopback name beside allowed hosts", named, func() *http.Request {
			r := httptest.NewRequest("GET", "http://127.0.0.1:8080/?snapshot", nil)
			r.RemoteAddr = "127.0.0.1:40000"
			return r
		}, 200, ""},
		{"allowed host, remote client", named, func() *http.Request {
			r := httptest.NewRequest("GET", "http://desktop.lan:8080/?snapshot", nil)
			r.RemoteAddr = "192.0.2.7:40000"
			return r
		}, 403, "desktop_stream: only loopback clients are served (see allow_remote)\n"},
		{"allow_remote, any host", remote, func() *http.Request {
			r := httptest.NewRequest("GET", "http://rebind.example/?snapshot", nil)
			r.RemoteAddr = "127.0.0.1:40000"
			return r
		}, 200, ""},
		{"allow_remote", remote, func() *http.Request {
			r := httptest.NewRequest("GET", "/?snapshot", nil)
			r.RemoteAddr = "192.0.2.7:40000"
			return r
		}, 200, ""},
		{"POST", remote, func() *http.Request {
			return httptest.NewRequest("POST", "/", strings.NewReader("x"))
		}, 405, "desktop_stream: method POST not allowed\n"},
		{"DELETE", local, func() *http.Request {
			return httptest.NewRequest("DELETE", "/", nil)
		}, 405, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			if err := c.ds.ServeHTTP(w, c.req(), nil); err != nil {
				t.Fatal(err)
			}
			if w.Code != c.status {
				t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body)
			}
			if c.body != "" && w.Body.String() != c.body {
				t.Errorf("body %q, want %q", w.Body, c.body)
			}
			if c.status == 405 && w.Header().Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow %q", w.Header().Get("Allow"))
			}
			if w.Header().Get("Cache-Control") != "no-store" || w.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("headers %v", w.Header())
			}
		})
	}
}

func TestDesktopStreamMaxViewers(t *testing.T) {
	noLeaks(t)
	fakeDisplays(t, &screen{c: red}, 1, nil)
	ds := provision(t, "desktop_stream {\n max_viewers 2\n}")
	srv, c := serve(t, ds)

	s1 := mjpegtest.Open(t, c, srv.URL)
	s1.Next(t)
	s2 := mjpegtest.Open(t, c, srv.URL)
	s2.Next(t)

	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || string(body) != "desktop_stream: too many viewers (max_viewers 2)\n" {
		t.Fatalf("third viewer: %s %q", resp.Status, body)
	}
	// Snapshots are not viewers.
	resp, err = c.Get(srv.URL + "?snapshot")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("snapshot at the cap: %s", resp.Status)
	}

	// A viewer leaves; its place is free once its handler noticed.
	s1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the place of a viewer that left was not freed: %s", resp.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDesktopStreamCaptureErrors(t *testing.T) {
	noLeaks(t)
	scr := &screen{c: red}
	fakeDisplays(t, scr, 1, nil)
	ds := provision(t, "desktop_stream {\n fps 50\n}")
	srv, c := serve(t, ds)

	// A stream that is running when the display goes away ends: first the
	// close delimiter, then the connection breaks.
	s := mjpegtest.Open(t, c, srv.URL)
	s.Next(t)
	scr.set(red, errors.New("no X display: cannot connect to :7"))
	for {
		_, err := s.NextPart()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("the stream ended without its close delimiter: %v", err)
			}
			break
		}
	}

	// Then the stream and the snapshot answer 503 with the cause.
	for _, u := range []string{srv.URL, srv.URL + "?snapshot"} {
		resp, err := c.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || string(body) != "desktop_stream: no X display: cannot connect to :7\n" ||
			resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("GET %s without display: %s %q", u, resp.Status, body)
		}
	}

	// And it recovers with the display.
	scr.set(green, nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.Get(srv.URL + "?snapshot")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %s", resp.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDesktopStreamEndsOnCleanup(t *testing.T) {
	noLeaks(t)
	fakeDisplays(t, &screen{c: red}, 1, nil)
	ds := provision(t, `desktop_stream`)
	srv, c := serve(t, ds)

	s := mjpegtest.Open(t, c, srv.URL)
	s.Next(t)
	hub := ds.hub
	if err := ds.Cleanup(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := s.NextPart(); err != nil {
			break
		}
	}
	// The handler returned: the loop has no viewer left and was closed.
	if _, err := hub.Join(); !errors.Is(err, capture.ErrClosed) {
		t.Fatalf("hub after Cleanup: %v", err)
	}
	srv.Close() // waits for the handlers
}

func TestDesktopStreamLoopStopsWithoutViewers(t *testing.T) {
	noLeaks(t)
	fakeDisplays(t, &screen{c: red}, 1, nil)
	ds := provision(t, "desktop_stream {\n fps 50\n}")
	srv, c := serve(t, ds)

	if st := ds.hub.Stats(); st.Running || st.Captures != 0 {
		t.Fatalf("the loop runs before any viewer: %+v", st)
	}
	s := mjpegtest.Open(t, c, srv.URL)
	s.Next(t)
	if !ds.hub.Stats().Running {
		t.Fatal("the loop is not running for a viewer")
	}
	s.Close()
	deadline := time.Now().Add(5 * time.Second)
	for ds.hub.Stats().Running {
		if time.Now().After(deadline) {
			t.Fatalf("the loop still runs after its viewer left: %+v", ds.hub.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FuzzDesktopStreamCaddyfile: any input is parsed or refused, never a
// panic, and what is accepted is in range.
func FuzzDesktopStreamCaddyfile(f *testing.F) {
	f.Add("desktop_stream {\n fps 25\n quality 85\n max_width 1280\n max_viewers 3\n display 1\n allow_remote\n}")
	f.Add("desktop_stream {\n fps\n}")
	f.Add("desktop_stream x {\n}")
	f.Fuzz(func(t *testing.T, in string) {
		var ds DesktopStream
		if ds.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)) != nil {
			return
		}
		if ds.FPS < 0 || ds.FPS > 60 || ds.Quality < 0 || ds.Quality > 100 || ds.MaxWidth < 0 || ds.MaxViewers < 0 || ds.Display < 0 {
			t.Fatalf("accepted out of range: %+v", ds)
		}
	})
}

// TestDesktopRateLimit: the same rate_limit as llm_proxy, checked after the
// access checks, refusing with 429 and Retry-After in plain text.
func TestDesktopRateLimit(t *testing.T) {
	ds := provision(t, "desktop_stream {\n\tallow_remote\n\trate_limit 2-M\n}")
	for i, want := range []int{200, 200, 429} {
		r := withClientIP(httptest.NewRequest("GET", "/?view", nil), "203.0.113.9")
		w := httptest.NewRecorder()
		if err := ds.ServeHTTP(w, r, nil); err != nil {
			t.Fatal(err)
		}
		if w.Code != want || w.Header().Get("X-RateLimit-Limit") != "2" {
			t.Fatalf("request %d: %d %v", i, w.Code, w.Header())
		}
		if want == 429 && (w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "rate limit exceeded")) {
			t.Errorf("refusal: %v %q", w.Header(), w.Body.String())
		}
	}
}

// withClientIP sets Caddy's client_ip var, as the server would.
func withClientIP(r *http.Request, ip string) *http.Request {
	ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
	return r.WithContext(ctx)
}
