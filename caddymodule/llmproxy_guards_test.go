package caddymodule

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestGuardsUnmarshalCaddyfile(t *testing.T) {
	h := new(LLMProxy)
	block := `llm_proxy http://x/v1 {
	models gpt-4o-mini sim-reasoning
	max_tokens 1000 clamp
	max_n 2
	max_messages 50
	max_prompt 20000
	rate_limit 60-M {
		tokens 200000-H
	}
	cors https://app.example http://localhost:3000 {
		allow_credentials
		max_age 10m
	}
}`
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		t.Fatal(err)
	}
	want := LLMProxy{To: []string{"http://x/v1"}, Models: []string{"gpt-4o-mini", "sim-reasoning"}, MaxTokens: 1000,
		MaxTokensClamp: true, MaxN: 2, MaxMessages: 50, MaxPrompt: 20000,
		RateLimit: &RateLimit{Rate: "60-M", Tokens: "200000-H"},
		CORS: &CORSConfig{Origins: []string{"https://app.example", "http://localhost:3000"}, AllowCredentials: true,
			MaxAge: caddy.Duration(10 * time.Minute)}}
	if !reflect.DeepEqual(*h, want) {
		t.Errorf("got  %+v\nwant %+v", *h, want)
	}
	h = new(LLMProxy)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("llm_proxy http://x/v1 {\n\tmax_tokens 5 reject\n\tcors *\n}")); err != nil {
		t.Fatal(err)
	}
	if h.MaxTokens != 5 || h.MaxTokensClamp || !reflect.DeepEqual(h.CORS, &CORSConfig{Origins: []string{"*"}}) {
		t.Errorf("got %+v %+v", h, h.CORS)
	}

	for _, tt := range []struct{ name, lines, want string }{
		{"models without names", "models", "wrong argument count"},
		{"max_tokens without a number", "max_tokens", "wrong argument count"},
		{"max_tokens zero", "max_tokens 0", `bad max_tokens "0": want an integer of at least 1`},
		{"max_tokens mode", "max_tokens 10 trim", `bad max_tokens "trim": want reject or clamp`},
		{"max_tokens arity", "max_tokens 10 clamp x", "wrong argument count"},
		{"max_n zero", "max_n 0", `bad max_n "0"`},
		{"max_messages", "max_messages x", `bad max_messages "x"`},
		{"max_prompt", "max_prompt -1", `bad max_prompt "-1"`},
		{"duplicate", "max_n 1\n\tmax_n 2", "llm_proxy: duplicate subdirective max_n"},
		{"cors without origins", "cors", "wrong argument count"},
		{"cors credentials with *", "cors * {\n\t\tallow_credentials\n\t}", "allow_credentials with *"},
		{"cors bad origin", "cors app.example", `origin "app.example" is not a scheme and host`},
		{"cors unknown", "cors * {\n\t\tallow_headers x\n\t}", "cors: unknown subdirective allow_headers"},
		{"cors max_age", "cors * {\n\t\tmax_age soon\n\t}", `bad max_age "soon"`},
		{"tokens bad rate", "rate_limit 1-M {\n\t\ttokens lots\n\t}", `rate_limit: tokens: parsing rate "lots"`},
		{"tokens arity", "rate_limit 1-M {\n\t\ttokens\n\t}", "wrong argument count"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			block := "llm_proxy http://x/v1 {\n\t" + tt.lines + "\n}"
			err := new(LLMProxy).UnmarshalCaddyfile(caddyfile.NewTestDispenser(block))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "Testfile:") {
				t.Errorf("%s\nerror %v, want %q with the file and line", block, err, tt.want)
			}
		})
	}
}

// Configs that did not come through the Caddyfile are checked too.
func TestGuardsProvisionValidates(t *testing.T) {
	for _, tt := range []struct {
		h    LLMProxy
		want string
	}{
		{LLMProxy{CORS: &CORSConfig{Origins: []string{"*"}, AllowCredentials: true}}, "allow_credentials with *"},
		{LLMProxy{CORS: &CORSConfig{}}, "at least one origin"},
		{LLMProxy{Model: "a", Models: []string{"b"}}, `default model "a" is not among models`},
		{LLMProxy{MaxTokens: -1}, "max_tokens must be positive"},
		{LLMProxy{MaxTokensClamp: true}, "max_tokens_clamp needs max_tokens"},
	} {
		h := tt.h
		h.To = []string{"http://x/v1"}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := h.Provision(ctx)
		if err == nil {
			err = h.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want %q", tt.h, err, tt.want)
		}
		h.Cleanup()
		cancel()
	}
	ds := new(DesktopStream)
	err := ds.UnmarshalCaddyfile(caddyfile.NewTestDispenser("desktop_stream {\n\trate_limit 1-M {\n\t\ttokens 10-M\n\t}\n}"))
	if err == nil {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		err = ds.RateLimit.Provision(ctx, "desktop_stream", ds)
	}
	if err == nil || !strings.Contains(err.Error(), "tokens applies to llm_proxy only") {
		t.Errorf("desktop_stream with tokens: %v", err)
	}
}

// countingUpstream streams n content deltas a request and counts calls.
func countingUpstream(t *testing.T, n int, every time.Duration) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		for range n {
			if _, err := io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"x"}}]}`+"\n\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(every)
		}
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
	}))
	t.Cleanup(up.Close)
	return up, &calls
}

func TestPreflightCostsNothing(t *testing.T) {
	up, calls := countingUpstream(t, 1, 0)
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\trate_limit 1-M\n\tcors https://app.example\n}")
	srv := serveProxy(t, h)
	for range 5 {
		req, _ := http.NewRequest("OPTIONS", srv.URL+"/chat", nil)
		req.Header.Set("Origin", "https://app.example")
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "content-type")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
			resp.Header.Get("Access-Control-Allow-Headers") != "content-type" || resp.Header.Get("X-RateLimit-Limit") != "" {
			t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
		}
	}
	// The one request of the minute is still there, and its refusal is
	// readable by the page.
	for i, want := range []int{200, 429} {
		req, _ := http.NewRequest("GET", srv.URL+"/chat?prompt=hi", nil)
		req.Header.Set("Origin", "https://app.example")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
			!strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "Retry-After") {
			t.Errorf("request %d: %d %v", i+1, resp.StatusCode, resp.Header)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d upstream calls, want 1", n)
	}
}

// The budget cut in every framing: an error event of type
// rate_limit_exceeded and never a done, or in plain text a broken body.
func TestTokenBudgetCutsEveryFraming(t *testing.T) {
	up, _ := countingUpstream(t, 100, time.Millisecond)
	for _, tt := range []struct{ format, signal, done string }{
		{"openai", `data: {"error":{"message":"token budget exceeded: 20 tokens per minute; retry in `, "[DONE]"},
		{"sse", "event: error\ndata: {\"error\":{\"message\":\"token budget exceeded: 20 tokens per minute; retry in ", "event: done"},
		{"ndjson", `{"error":{"message":"token budget exceeded: 20 tokens per minute; retry in `, `"done"`},
		{"text", "", ""},
	} {
		t.Run(tt.format, func(t *testing.T) {
			h := provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\trate_limit 100-M {\n\t\ttokens 20-M\n\t}\n}")
			srv := serveProxy(t, h)
			resp, err := srv.Client().Get(srv.URL + "/?prompt=hi&format=" + tt.format)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.Header.Get("X-Ratelimit-Limit-Tokens") != "20" || resp.Header.Get("X-Ratelimit-Remaining-Tokens") != "0" {
				t.Errorf("token headers %v", resp.Header)
			}
			body, err := io.ReadAll(resp.Body)
			if tt.format == "text" {
				if err == nil || string(body) != strings.Repeat("x", 19) {
					t.Errorf("text: %q, %v; want 19 tokens (1 of prompt) and a broken body", body, err)
				}
				return
			}
			if !strings.Contains(string(body), tt.signal) || !strings.Contains(string(body), `"type":"rate_limit_exceeded"`) ||
				strings.Contains(string(body), tt.done) || strings.Count(string(body), `"x"`) != 19 {
				t.Errorf("body:\n%s", body)
			}
		})
	}
}

// A model outside models, or max_tokens over the cap, never reaches the
// upstream.
func TestRequestLimitsRefuseBeforeUpstream(t *testing.T) {
	up, calls := countingUpstream(t, 1, 0)
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\tmodels a\n\tmax_tokens 10\n\tmax_messages 1\n}")
	srv := serveProxy(t, h)
	for _, tt := range []struct {
		body, want string
		status     int
	}{
		{`{"model":"b","messages":[{"role":"user","content":"hi"}]}`, `"param":"model","code":"model_not_found"`, 404},
		{`{"model":"a","messages":[{"role":"user","content":"hi"}],"max_tokens":11}`, `"param":"max_tokens","code":"integer_above_max_value"`, 400},
		{`{"model":"a","messages":[{"role":"user","content":"hi"}],"n":2}`, `"param":"n"`, 400},
		{`{"model":"a","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}`, `"param":"messages"`, 400},
	} {
		resp, err := srv.Client().Post(srv.URL, "application/json", strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.want) || !strings.HasPrefix(string(b), `{"error":{"message":`) {
			t.Errorf("%s: %d %s", tt.body, resp.StatusCode, b)
		}
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("%d upstream calls", n)
	}
	resp, err := srv.Client().Get(srv.URL + "/?prompt=hi&model=a")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || calls.Load() != 1 {
		t.Errorf("allowed model: %d, %d calls", resp.StatusCode, calls.Load())
	}
}
