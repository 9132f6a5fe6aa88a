package guard

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCORSValidate(t *testing.T) {
	for _, tt := range []struct {
		c    CORS
		want string // "" for valid
	}{
		{CORS{Origins: []string{"https://App.Example:443", "http://localhost:3000/"}}, ""},
		{CORS{Origins: []string{"*"}, MaxAge: time.Hour}, ""},
		{CORS{}, "at least one origin"},
		{CORS{Origins: []string{"*"}, Credentials: true}, "allow_credentials with *"},
		{CORS{Origins: []string{"*", "https://a.example"}}, "name no others"},
		{CORS{Origins: []string{"app.example"}}, "not a scheme and host"},
		{CORS{Origins: []string{"https://app.example/path"}}, "not a scheme and host"},
		{CORS{Origins: []string{"ftp://app.example"}}, "not a scheme and host"},
		{CORS{Origins: []string{"https://a.example"}, MaxAge: -time.Second}, "negative"},
	} {
		err := tt.c.Validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%+v: %v, want %q", tt.c, err, tt.want)
		}
	}
	c := CORS{Origins: []string{"https://App.Example:443", "http://localhost:3000/"}}
	c.Validate()
	if strings.Join(c.Origins, " ") != "https://app.example http://localhost:3000" {
		t.Errorf("normalized: %q", c.Origins)
	}
}

func TestCORSHeaders(t *testing.T) {
	list := &CORS{Origins: []string{"https://app.example"}, Credentials: true, MaxAge: 10 * time.Minute, Methods: "GET, POST", Expose: "Retry-After"}
	star := &CORS{Origins: []string{"*"}, Methods: "GET, POST", Expose: "Retry-After"}
	for _, c := range []*CORS{list, star} {
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	req := func(method, origin string, header ...string) *http.Request {
		r := httptest.NewRequest(method, "http://api.example/chat", nil)
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		for i := 0; i+1 < len(header); i += 2 {
			r.Header.Add(header[i], header[i+1])
		}
		return r
	}
	pre := req("OPTIONS", "https://app.example", "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "content-type, authorization", "Access-Control-Request-Headers", "x-stainless-os")
	if !IsPreflight(pre) || IsPreflight(req("OPTIONS", "https://app.example")) || IsPreflight(req("GET", "https://app.example", "Access-Control-Request-Method", "GET")) {
		t.Error("IsPreflight")
	}
	for _, tt := range []struct {
		name    string
		c       *CORS
		r       *http.Request
		preflit bool
		want    map[string]string
	}{
		{"preflight", list, pre, true, map[string]string{
			"Access-Control-Allow-Origin":      "https://app.example",
			"Access-Control-Allow-Credentials": "true",
			"Access-Control-Allow-Methods":     "GET, POST",
			"Access-Control-Allow-Headers":     "content-type, authorization, x-stainless-os",
			"Access-Control-Max-Age":           "600",
			"Vary":                             "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
		}},
		{"preflight, any origin", star, req("OPTIONS", "http://localhost:5173", "Access-Control-Request-Method", "GET"), true, map[string]string{
			"Access-Control-Allow-Origin":  "*",
			"Access-Control-Allow-Methods": "GET, POST",
			"Vary":                         "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
		}},
		{"preflight of another origin", list, req("OPTIONS", "https://evil.example", "Access-Control-Request-Method", "POST"), false, map[string]string{
			"Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
		}},
		{"answer", list, req("POST", "https://app.example"), false, map[string]string{
			"Access-Control-Allow-Origin":      "https://app.example",
			"Access-Control-Allow-Credentials": "true",
			"Access-Control-Expose-Headers":    "Retry-After",
			"Vary":                             "Origin",
		}},
		{"answer, any origin", star, req("GET", "https://x.example"), false, map[string]string{
			"Access-Control-Allow-Origin":   "*",
			"Access-Control-Expose-Headers": "Retry-After",
			"Vary":                          "Origin",
		}},
		{"answer to another origin", list, req("GET", "https://evil.example"), false, map[string]string{"Vary": "Origin"}},
		{"answer to no browser", list, req("GET", ""), false, map[string]string{"Vary": "Origin"}},
	} {
		h := http.Header{}
		if tt.r.Method == "OPTIONS" {
			if got := tt.c.Preflight(h, tt.r); got != tt.preflit {
				t.Errorf("%s: Preflight = %v", tt.name, got)
			}
		} else {
			tt.c.SetHeaders(h, tt.r)
		}
		for k, v := range tt.want {
			if got := h.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", tt.name, k, got, v)
			}
		}
		if len(h) != len(tt.want) {
			t.Errorf("%s: %v, want only %v", tt.name, h, tt.want)
		}
	}
	// The allowlist is CrossSite's too.
	if CrossSite(req("POST", "https://evil.example", "Content-Type", "application/json"), list.Allowed) != ErrCrossSite ||
		CrossSite(req("POST", "https://app.example", "Content-Type", "application/json"), list.Allowed) != nil {
		t.Error("CrossSite with the allowlist")
	}
}
