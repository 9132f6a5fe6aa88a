package guard

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// CORS lets pages of other origins call an endpoint from a browser, which
// reads an answer to another origin only when the answer names the page's
// origin. It answers the preflight a browser sends before a request that
// is not "simple" (a JSON POST, an Authorization header), and marks every
// answer to an allowed origin, errors included, so that the page can read
// why it was refused. An origin that is not allowed gets no CORS headers,
// and CrossSite, given Allowed, refuses its requests.
type CORS struct {
	// Origins are the origins allowed, as browsers send them
	// (https://app.example, http://localhost:3000), or "*" for any.
	Origins []string
	// Credentials lets pages send cookies and HTTP authentication along.
	// Browsers never send them to "*".
	Credentials bool
	// MaxAge is how long a browser may keep a preflight's answer; 0 leaves
	// it to the browser (seconds, at most minutes).
	MaxAge time.Duration
	// Methods are what a preflight allows, such as "GET, POST".
	Methods string
	// Expose names the response headers beyond the safelisted few that a
	// page may read, such as "Retry-After".
	Expose string

	any bool
}

// Validate checks the origins and normalizes them as browsers send them.
func (c *CORS) Validate() error {
	if len(c.Origins) == 0 {
		return errors.New("cors: at least one origin is required, or *")
	}
	for i, o := range c.Origins {
		if o == "*" {
			c.any = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return fmt.Errorf("cors: origin %q is not a scheme and host such as https://app.example", o)
		}
		c.Origins[i] = strings.ToLower(u.Scheme + "://" + withoutDefaultPort(u.Host, u.Scheme))
	}
	if c.any && len(c.Origins) > 1 {
		return errors.New("cors: * allows every origin: name no others with it")
	}
	if c.any && c.Credentials {
		return errors.New("cors: allow_credentials with *: browsers refuse credentials to any origin; name the origins")
	}
	if c.MaxAge < 0 {
		return fmt.Errorf("cors: max_age must not be negative, got %s", c.MaxAge)
	}
	return nil
}

// Allowed tells whether pages of origin may call the endpoint.
func (c *CORS) Allowed(origin string) bool {
	return origin != "" && (c.any || slices.Contains(c.Origins, strings.ToLower(origin)))
}

// IsPreflight tells whether r is a browser asking whether it may send a
// request: an OPTIONS with Origin and Access-Control-Request-Method.
func IsPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" &&
		r.Header.Get("Access-Control-Request-Method") != ""
}

// Preflight sets the headers of the answer to the preflight r, and tells
// whether its origin is allowed; when it is not, it sets none. The answer
// allows the headers the browser asked for.
func (c *CORS) Preflight(h http.Header, r *http.Request) bool {
	h.Add("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
	origin := r.Header.Get("Origin")
	if !c.Allowed(origin) {
		return false
	}
	c.allowOrigin(h, origin)
	h.Set("Access-Control-Allow-Methods", c.Methods)
	if asked := r.Header.Values("Access-Control-Request-Headers"); len(asked) > 0 {
		h.Set("Access-Control-Allow-Headers", strings.Join(asked, ", "))
	}
	if c.MaxAge > 0 {
		h.Set("Access-Control-Max-Age", strconv.FormatInt(int64(c.MaxAge/time.Second), 10))
	}
	return true
}

// SetHeaders marks the answer to r, whatever its status, for a page of an
// allowed origin to read.
func (c *CORS) SetHeaders(h http.Header, r *http.Request) {
	h.Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if !c.Allowed(origin) {
		return
	}
	c.allowOrigin(h, origin)
	if c.Expose != "" {
		h.Set("Access-Control-Expose-Headers", c.Expose)
	}
}

func (c *CORS) allowOrigin(h http.Header, origin string) {
	if c.any {
		h.Set("Access-Control-Allow-Origin", "*")
		return
	}
	h.Set("Access-Control-Allow-Origin", origin)
	if c.Credentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
}
