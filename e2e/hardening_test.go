package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStalledClientIsCut holds a connection open without reading while the
// upstream streams fast. The proxy must not buffer without bound or wait
// forever: after the write timeout the stream ends and the upstream is
// cancelled.
func TestStalledClientIsCut(t *testing.T) {
	gone := make(chan int, 1)
	big := strings.Repeat("x", 16<<10)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			if _, err := io.WriteString(w, "data: "+chunkJSON(big)+"\n\n"); err != nil {
				gone <- i
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				gone <- i
				return
			default:
			}
		}
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		format text
		timeouts {
			write 300ms
		}
	}
}`, up.URL))

	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(c.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /?prompt=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	// Never read.
	select {
	case n := <-gone:
		t.Logf("upstream cancelled after %d chunks of 16 KiB", n)
	case <-time.After(15 * time.Second):
		t.Fatal("a client that stopped reading held its stream and upstream open")
	}
}

// TestTotalTimeout ends an endless stream with the error signal.
func TestTotalTimeout(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			io.WriteString(w, "data: "+chunkJSON("more ")+"\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		format ndjson
		timeouts {
			total 300ms
		}
	}
}`, up.URL))
	resp := get(t, c.URL+"/?prompt=x")
	body, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(body), `{"error":{"message":"stream exceeded its total time limit","type":"timeout_error"}}`) ||
		strings.Contains(string(body), `"done"`) {
		t.Errorf("err %v body tail %q", err, body[max(0, len(body)-200):])
	}
}

// TestEndlessLineIsCut: an upstream that never ends its line is cut at
// max_event_size instead of being buffered.
func TestEndlessLineIsCut(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunkJSON("ok")+"\n\ndata: ")
		chunk := strings.Repeat("a", 8<<10)
		for {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			default:
			}
		}
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
		format sse
		max_event_size 64KiB
	}
}`, up.URL))
	resp := get(t, c.URL+"/?prompt=x")
	body, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(body), "event: error") || !strings.Contains(string(body), "larger than the proxy accepts") {
		t.Errorf("err %v body %q", err, body)
	}
}

// endless is an upstream that streams until its client leaves.
func endless(t *testing.T) *upstream {
	return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			io.WriteString(w, "data: "+chunkJSON("tick ")+"\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
}

// TestStopDoesNotHangOnEndlessStreams: without a grace period Caddy waits
// for every request before it exits; an endless stream must not hold it.
func TestStopDoesNotHangOnEndlessStreams(t *testing.T) {
	up := endless(t)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s {
		format sse
	}
}`, up.URL))
	resp := get(t, c.URL+"/?prompt=x")
	buf := make([]byte, 64)
	if _, err := io.ReadAtLeast(resp.Body, buf, 20); err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(resp.Body); done <- b }()
	start := time.Now()
	if out, err := exec.Command(caddyBin, "stop", "--address", c.Admin).CombinedOutput(); err != nil {
		t.Fatalf("caddy stop: %v %s", err, out)
	}
	select {
	case <-c.exited:
		t.Logf("caddy exited %v after stop", time.Since(start))
	case <-time.After(10 * time.Second):
		t.Fatal("caddy stop hung on an endless stream")
	}
	select {
	case b := <-done:
		if !strings.Contains(string(b), "event: error") || !strings.Contains(string(b), "shutting down") || strings.Contains(string(b), "event: done") {
			t.Errorf("stream end %q", b[max(0, len(b)-200):])
		}
	case <-time.After(5 * time.Second):
		t.Error("client never saw the end")
	}
}

// TestReloadKeepsOpenStreams: a reload does not cut a stream that is open.
func TestReloadKeepsOpenStreams(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 30; i++ {
			io.WriteString(w, "data: "+chunkJSON("t ")+"\n\n")
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
		io.WriteString(w, "data: "+finishJSON+"\n\ndata: [DONE]\n\n")
	})
	cfg := fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy %s {
		format ndjson
	}
}`, up.URL)
	c := startCaddy(t, cfg)
	resp := get(t, c.URL+"/?prompt=x")
	buf := make([]byte, 16)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	// Reload with a changed config (another heartbeat), which replaces
	// the handler under the open stream.
	path := c.dir + "/Caddyfile"
	b, _ := os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(b), "format ndjson", "format ndjson\n\t\theartbeat 5s", 1)), 0o600)
	if out, err := exec.Command(caddyBin, "reload", "--config", path, "--address", c.Admin).CombinedOutput(); err != nil {
		t.Fatalf("reload: %v %s", err, out)
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil || strings.Count(string(buf)+string(rest), `{"content":"t "}`) != 30 || !strings.Contains(string(rest), `"done":true`) {
		t.Errorf("stream cut by the reload: %v %q", err, rest)
	}
}
