package caddymodule

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/llmstream/caddy-llmstream/simulator"
)

func init() {
	caddy.RegisterModule(LLMSimulator{})
	httpcaddyfile.RegisterHandlerDirective("llm_simulator", parseLLMSimulator)
	httpcaddyfile.RegisterDirectiveOrder("llm_simulator", httpcaddyfile.Before, "reverse_proxy")
}

// LLMSimulator is a built-in OpenAI-compatible upstream that streams
// deterministic text. It is a simulator, not a model: it lets the example
// run with no API key and gives tests and benchmarks a fast, predictable
// upstream. It answers <prefix>/chat/completions and <prefix>/models, and
// special model names make it fail on purpose (see the README).
type LLMSimulator struct {
	// The pause between two chunks. Default: 30ms.
	ChunkInterval *caddy.Duration `json:"chunk_interval,omitempty"`
	// If above chunk_interval, each pause is a random length between the
	// two, as a real model's pacing varies.
	ChunkIntervalMax caddy.Duration `json:"chunk_interval_max,omitempty"`
	// Content chunks per reply. Default: 20.
	Chunks int `json:"chunks,omitempty"`
	// The model it reports when a request names none. Default: llm-simulator.
	Model string `json:"model,omitempty"`

	sim *simulator.Simulator
}

const defaultSimInterval = 30 * time.Millisecond

// CaddyModule returns the Caddy module information.
func (LLMSimulator) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.llm_simulator",
		New: func() caddy.Module { return new(LLMSimulator) },
	}
}

// Provision builds the simulator.
func (s *LLMSimulator) Provision(caddy.Context) error {
	s.sim = simulator.New(simulator.Config{
		ChunkInterval:    durationOr(s.ChunkInterval, defaultSimInterval),
		ChunkIntervalMax: time.Duration(s.ChunkIntervalMax),
		Chunks:           s.Chunks,
		Model:            s.Model,
	})
	return nil
}

// ServeHTTP answers as an OpenAI-compatible upstream would.
func (s *LLMSimulator) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	s.sim.ServeHTTP(w, r)
	return nil
}

func parseLLMSimulator(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(LLMSimulator)
	if err := s.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return s, nil
}

// UnmarshalCaddyfile sets up the simulator from Caddyfile tokens. Syntax:
//
//	llm_simulator [<matcher>] {
//		chunk_interval <duration> [<max>]
//		chunks <n>
//		model <name>
//	}
func (s *LLMSimulator) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if err := noArgs(d); err != nil {
		return err
	}
	return block(d, "llm_simulator", func(name string) (err error) {
		switch name {
		case "chunk_interval":
			err = s.unmarshalInterval(d)
		case "chunks":
			s.Chunks, err = intArg(d, 1, unbounded)
		case "model":
			s.Model, err = oneArg(d)
		default:
			err = errUnknown
		}
		return err
	})
}

// unmarshalInterval reads `chunk_interval <duration> [<max>]`: one pause, or
// a range that each pause is drawn from.
func (s *LLMSimulator) unmarshalInterval(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.ArgErr()
	}
	var durs [2]caddy.Duration
	for i, a := range args {
		var err error
		if durs[i], err = parseDuration(d, "chunk_interval", a, "a duration such as 30ms"); err != nil {
			return err
		}
	}
	s.ChunkInterval = &durs[0]
	if len(args) == 2 {
		if durs[1] < durs[0] {
			return d.Errf("chunk_interval %s %s: the second duration must not be below the first", args[0], args[1])
		}
		s.ChunkIntervalMax = durs[1]
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*LLMSimulator)(nil)
	_ caddyhttp.MiddlewareHandler = (*LLMSimulator)(nil)
	_ caddyfile.Unmarshaler       = (*LLMSimulator)(nil)
)
