//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/llmstream/caddy-llmstream/capture/mjpegtest"
	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

// stalledViewer opens a stream on a connection with a small receive
// buffer and never reads it, as a client that stopped reading.
func stalledViewer(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /desktop HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	return conn
}

// tcp runs f on conn's socket.
func tcp(t *testing.T, conn net.Conn, f func(fd int)) {
	t.Helper()
	rc, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
}

// statusLine peeks at the start of the answer conn received, without
// reading it: "" until it came.
func statusLine(t *testing.T, conn net.Conn) string {
	t.Helper()
	buf := make([]byte, len("HTTP/1.1 200"))
	n := 0
	tcp(t, conn, func(fd int) {
		n, _, _ = unix.Recvfrom(fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	})
	return string(buf[:max(n, 0)])
}

// established tells whether conn is still open both ways, without
// reading it: a server that closed or reset it moved it out of
// ESTABLISHED.
func established(t *testing.T, conn net.Conn) bool {
	t.Helper()
	var state uint8
	tcp(t, conn, func(fd int) {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		state = info.State
	})
	return state == unix.BPF_TCP_ESTABLISHED
}

// probe opens a stream and closes it, and returns its status.
func probe(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url + "/desktop?t=probe")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Security review 16: 40 viewers that stopped reading stayed connected long
// past the stall limit, because the socket buffers took in the (small,
// static) frames without a write ever blocking. Each viewer is now timed by
// the last frame its TCP acknowledged whole: the stalled ones must be gone,
// their slots free, soon after stall_timeout, while a viewer that reads
// keeps its stream.
func TestDesktopDropsStalledViewers(t *testing.T) {
	const stalled = 40
	x := xvfbtest.Start(t, "640x480x24")
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	desktop_stream /desktop {
		max_viewers %d
		stall_timeout 2s
	}
}`, stalled+1), withEnv("DISPLAY="+x.Display, "XDG_SESSION_TYPE="))
	addr := strings.TrimPrefix(c.URL, "http://")

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	reader := mjpegtest.Open(t, &http.Client{Transport: tr}, c.URL+"/desktop")
	reader.Next(t)
	var mu sync.Mutex
	var readErr error
	frames := 0
	go func() {
		for {
			_, err := reader.NextPart()
			mu.Lock()
			if err != nil {
				readErr = err
				mu.Unlock()
				return
			}
			frames++
			mu.Unlock()
		}
	}()

	start := time.Now()
	conns := make([]net.Conn, stalled)
	for i := range conns {
		conns[i] = stalledViewer(t, addr)
	}
	for i, conn := range conns {
		for statusLine(t, conn) == "" {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("stalled viewer %d got no answer", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got := statusLine(t, conn); got != "HTTP/1.1 200" {
			t.Fatalf("stalled viewer %d: %s", i, got)
		}
	}
	if got := probe(t, c.URL); got != 503 {
		t.Fatalf("with every slot taken, a new viewer: %d, want 503", got)
	}

	// Don't measure speed: wait, generously, until every stalled viewer is
	// disconnected.
	const bound = 20 * time.Second
	for {
		open := 0
		for _, conn := range conns {
			if established(t, conn) {
				open++
			}
		}
		if open == 0 {
			break
		}
		if time.Since(start) > bound {
			t.Fatalf("%d of %d stalled viewers still connected %v after they stopped reading (stall_timeout 2s)",
				open, stalled, bound)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("all stalled viewers gone after %v", time.Since(start).Round(100*time.Millisecond))
	if got := probe(t, c.URL); got != 200 {
		t.Errorf("a new viewer after the stalled ones left: %d", got)
	}

	// The viewer that reads was not taken for stalled: it gets frames past
	// several stall timeouts (the screen is still: a keepalive every 2s).
	mu.Lock()
	before := frames
	mu.Unlock()
	time.Sleep(4500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if readErr != nil || frames <= before {
		t.Errorf("the reading viewer: %d frames, then %d; error %v", before, frames, readErr)
	}
}
