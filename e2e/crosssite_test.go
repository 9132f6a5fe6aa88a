package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// A page on another site cannot make a visitor's browser spend the key:
// what the browser marks as sent on another site's behalf is refused
// before any upstream call, and clients without browser marks (curl, the
// SDKs) work as before.
func TestCrossSiteRequestsSpendNothing(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: "+chunkJSON("hi")+"\n\ndata: "+finishJSON+"\n\ndata: [DONE]\n\n")
	})
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s
	}
}`, up.URL))
	body := `{"messages":[{"role":"user","content":"hi"}],"stream":true}`
	send := func(method, path, ctype, body string, header ...string) *http.Response {
		req, _ := http.NewRequest(method, c.URL+path, strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		return do(t, req)
	}
	for _, tt := range []struct {
		name   string
		resp   *http.Response
		status int
	}{
		{"a text/plain form POST from another site", send("POST", "/v1/chat/completions", "text/plain", body,
			"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "no-cors"), 403},
		{"an <img> GET from another site", send("GET", "/?prompt=hi", "", "",
			"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "no-cors", "Sec-Fetch-Dest", "image"), 403},
		{"a form POST from this site", send("POST", "/v1/chat/completions", "text/plain", body,
			"Origin", c.URL, "Sec-Fetch-Site", "same-origin"), 415},
	} {
		if tt.resp.StatusCode != tt.status || !strings.Contains(tt.resp.Header.Get("Content-Type"), "json") {
			t.Errorf("%s: %d %s, want %d in OpenAI's error shape", tt.name, tt.resp.StatusCode, tt.resp.Header.Get("Content-Type"), tt.status)
		}
	}
	if n := up.calls.Load(); n != 0 {
		t.Fatalf("cross-site requests made %d upstream calls", n)
	}
	// No browser marks: curl's default -d and the SDKs still work.
	for _, resp := range []*http.Response{
		send("POST", "/v1/chat/completions", "application/x-www-form-urlencoded", body),
		send("POST", "/v1/chat/completions", "application/json", body),
		send("GET", "/?prompt=hi", "", "", "Sec-Fetch-Site", "same-origin"),
	} {
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s %s: status %d", resp.Request.Method, resp.Request.URL, resp.StatusCode)
		}
	}
}
