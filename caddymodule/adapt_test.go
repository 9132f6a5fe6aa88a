package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the golden files of the adapt tests")

// TestCaddyfileAdapt adapts each testdata/caddyfile_adapt/*.caddyfiletest
// (a Caddyfile, a line of dashes, the JSON it must become).
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			in, want, ok := strings.Cut(string(data), "\n----------\n")
			if !ok {
				t.Fatal("no ---------- separator")
			}
			if *update {
				out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), nil)
				if err != nil {
					t.Fatal(err)
				}
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, out, "", "\t"); err != nil {
					t.Fatal(err)
				}
				os.WriteFile(f, []byte(in+"\n----------\n"+pretty.String()+"\n"), 0o644)
				return
			}
			caddytest.CompareAdapt(t, f, in, "caddyfile", want)
		})
	}
}

// TestCaddyfileErrors checks that bad Caddyfiles fail to adapt with an error
// that says what is wrong and where.
func TestCaddyfileErrors(t *testing.T) {
	tests := []struct{ name, block, want string }{
		{"unknown subdirective", "llm_proxy {\n\tto http://x/v1\n\tbogus 1\n}", "llm_proxy: unknown subdirective bogus"},
		{"duplicate subdirective", "llm_proxy {\n\tto http://x/v1\n\tmodel a\n\tmodel b\n}", "llm_proxy: duplicate subdirective model"},
		{"to twice", "llm_proxy http://x/v1 {\n\tto http://y/v1\n}", "upstream given twice"},
		{"missing arg", "llm_proxy {\n\tto\n}", "wrong argument count"},
		{"extra arg", "llm_proxy {\n\tapi_key a b\n}", "wrong argument count"},
		{"bad format", "llm_proxy {\n\tto http://x/v1\n\tformat xml\n}", `unknown format "xml"`},
		{"bad duration", "llm_proxy {\n\tto http://x/v1\n\theartbeat soon\n}", `bad heartbeat "soon"`},
		{"negative duration", "llm_proxy {\n\tto http://x/v1\n\theartbeat -1s\n}", `bad heartbeat "-1s"`},
		{"bad size", "llm_proxy {\n\tto http://x/v1\n\tmax_body lots\n}", `bad max_body "lots"`},
		{"unknown timeout", "llm_proxy {\n\tto http://x/v1\n\ttimeouts {\n\t\tread 1s\n\t}\n}", "timeouts: unknown subdirective read"},
		{"duplicate timeout", "llm_proxy {\n\tto http://x/v1\n\ttimeouts {\n\t\tidle 1s\n\t\tidle 2s\n\t}\n}", "timeouts: duplicate subdirective idle"},
		{"header_up arity", "llm_proxy {\n\tto http://x/v1\n\theader_up X-A\n}", "wrong argument count"},
		{"bad policy", "llm_proxy http://a/v1 {\n\tlb_policy fastest\n}", `unknown lb_policy "fastest"`},
		{"bad auth", "llm_proxy http://a/v1 {\n\tauth basic\n}", `unknown auth "basic": want bearer or x-api-key`},
		{"bad upstream auth", "llm_proxy {\n\tupstream http://a/v1 {\n\t\tauth\n\t}\n}", "wrong argument count"},
		{"bad retries", "llm_proxy http://a/v1 {\n\tretries -1\n}", `bad retries "-1": want an integer of at least 0`},
		{"unknown upstream setting", "llm_proxy {\n\tupstream http://a/v1 {\n\t\tprice 3\n\t}\n}", "upstream: unknown subdirective price"},
		{"model renamed twice", "llm_proxy {\n\tupstream http://a/v1 {\n\t\tmodel a b\n\t\tmodel a c\n\t}\n}", `model "a" renamed twice`},
		{"weight zero", "llm_proxy {\n\tupstream http://a/v1 {\n\t\tweight 0\n\t}\n}", `bad weight "0"`},
		{"simulator unknown", "llm_simulator {\n\tspeed 3\n}", "llm_simulator: unknown subdirective speed"},
		{"simulator interval range", "llm_simulator {\n\tchunk_interval 50ms 20ms\n}", "must not be below the first"},
		{"simulator interval args", "llm_simulator {\n\tchunk_interval 1ms 2ms 3ms\n}", "wrong argument count"},
		{"simulator chunks", "llm_simulator {\n\tchunks 0\n}", `bad chunks "0"`},
		{"simulator duplicate", "llm_simulator {\n\tchunks 1\n\tchunks 2\n}", "llm_simulator: duplicate subdirective chunks"},
		{"resume ttl", "llm_proxy http://a/v1 {\n\tresume soon\n}", `bad resume "soon"`},
		{"resume store", "llm_proxy http://a/v1 {\n\tresume {\n\t\tstore disk\n\t}\n}", `bad store "disk": want memory, or redis <url>`},
		{"resume redis url", "llm_proxy http://a/v1 {\n\tresume {\n\t\tstore redis\n\t}\n}", `bad store "redis": want memory, or redis <url>`},
		{"resume unknown", "llm_proxy http://a/v1 {\n\tresume {\n\t\tsticky\n\t}\n}", "resume: unknown subdirective sticky"},
		{"resume duplicate", "llm_proxy http://a/v1 {\n\tresume {\n\t\tgrace 1s\n\t\tgrace 2s\n\t}\n}", "resume: duplicate subdirective grace"},
		{"desktop duplicate", "desktop_stream {\n\tfps 10\n\tfps 20\n}", "desktop_stream: duplicate subdirective fps"},
		{"desktop range", "desktop_stream {\n\tquality 0\n}", `bad quality "0": want an integer from 1 to 100`},
		{"desktop rate_limit unknown", "desktop_stream {\n\trate_limit 1-M {\n\t\tburst 3\n\t}\n}", "rate_limit: unknown subdirective burst"},
		{"desktop rate_limit duplicate", "desktop_stream {\n\trate_limit 1-M {\n\t\tzone a\n\t\tzone b\n\t}\n}", "rate_limit: duplicate subdirective zone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := "http://localhost:8080 {\n" + tt.block + "\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatalf("adapted without error")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error %q, want it to contain %q and the file and line", err, tt.want)
			}
		})
	}
}
