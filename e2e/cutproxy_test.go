package e2e

import (
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// cutProxy is a TCP proxy in front of caddy that breaks connections the
// way a network does, for the resume tests: setDown resets every open
// connection and refuses new ones, as a network that goes away (DevTools'
// offline emulation would not do: Chromium leaves the responses it is
// already reading alone); cutFirst cuts each of the first connections
// after some bytes of the answer, or some time (a compressed answer's
// bytes say little of its events), as a phone that changes networks. It
// keeps what went each way.
type cutProxy struct {
	URL string // http://127.0.0.1:<port>

	mu       sync.Mutex
	down     bool
	open     map[net.Conn]bool
	sent     []*syncBuffer // per connection, what the client sent
	answered []*syncBuffer // and what it was sent
	cuts     int
	after    int64
	within   time.Duration
}

// newCutProxy proxies to target, an http:// URL or a host:port.
func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{URL: "http://" + ln.Addr().String(), open: map[net.Conn]bool{}}
	addr := strings.TrimPrefix(target, "http://")
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.setDown(true)
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.relay(c, addr)
			}()
		}
	}()
	return p
}

// cutFirst cuts the answers of the next cuts connections after after
// bytes, or within a time of their opening if within is not 0.
func (p *cutProxy) cutFirst(cuts int, after int64, within time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cuts, p.after, p.within = len(p.sent)+cuts, after, within
}

// track adds c to the open connections, or reports false while down.
func (p *cutProxy) track(c ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	for _, c := range c {
		p.open[c] = true
	}
	return true
}

func (p *cutProxy) relay(c net.Conn, addr string) {
	defer c.Close()
	if !p.track(c) {
		return
	}
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer up.Close()
	if !p.track(up) {
		return
	}
	p.mu.Lock()
	sent, answered := &syncBuffer{}, &syncBuffer{}
	p.sent, p.answered = append(p.sent, sent), append(p.answered, answered)
	cut, after, within := len(p.sent) <= p.cuts, p.after, p.within
	p.mu.Unlock()

	done := make(chan struct{}, 2)
	go func() { io.Copy(io.MultiWriter(up, sent), c); done <- struct{}{} }()
	go func() {
		to := io.MultiWriter(c, answered)
		switch {
		case cut && within > 0:
			timer := time.AfterFunc(within, func() { c.Close(); up.Close() })
			defer timer.Stop()
			io.Copy(to, up)
		case cut:
			io.CopyN(to, up, after)
		default:
			io.Copy(to, up)
		}
		done <- struct{}{}
	}()
	<-done
	c.Close()
	up.Close()
	<-done
	p.mu.Lock()
	delete(p.open, c)
	delete(p.open, up)
	p.mu.Unlock()
}

// setDown with true resets every open connection and closes new ones at
// once until setDown(false).
func (p *cutProxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if !down {
		return
	}
	for c := range p.open {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a clean end
		}
		c.Close()
		delete(p.open, c)
	}
}

var lastEventIDHeader = regexp.MustCompile(`(?im)^last-event-id: *(\S+)\r$`)

// lastEventIDs are the Last-Event-IDs the clients sent, in the order of
// their connections.
func (p *cutProxy) lastEventIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	for _, s := range p.sent {
		for _, m := range lastEventIDHeader.FindAllStringSubmatch(s.String(), -1) {
			ids = append(ids, m[1])
		}
	}
	return ids
}
