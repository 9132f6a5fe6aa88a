package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
)

// frontProxy is an ordinary reverse proxy in front of caddy, on loopback as
// caddy's trusted_proxies expect: it appends the address of its client to
// X-Forwarded-For (httputil's default). The test tells it that address in
// X-Test-Peer, standing for a client somewhere on the internet; it does
// not forward that header.
func frontProxy(t *testing.T, to string) string {
	t.Helper()
	u, err := url.Parse(to)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if peer := r.Header.Get("X-Test-Peer"); peer != "" {
			r.RemoteAddr = peer + ":40000"
			r.Header.Del("X-Test-Peer")
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s.URL
}

// status sends a GET with the header pairs and returns the status and the
// start of the body.
func status(t *testing.T, url string, header ...string) (int, string) {
	t.Helper()
	resp := get(t, url, header...)
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b[:min(len(b), 100)])
}

// trustPrivate trusts loopback and the private networks as proxies, as many
// setups behind a local proxy or a load balancer do.
func trustPrivate(strict bool) caddyOption {
	opts := "\tservers {\n\t\ttrusted_proxies static private_ranges\n"
	if strict {
		opts += "\t\ttrusted_proxies_strict\n"
	}
	return withGlobals(opts + "\t}")
}

// Security review 13: a remote client writes X-Forwarded-For: 127.0.0.1
// and sends it through a front proxy that appends its real address. Caddy's
// client_ip (non-strict) takes the left-most address, the forged one;
// desktop_stream must go by the right-most address that is not a trusted
// proxy, in either mode.
func TestDesktopLoopbackGuardBehindProxy(t *testing.T) {
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("trusted_proxies_strict %v", strict), func(t *testing.T) {
			c := startCaddy(t, `http://127.0.0.1:{PORT} {
	desktop_stream /desktop
}`, trustPrivate(strict))
			front := frontProxy(t, c.URL)
			const refused = "desktop_stream: only loopback clients are served (see allow_remote)\n"
			for _, s := range []struct {
				name, url string
				header    []string
				want      int
			}{
				{"local client, direct", c.URL, nil, 200},
				{"local client through the local proxy", front, nil, 200},
				{"remote client through the proxy", front, []string{"X-Test-Peer", "203.0.113.7"}, 403},
				{"remote client forging loopback", front, []string{"X-Test-Peer", "203.0.113.7", "X-Forwarded-For", "127.0.0.1"}, 403},
				{"remote client forging ::1 and a LAN hop", front, []string{"X-Test-Peer", "203.0.113.7", "X-Forwarded-For", "::1, 10.1.2.3"}, 403},
				{"trusted proxy naming a remote client", c.URL, []string{"X-Forwarded-For", "203.0.113.7"}, 403},
			} {
				got, body := status(t, s.url+"/desktop?view", s.header...)
				if got != s.want || (s.want == 403 && body != refused) {
					t.Errorf("%s: %d %q, want %d", s.name, got, body, s.want)
				}
			}
		})
	}
}

// The default rate-limit key: a client behind the proxy that writes a new
// left-most address into each request still counts against one bucket,
// its own, and another client keeps its own budget.
func TestRateLimitKeyBehindProxy(t *testing.T) {
	c := startCaddy(t, `http://127.0.0.1:{PORT} {
	desktop_stream /desktop {
		allow_remote
		rate_limit 3-M
	}
}`, trustPrivate(false))
	front := frontProxy(t, c.URL)
	for i := range 6 {
		got, body := status(t, front+"/desktop?view", "X-Test-Peer", "203.0.113.7",
			"X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i+1))
		if want := map[bool]int{true: 200, false: 429}[i < 3]; got != want {
			t.Errorf("request %d with a fresh left-most address: %d, want %d: %s", i+1, got, want, body)
		}
		if got == 429 && !strings.Contains(body, "rate limit exceeded") {
			t.Errorf("refusal %q", body)
		}
	}
	if got, body := status(t, front+"/desktop?view", "X-Test-Peer", "203.0.113.8"); got != 200 {
		t.Errorf("another client: %d %s", got, body)
	}
}
