package caddymodule

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzUnmarshalCaddyfile feeds arbitrary directive blocks to the parsers:
// they must return an error or a config, never panic or hang.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	files, _ := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		in, _, _ := strings.Cut(string(b), "----------")
		f.Add(in)
	}
	f.Add("llm_proxy http://x/v1 {\n\ttimeouts {\n\t\tidle 1s\n\t}\n\theader_up A b\n}")
	f.Add("llm_simulator {\n\tchunks 3\n}")
	f.Add("desktop_stream {\n\tfps 25\n\trate_limit 2-M {\n\t\tmax_concurrent 1\n\t}\n}")
	f.Fuzz(func(t *testing.T, in string) {
		for _, u := range []caddyfile.Unmarshaler{new(LLMProxy), new(LLMSimulator), new(DesktopStream), new(LLMWeb)} {
			_ = u.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		}
	})
}
