package upstream

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// NewTransport returns the transport for upstream connections. It does not
// ask for compression: a compressed event stream only adds latency.
func NewTransport(dial time.Duration) *http.Transport {
	d := &net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   dial,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		// Every open stream holds a connection with these buffers. Events
		// are a few hundred bytes, and requests larger than the write
		// buffer go out directly, so small ones save memory per stream
		// without costing syscalls.
		ReadBufferSize:  2 << 10,
		WriteBufferSize: 1 << 10,
	}
}

// Label is the name of an upstream in logs and metrics: its base URL
// without the query or any credentials.
func Label(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return "invalid upstream URL"
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.User = "", false, "", nil
	return u.String()
}

// NewHTTPClient returns the client for upstream calls over t. It does not
// follow redirects: a POST turned into a GET, or the key sent where the
// upstream points, is never what the configuration said; the client gets a
// 502 that says the base URL is wrong instead.
func NewHTTPClient(t http.RoundTripper) *http.Client {
	return &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

// NewH2CTransport returns the transport for h2c:// upstreams: HTTP/2 over
// plain TCP by prior knowledge, so that many streams share a few
// connections to an upstream on a trusted network (another Caddy, a local
// gateway) instead of one connection and two file descriptors each.
func NewH2CTransport(dial time.Duration) *http.Transport {
	t := NewTransport(dial)
	t.Protocols = new(http.Protocols)
	t.Protocols.SetUnencryptedHTTP2(true)
	return t
}

// CutH2C reports whether base names an h2c upstream (h2c://host/v1, as in
// Caddy's reverse_proxy) and returns it as the http:// URL to request.
func CutH2C(base string) (string, bool) {
	if rest, ok := strings.CutPrefix(base, "h2c://"); ok {
		return "http://" + rest, true
	}
	return base, false
}
