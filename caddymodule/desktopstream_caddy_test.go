package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/llmstream/caddy-llmstream/capture"
	"github.com/llmstream/caddy-llmstream/capture/mjpegtest"
	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

func TestDesktopStreamAdapt(t *testing.T) {
	caddytest.AssertAdapt(t, `
	:8080 {
		reverse_proxy localhost:9000
		desktop_stream /desktop* {
			display 1
			fps 15
			quality 60
			max_width 1280
			max_viewers 4
			allow_remote
		}
	}`, "caddyfile", `{
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						":8080"
					],
					"routes": [
						{
							"match": [
								{
									"path": [
										"/desktop*"
									]
								}
							],
							"handle": [
								{
									"allow_remote": true,
									"display": 1,
									"fps": 15,
									"handler": "desktop_stream",
									"max_viewers": 4,
									"max_width": 1280,
									"quality": 60
								}
							]
						},
						{
							"handle": [
								{
									"handler": "reverse_proxy",
									"upstreams": [
										{
											"dial": "localhost:9000"
										}
									]
								}
							]
						}
					]
				}
			}
		}
	}
}`)
}

// loadCaddyfile runs a Caddyfile in this process's Caddy.
func loadCaddyfile(t *testing.T, caddyfile string) {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w.Message)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading: %v", err)
	}
}

// currentHub is the capture loop in the pool; there must be one.
func currentHub(t *testing.T) *capture.Hub {
	t.Helper()
	var hub *capture.Hub
	n := 0
	hubs.Range(func(_, v any) bool {
		hub = v.(*capture.Hub)
		n++
		return true
	})
	if n != 1 {
		t.Fatalf("%d capture loops in the pool, want 1", n)
	}
	return hub
}

// In Caddy itself: a reload keeps the capture loop and ends the old
// config's streams, and stopping Caddy ends them and the loop. (A process
// exit, which waits for the servers to drain, is tested on the binary in
// e2e/desktop_test.go.)
func TestDesktopStreamInCaddyReloadAndStop(t *testing.T) {
	fakeDisplays(t, &screen{c: red}, 1, nil)
	port := testenv.FreePort(t)
	site := func(extra string) string {
		return fmt.Sprintf(`{
			admin off
			persist_config off
			auto_https off
		}
		http://127.0.0.1:%d {
			%s
			desktop_stream /desktop {
				fps 20
			}
		}`, port, extra)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}

	loadCaddyfile(t, site(""))
	stopped := false
	defer func() {
		if !stopped {
			_ = caddy.Stop()
		}
	}()
	s1 := mjpegtest.Open(t, c, base+"/desktop")
	s1.Next(t)
	hub := currentHub(t)

	loadCaddyfile(t, site(`respond /other "other"`))
	if err := s1.End(); err != nil {
		t.Fatalf("old stream after the reload: %v", err)
	}
	if currentHub(t) != hub {
		t.Fatal("the reload replaced the capture loop")
	}
	s2 := mjpegtest.Open(t, c, base+"/desktop")
	s2.Next(t)

	done := make(chan error, 1)
	go func() { done <- caddy.Stop() }()
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("caddy.Stop is held by an open stream")
	}
	if err := s2.End(); err != nil {
		t.Fatalf("stream after stop: %v", err)
	}
	if _, err := hub.Join(); !errors.Is(err, capture.ErrClosed) {
		t.Fatalf("the capture loop outlived Caddy: %v", err)
	}
}
