package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// provisionProxy builds an LLMProxy from a Caddyfile block, as Caddy would.
func provisionProxy(t testing.TB, block string) *LLMProxy {
	t.Helper()
	h := new(LLMProxy)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cleanup() })
	return h
}

func serveProxy(t testing.TB, h *LLMProxy) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestNoGoroutineLeft drives complete, failed and abandoned streams through
// the handler and checks that nothing it started outlives them.
func TestNoGoroutineLeft(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := 0; i < 1000; i++ {
			io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"x"}}]}`+"\n\n")
			f.Flush()
			if r.URL.Query().Get("n") == "" {
				break
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		if r.URL.Query().Get("n") == "" {
			io.WriteString(w, `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
		}
	}))
	defer up.Close()

	for _, q := range []string{"", "n=1"} {
		h := provisionProxy(t, "llm_proxy "+up.URL+"/v1?"+q+" {\n\theartbeat 10ms\n\tformat sse\n}")
		srv := serveProxy(t, h)
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/?prompt=hi", nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 20)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatal(err)
		}
		if q == "" {
			rest, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(buf)+string(rest), "event: done") {
				t.Errorf("no done: %q", rest)
			}
		}
		cancel() // leave mid-stream in the n=1 case
		resp.Body.Close()
		srv.Client().CloseIdleConnections()
		srv.Close()
		h.Cleanup()
	}
}

// TestH2CUpstream checks that an h2c:// upstream is spoken to in HTTP/2
// without TLS, and a plain http:// one in the same pool in HTTP/1.1.
func TestH2CUpstream(t *testing.T) {
	protos := make(chan string, 4)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos <- r.Proto
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
	}))
	up.Config.Protocols = new(http.Protocols)
	up.Config.Protocols.SetHTTP1(true)
	up.Config.Protocols.SetUnencryptedHTTP2(true)
	up.Start()
	defer up.Close()
	host := strings.TrimPrefix(up.URL, "http://")

	h := provisionProxy(t, "llm_proxy h2c://"+host+"/v1 http://"+host+"/v1 {\n\tformat sse\n\tlb_policy round_robin\n}")
	srv := serveProxy(t, h)
	seen := map[string]bool{}
	for range 2 {
		resp, err := http.Get(srv.URL + "/?prompt=hi")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), "event: done") {
			t.Fatalf("no done: %q", body)
		}
		seen[<-protos] = true
	}
	if !seen["HTTP/2.0"] || !seen["HTTP/1.1"] {
		t.Errorf("upstream saw %v, want HTTP/2.0 from h2c:// and HTTP/1.1 from http://", seen)
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct{ block, want string }{
		{"llm_proxy {\n\tmodel x\n}", "an upstream is required"},
		{"llm_proxy ftp://x/v1", "not an http(s) or h2c base URL"},
		{"llm_proxy https://user:pw@x/v1", "api_key, not in its URL"},
		{"llm_proxy /v1", "not an http(s) or h2c base URL"},
	} {
		h := new(LLMProxy)
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.block)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		err := h.Validate()
		cancel()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: Validate = %v, want %q", tt.block, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("credentials in the error: %v", err)
		}
	}
}

// goneWriter is a client that received the headers and then left: every
// write of content fails.
type goneWriter struct {
	httptest.ResponseRecorder
	writes int
}

func (w *goneWriter) Write(b []byte) (int, error) { return 0, errors.New("client gone") }
func (w *goneWriter) Flush()                      {}

// TestDisconnectMetrics checks that a client that left mid-stream counts as
// a disconnect, and the delta read for it as one it never got.
func TestDisconnectMetrics(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"x"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer up.Close()
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\tformat ndjson\n}")
	after := metrics.afterGone.WithLabelValues(up.URL + "/v1")
	gone := metrics.disconnects.WithLabelValues(up.URL + "/v1")
	before, goneBefore := testutil.ToFloat64(after), testutil.ToFloat64(gone)

	w := &goneWriter{ResponseRecorder: *httptest.NewRecorder()}
	r := httptest.NewRequest(http.MethodGet, "/?prompt=hi", nil)
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatal(err)
	}
	if d := testutil.ToFloat64(gone) - goneBefore; d != 1 {
		t.Errorf("client_disconnects_total rose by %v, want 1", d)
	}
	if d := testutil.ToFloat64(after) - before; d != 1 {
		t.Errorf("tokens_after_disconnect_total rose by %v, want 1", d)
	}
}

// TestUnframeableContentBreaksTextStream checks that content the text
// framing cannot carry fails the stream (a broken body) instead of ending it
// as if it were complete.
func TestUnframeableContentBreaksTextStream(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"ok "}}]}`+"\n\n")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":5}}]}`+"\n\n")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
	}))
	defer up.Close()
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1 {\n\tformat text\n}")
	srv := serveProxy(t, h)
	resp, err := http.Get(srv.URL + "/?prompt=hi")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("clean end after unframeable content; body %q", body)
	}
	if string(body) != "ok " {
		t.Errorf("body %q, want %q", body, "ok ")
	}
}

// TestUpstreamQueryStaysOutOfLogsAndMetrics checks that a token in a base
// URL's query (as some gateways want it) appears in no log line and no
// metric label.
func TestUpstreamQueryStaysOutOfLogsAndMetrics(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}`+"\n\ndata: [DONE]\n\n")
	}))
	defer up.Close()
	h := provisionProxy(t, "llm_proxy "+up.URL+"/v1?token=s3cret-token {\n\tformat sse\n}")
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	srv := serveProxy(t, h)
	resp, err := http.Get(srv.URL + "/?prompt=hi")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	if logs.Len() == 0 {
		t.Fatal("no log line")
	}
	for _, e := range logs.All() {
		for k, v := range e.ContextMap() {
			if strings.Contains(fmt.Sprint(v), "s3cret") {
				t.Errorf("log field %s = %v", k, v)
			}
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.requests)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "s3cret") {
					t.Errorf("metric label %s = %s", l.GetName(), l.GetValue())
				}
				found = found || l.GetValue() == up.URL+"/v1"
			}
		}
	}
	if !found {
		t.Errorf("no requests_total labelled %s/v1", up.URL)
	}
}
