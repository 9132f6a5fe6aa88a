package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/llmstream/caddy-llmstream/web"
)

func init() {
	caddy.RegisterModule(LLMWeb{})
	httpcaddyfile.RegisterHandlerDirective("llm_web", parseLLMWeb)
	httpcaddyfile.RegisterDirectiveOrder("llm_web", httpcaddyfile.Before, "file_server")
}

// LLMWeb serves the demo pages built into the binary: the chat page at /
// (index.html) and the desktop viewer (desktop.html). It answers 404 for
// anything else, so place it under a matcher or last in a route.
type LLMWeb struct {
	files http.Handler
}

// CaddyModule returns the Caddy module information.
func (LLMWeb) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.llm_web",
		New: func() caddy.Module { return new(LLMWeb) },
	}
}

// Provision sets up the file server over the embedded pages.
func (h *LLMWeb) Provision(caddy.Context) error {
	h.files = http.FileServerFS(web.Files)
	return nil
}

// ServeHTTP serves one page.
func (h *LLMWeb) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	h.files.ServeHTTP(w, r)
	return nil
}

func parseLLMWeb(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(LLMWeb)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	llm_web [<matcher>]
func (h *LLMWeb) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("llm_web takes no block")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*LLMWeb)(nil)
	_ caddyhttp.MiddlewareHandler = (*LLMWeb)(nil)
	_ caddyfile.Unmarshaler       = (*LLMWeb)(nil)
)
