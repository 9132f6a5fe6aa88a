package caddymodule

import (
	"errors"
	"fmt"
	"image"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/capture/mjpegtest"
)

// dial connects to addr with the system's default receive buffer (128 KiB
// on Linux, which does not grow while nothing is read).
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// eventually polls cond for up to 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not %s after 10s", what)
		}
	}
}

func TestTCPProgress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client := dial(t, ln.Addr().String())
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	p, ok := newProgress(sc.(*net.TCPConn)).(*tcpProgress)
	if !ok {
		t.Skip("this kernel does not report acknowledged bytes")
	}

	// A small frame is acknowledged at once.
	if _, err := sc.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	p.sent()
	eventually(t, "caught up with 1000 bytes", p.caughtUp)

	// Far more than the client's buffer: our kernel takes much of it in,
	// the client's TCP does not.
	_ = sc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	n, _ := sc.Write(make([]byte, 4<<20))
	p.sent()
	time.Sleep(100 * time.Millisecond)
	if p.caughtUp() {
		t.Fatalf("caught up after %d bytes to a client that reads nothing", n)
	}
	// Until it reads them.
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, make([]byte, 1000+n)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "caught up once the client read", p.caughtUp)
}

// serveConns runs ds behind a real HTTP server that keeps each request's
// connection, as Caddy's server does for desktop_stream.
func serveConns(t *testing.T, ds *DesktopStream) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = ds.ServeHTTP(w, r, nil)
	}))
	srv.Config.ConnContext = withConn
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// A viewer that stops reading is dropped stall_timeout after it last
// caught up, although the socket buffers would take frames for long, and
// its connection closed. A viewer that reads keeps its stream.
func TestDesktopStreamDropsStalledViewer(t *testing.T) {
	noLeaks(t)
	fakeDisplays(t, noise{}, 1, nil)
	ds := provision(t, "desktop_stream {\n\tfps 2\n\tstall_timeout 1s\n}")
	srv := serveConns(t, ds)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	reading := mjpegtest.Open(t, &http.Client{Transport: tr}, srv.URL)
	reading.Next(t)
	parts := make(chan error, 100)
	go func() {
		for {
			_, err := reading.NextPart()
			parts <- err
			if err != nil {
				return
			}
		}
	}()

	stalled := dial(t, srv.Listener.Addr().String())
	fmt.Fprintf(stalled, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	eventually(t, "two viewers", func() bool { return ds.viewers.Load() == 2 })
	eventually(t, "one viewer left", func() bool { return ds.viewers.Load() == 1 })

	// Its connection is closed (reset, normally), not just idle.
	_ = stalled.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, stalled); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the stalled viewer's connection is still open: %v", err)
	}

	// The still screen sends a keepalive every 2s: the reading viewer,
	// idle longer than stall_timeout between frames, is not taken for
	// stalled.
	got := 0
	for quiet := time.After(5 * time.Second); quiet != nil; {
		select {
		case err := <-parts:
			if err != nil {
				t.Fatalf("the reading viewer, after %d more frames: %v", got, err)
			}
			got++
		case <-quiet:
			quiet = nil
		}
	}
	if got < 1 {
		t.Errorf("the reading viewer got %d frames in 5s", got)
	}
	if n := ds.viewers.Load(); n != 1 {
		t.Errorf("%d viewers", n)
	}
	reading.Close()
	for err := range parts { // until the reader sees its body closed
		if err != nil {
			break
		}
	}
}

// noise is a still screen whose frames (about 2 MiB) are larger than what
// a client that does not read takes in over loopback.
type noise struct{}

var noiseImage = sync.OnceValue(func() *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, 2560, 1440))
	x := uint32(1)
	for i := range img.Pix {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		img.Pix[i] = byte(x)
	}
	return img
})

// Grab returns the same picture every time; the hub only reads it.
func (noise) Grab() (*image.RGBA, error) { return noiseImage(), nil }
