// Package guard decides what a request may do from what a client cannot
// forge: the address its connection comes from, and the marks a browser
// puts on requests it sends on another site's behalf. It imports no Caddy
// package.
package guard

import (
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// Why CrossSite refuses a request.
var (
	ErrCrossSite = errors.New("a browser sent this request on another site's behalf; " +
		"this endpoint answers only pages of its own origin and the origins its operator allows")
	ErrNotJSON = errors.New("a browser's POST must declare Content-Type: application/json")
)

// CrossSite tells whether a browser sent r on behalf of a page of another
// site, which would make a visitor's browser spend the server's key: a
// form POST or an <img src> from any site, against a Caddy on localhost
// or an intranet. allow reports the origins the operator lets in (CORS);
// it may be nil.
//
// It judges only the marks browsers set and pages cannot change (Origin,
// Sec-Fetch-Site), so a request with none, as curl and the SDKs send,
// passes as before. A POST that carries them must declare a JSON body: no
// page can send that to another origin without a CORS preflight.
func CrossSite(r *http.Request, allow func(origin string) bool) error {
	origin := r.Header.Get("Origin")
	site := r.Header.Get("Sec-Fetch-Site")
	switch {
	case origin != "":
		if !sameOrigin(origin, r) && (allow == nil || !allow(origin)) {
			return ErrCrossSite
		}
	case site == "cross-site" || site == "same-site":
		// No Origin (a GET of an <img>, a link, a navigation): the site
		// mark is all there is, and another site is not this one.
		return ErrCrossSite
	}
	if r.Method == http.MethodPost && (origin != "" || site != "") && !declaresJSON(r) {
		return ErrNotJSON
	}
	return nil
}

// sameOrigin tells whether origin names the host r was sent to. The
// scheme is not compared: behind a proxy that ends TLS, r arrives as plain
// HTTP for an https page.
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false // "null" (sandboxed frames, file pages) included
	}
	return strings.EqualFold(withoutDefaultPort(u.Host, u.Scheme), withoutDefaultPort(r.Host, u.Scheme))
}

func withoutDefaultPort(host, scheme string) string {
	if p := map[string]string{"http": ":80", "https": ":443"}[scheme]; p != "" {
		return strings.TrimSuffix(host, p)
	}
	return host
}

func declaresJSON(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}
