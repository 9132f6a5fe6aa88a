package guard

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCrossSite(t *testing.T) {
	allow := func(o string) bool { return o == "https://app.example" }
	for _, tt := range []struct {
		name, method, host string
		header             []string
		want               error
	}{
		{"curl GET", "GET", "localhost:8080", nil, nil},
		{"curl -d form POST", "POST", "localhost:8080", []string{"Content-Type", "application/x-www-form-urlencoded"}, nil},
		{"SDK POST", "POST", "localhost:8080", []string{"Content-Type", "application/json"}, nil},
		{"own page's EventSource", "GET", "localhost:8080", []string{"Sec-Fetch-Site", "same-origin"}, nil},
		{"own page's POST", "POST", "localhost:8080", []string{"Origin", "http://localhost:8080", "Sec-Fetch-Site", "same-origin", "Content-Type", "application/json"}, nil},
		{"own page on the default port", "POST", "example.org", []string{"Origin", "https://example.org:443", "Content-Type", "application/json"}, nil},
		{"typed in the address bar", "GET", "localhost:8080", []string{"Sec-Fetch-Site", "none"}, nil},
		{"img from another site", "GET", "localhost:8080", []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Dest", "image"}, ErrCrossSite},
		{"link from a sibling site", "GET", "llm.corp.example", []string{"Sec-Fetch-Site", "same-site"}, ErrCrossSite},
		{"text/plain form POST from another site", "POST", "localhost:8080", []string{"Origin", "https://evil.example", "Content-Type", "text/plain"}, ErrCrossSite},
		{"fetch from another site", "GET", "localhost:8080", []string{"Origin", "https://evil.example"}, ErrCrossSite},
		{"sandboxed frame", "GET", "localhost:8080", []string{"Origin", "null"}, ErrCrossSite},
		{"another port", "GET", "localhost:8080", []string{"Origin", "http://localhost:3000"}, ErrCrossSite},
		{"allowed origin", "POST", "api.example", []string{"Origin", "https://app.example", "Content-Type", "application/json"}, nil},
		{"allowed origin, form POST", "POST", "api.example", []string{"Origin", "https://app.example", "Content-Type", "text/plain"}, ErrNotJSON},
		{"own page's form POST", "POST", "localhost:8080", []string{"Origin", "http://localhost:8080", "Content-Type", "text/plain"}, ErrNotJSON},
	} {
		r := httptest.NewRequest(tt.method, "http://"+tt.host+"/chat", strings.NewReader("{}"))
		for i := 0; i+1 < len(tt.header); i += 2 {
			r.Header.Set(tt.header[i], tt.header[i+1])
		}
		if got := CrossSite(r, allow); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
