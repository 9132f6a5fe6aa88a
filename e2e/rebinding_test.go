//go:build linux || freebsd || openbsd || netbsd

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

// snapshotAs GETs the desktop's snapshot from caddy's loopback address with
// host in the Host header, as a browser whose page's name was rebound to
// 127.0.0.1 sends it, and returns the status, Content-Type and body.
func snapshotAs(t *testing.T, c *caddy, host string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.URL+"/desktop?snapshot", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp := do(t, req)
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b[:min(len(b), 200)])
}

// Security review 14: under a site address without a host (:port), Caddy
// answers any Host, so a web page whose name DNS rebinding points at
// 127.0.0.1 reads the screen from a loopback client, the browser. Without
// allow_remote, desktop_stream serves only loopback's names, and those
// given in allowed_hosts.
func TestDesktopRefusesReboundHost(t *testing.T) {
	x := xvfbtest.Start(t, "320x240x24")
	for _, tc := range []struct {
		name, block string
		hosts       map[string]bool // Host (port appended) -> served
	}{
		{"loopback names", "", map[string]bool{
			"localhost": true, "127.0.0.1": true, "[::1]": true,
			"rebind.example": false, "localhost.rebind.example": false, "desktop.lan": false,
		}},
		{"allowed_hosts", "allowed_hosts desktop.lan", map[string]bool{
			"localhost": true, "desktop.lan": true, "DESKTOP.LAN": true, "rebind.example": false,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCaddy(t, fmt.Sprintf(`:{PORT} {
	desktop_stream /desktop {
		%s
	}
}`, tc.block), withEnv("DISPLAY="+x.Display, "XDG_SESSION_TYPE="))
			port := c.URL[strings.LastIndexByte(c.URL, ':'):]
			for name, served := range tc.hosts {
				host := name + port
				got, ct, body := snapshotAs(t, c, host)
				if served && (got != 200 || ct != "image/jpeg") {
					t.Errorf("Host %s: %d %s %q, want the snapshot", host, got, ct, body)
				}
				want := fmt.Sprintf("desktop_stream: host %q is not a loopback name (see allowed_hosts)\n", host)
				if !served && (got != 403 || body != want) {
					t.Errorf("Host %s: %d %s %q, want 403 %q", host, got, ct, body, want)
				}
			}
		})
	}
}
