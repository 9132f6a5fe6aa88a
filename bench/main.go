// Command bench measures what a streaming proxy costs per chunk and per open
// stream, for llm_proxy and for what a user would run instead, in one go on
// one machine so that the ratios compare like with like.
//
// Every target relays the same stream of llm_simulator (model sim-stamp,
// whose chunks carry their send time) to this load generator, which holds a
// number of streams open for a while and reads the stamps back out of any
// framing. The simulator runs in its own Caddy process, so the CPU and
// memory read from /proc are the proxy's alone:
//
//	floor          the simulator, no proxy (the client's and network's share)
//	reverse_proxy  Caddy's reverse_proxy with flush_interval -1
//	nginx          Debian's nginx with proxy_buffering off (skipped if absent)
//	fastapi        the hand-written way the tutorials teach: FastAPI's
//	               StreamingResponse over httpx, one uvicorn worker
//	               (bench/peers/fastapi_proxy.py; skipped if Debian's
//	               python3-fastapi, python3-uvicorn, python3-httpx are absent)
//	openai         llm_proxy relaying OpenAI's framing
//	sse, ndjson    llm_proxy re-framing for EventSource and fetch readers
//
// Run it from the repository root:
//
//	go run ./bench                          # every scenario and target
//	go run ./bench -streams 1000 -targets reverse_proxy,sse -duration 30s
package main

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

type config struct {
	caddy, nginx     string
	python           string // the interpreter with FastAPI, uvicorn and httpx
	fastapi          string // their versions, once found
	streams          []int
	burst            int
	targets          []string
	warmup, duration time.Duration
	interval         [2]time.Duration
	chunks           int
	runs             int
	pprofDir         string
	jsonOut          string
	dir              string
}

// target is one way of serving the simulator's stream to the client.
type target struct {
	name  string
	query string // appended to the endpoint
	// h2c: past the descriptor limit this target multiplexes its upstream
	// over h2c (the Caddy targets); the others stay on HTTP/1.1.
	h2c bool
	// oneProcess: every stream's two descriptors are in one process, which
	// has neither h2c nor a second worker; skipped past the limit.
	oneProcess bool
	// config writes the target's configuration and returns its command
	// line, and its admin address if it is a Caddy.
	config func(c *config, listen, sim string, h2c bool) (admin string, argv []string, err error)
}

var targets = []target{
	{name: "floor"},
	{name: "reverse_proxy", h2c: true, config: caddyTarget(func(sim string, h2c bool) string {
		scheme := ""
		if h2c {
			scheme = "h2c://"
		}
		return "reverse_proxy " + scheme + sim + " {\n\t\tflush_interval -1\n\t}"
	})},
	{name: "nginx", config: nginxTarget},
	{name: "fastapi", oneProcess: true, config: fastapiTarget},
	{name: "openai", h2c: true, config: llmTarget("openai")},
	{name: "sse", h2c: true, query: "?format=sse", config: llmTarget("sse")},
	{name: "ndjson", h2c: true, query: "?format=ndjson", config: llmTarget("ndjson")},
	// sse with resume on: what keeping every event for a reconnect costs.
	{name: "sse_resume", h2c: true, query: "?format=sse", config: llmTarget("sse", "resume 10s {\n\t\t\tmax_streams 1000000\n\t\t}")},
}

func main() {
	var c config
	var streams, names, interval string
	flag.StringVar(&c.caddy, "caddy", "", "a Caddy built from ./cmd/caddy (default: build one)")
	flag.StringVar(&c.nginx, "nginx", "nginx", "the nginx binary; the nginx target is skipped if it is missing")
	flag.StringVar(&c.python, "python", "/usr/bin/python3", "the Python with FastAPI, uvicorn and httpx (Debian's, not a pyenv shim); the fastapi target is skipped without them")
	flag.StringVar(&streams, "streams", "100,1000,10000", "concurrent streams of each paced scenario")
	flag.IntVar(&c.burst, "burst", 1000, "concurrent short streams (5 chunks each) of the burst scenario; 0 skips it")
	flag.StringVar(&names, "targets", "floor,reverse_proxy,nginx,fastapi,openai,sse,ndjson", "the targets to measure")
	flag.DurationVar(&c.warmup, "warmup", 6*time.Second, "ramp-up and settling before each measurement")
	flag.DurationVar(&c.duration, "duration", 15*time.Second, "each measurement window")
	flag.StringVar(&interval, "interval", "20ms-50ms", "the simulator's pause between chunks, or a range it draws from")
	flag.IntVar(&c.chunks, "chunks", 100, "content chunks per paced stream")
	flag.IntVar(&c.runs, "runs", 3, "runs of each target per scenario; the table shows the median run by CPU per chunk")
	flag.StringVar(&c.pprofDir, "pprof", "", "save CPU, heap and goroutine profiles of each Caddy target in this directory")
	flag.StringVar(&c.jsonOut, "json", "", "also write the results as JSON to this file")
	flag.Parse()
	log.SetFlags(log.Ltime)

	if c.runs < 1 {
		log.Fatalf("bad -runs %d", c.runs)
	}
	for _, s := range strings.Split(streams, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			log.Fatalf("bad -streams %q", s)
		}
		c.streams = append(c.streams, n)
	}
	c.targets = strings.Split(names, ",")
	for _, n := range c.targets {
		if !slices.ContainsFunc(targets, func(t target) bool { return t.name == n }) {
			log.Fatalf("unknown target %q", n)
		}
	}
	lo, hi, _ := strings.Cut(interval, "-")
	var err error
	if c.interval[0], err = time.ParseDuration(lo); err != nil {
		log.Fatalf("bad -interval: %v", err)
	}
	c.interval[1] = c.interval[0]
	if hi != "" {
		if c.interval[1], err = time.ParseDuration(hi); err != nil || c.interval[1] < c.interval[0] {
			log.Fatalf("bad -interval %q", interval)
		}
	}
	if c.pprofDir != "" {
		if err := os.MkdirAll(c.pprofDir, 0o755); err != nil {
			log.Fatal(err)
		}
	}

	if c.dir, err = os.MkdirTemp("", "llmstream-bench-"); err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(c.dir)
	if c.caddy == "" {
		c.caddy = filepath.Join(c.dir, "caddy")
		log.Printf("building ./cmd/caddy")
		build := exec.Command("go", "build", "-o", c.caddy, "./cmd/caddy")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			log.Fatalf("building caddy: %v (run the bench from the repository root)", err)
		}
	}
	if _, err := exec.LookPath(c.nginx); err != nil && slices.Contains(c.targets, "nginx") {
		log.Printf("no nginx (%v): skipping the nginx target; apt-get install nginx to include it", err)
		c.targets = slices.DeleteFunc(c.targets, func(n string) bool { return n == "nginx" })
	}
	if slices.Contains(c.targets, "fastapi") {
		if c.fastapi, err = fastapiVersions(c.python); err != nil {
			log.Printf("no FastAPI (%v): skipping the fastapi target; apt-get install python3-fastapi python3-uvicorn python3-httpx to include it", err)
			c.targets = slices.DeleteFunc(c.targets, func(n string) bool { return n == "fastapi" })
		}
	}

	var results []*result
	failed := false // a target that did not run, or a stream that failed
	scenarios := make([]scenario, 0, len(c.streams)+1)
	for _, n := range c.streams {
		scenarios = append(scenarios, scenario{name: fmt.Sprintf("%d streams", n), streams: n, chunks: c.chunks})
	}
	if c.burst > 0 {
		scenarios = append(scenarios, scenario{name: fmt.Sprintf("burst of %d", c.burst), streams: c.burst, chunks: 5, burst: true})
	}
	for _, sc := range scenarios {
		// Targets take turns, run after run, so that a disturbance of the
		// machine does not fall on one target's every run.
		runs := map[string][]*result{}
		for run := 1; run <= c.runs; run++ {
			for _, t := range targets {
				if !slices.Contains(c.targets, t.name) {
					continue
				}
				if t.oneProcess && pastNofile(sc.streams) {
					if run == 1 {
						log.Printf("%s, %s: skipped: %d streams need more descriptors than the open-file limit (%d) gives one process",
							sc.name, t.name, sc.streams, nofile())
					}
					continue
				}
				log.Printf("%s, %s, run %d of %d", sc.name, t.name, run, c.runs)
				r, err := measure(&c, sc, t)
				if err != nil {
					log.Printf("  failed: %v", err)
					failed = true
					continue
				}
				log.Printf("  %s", r.summary())
				runs[t.name] = append(runs[t.name], r)
			}
		}
		for _, t := range targets {
			if rs := runs[t.name]; len(rs) > 0 {
				results = append(results, medianRun(rs))
			}
		}
	}
	fmt.Println()
	fmt.Println(machine(&c))
	fmt.Println()
	printTable(os.Stdout, results)
	if c.jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(c.jsonOut, b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	// A stream that failed is a finding, not noise: say so in the status.
	for _, r := range results {
		if r.Errors > 0 {
			log.Printf("%s, %s: %d streams failed: %s", r.Scenario, r.Target, r.Errors, r.ErrorKinds)
			failed = true
		}
	}
	if failed {
		os.RemoveAll(c.dir)
		os.Exit(1)
	}
}

type scenario struct {
	name    string
	streams int
	chunks  int
	burst   bool // short streams: the cost of starting and ending them
}

// result is one target's figures in one scenario.
type result struct {
	Scenario, Target string
	Streams          int
	Runs             int
	Upstream         string // h1 or h2c
	ChunksPerSec     float64
	StreamsPerSec    float64
	CPUPerChunk      time.Duration // the proxy's CPU time per relayed chunk
	CPUPerStream     time.Duration // and per completed stream
	AddedP50         time.Duration // chunk receive time minus its send stamp
	AddedP99         time.Duration
	AddedMax         time.Duration
	FirstP50         time.Duration // the same for each stream's first token
	TTFBP50, TTFBP99 time.Duration
	RSSPerStream     int64 // bytes of resident memory per open stream
	RSSIdle, RSSLoad int64
	OpenStreams      int64
	Errors           int
	ErrorKinds       string `json:",omitempty"`
}

func (r *result) summary() string {
	s := fmt.Sprintf("%.0f chunks/s, %.0f streams/s, CPU %s/chunk, added p50 %s p99 %s max %s, TTFB p50 %s, %s/stream, %d errors",
		r.ChunksPerSec, r.StreamsPerSec, us(r.CPUPerChunk), us(r.AddedP50), us(r.AddedP99), us(r.AddedMax), us(r.TTFBP50), kib(r.RSSPerStream), r.Errors)
	if r.ErrorKinds != "" {
		s += " (" + r.ErrorKinds + ")"
	}
	return s
}

// measure starts the simulator and the target, runs the load and reads the
// target's CPU and memory over the window.
func measure(c *config, sc scenario, t target) (*result, error) {
	// Each stream costs a proxy two descriptors with an HTTP/1.1 upstream;
	// past the limit, the Caddy targets multiplex their upstream over h2c.
	h2c := pastNofile(sc.streams)
	sim := freePort()
	simProc, err := startSimulator(c, sim, sc)
	if err != nil {
		return nil, err
	}
	defer simProc.stop()

	endpoint := "http://" + sim + "/v1/chat/completions"
	var proxy *proc
	var admin string
	if t.config != nil {
		listen := freePort()
		var argv []string
		if admin, argv, err = t.config(c, listen, sim, h2c); err != nil {
			return nil, err
		}
		if proxy, err = start(t.name, c.dir, listen, argv...); err != nil {
			return nil, err
		}
		defer proxy.stop()
		endpoint = "http://" + listen + "/v1/chat/completions" + t.query
	}
	time.Sleep(500 * time.Millisecond)

	body := `{"model":"sim-stamp","stream":true,"messages":[{"role":"user","content":"bench"}]`
	if sc.burst {
		body += `,"max_tokens":` + strconv.Itoa(sc.chunks)
	}
	body += "}"
	l := newLoad(endpoint, []byte(body), sc.streams)
	l.Ramp = c.warmup / 2
	if sc.burst {
		l.Ramp = 0
	}
	now := time.Now()
	l.From, l.To = now.Add(c.warmup), now.Add(c.warmup+c.duration)
	measured := proxy
	if measured == nil {
		measured = simProc // the floor: what the upstream itself costs
	}
	idle := measured.rss()

	ctx, cancel := context.WithDeadline(context.Background(), l.To)
	defer cancel()
	done := make(chan struct{})
	go func() { l.run(ctx); close(done) }()

	time.Sleep(time.Until(l.From))
	cpu0 := measured.cpu()
	profiled := c.pprofDir != "" && admin != ""
	base := filepath.Join(c.pprofDir, fileName(sc.name+"-"+t.name))
	var profile chan error
	if profiled {
		profile = make(chan error, 1)
		go func() { profile <- saveProfile(admin, c.duration, base+".pprof") }()
	}
	var rss, open []int64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Until(l.To) > 500*time.Millisecond {
		<-tick.C
		rss = append(rss, measured.rss())
		open = append(open, l.active.Load())
	}
	if profiled {
		// What the open streams hold, while they are open.
		for _, kind := range []string{"heap", "goroutine"} {
			if err := fetch("http://"+admin+"/debug/pprof/"+kind, base+"."+kind+".pprof"); err != nil {
				log.Printf("  %s profile: %v", kind, err)
			}
		}
	}
	time.Sleep(time.Until(l.To))
	cpu := measured.cpu() - cpu0
	<-done
	if profile != nil {
		if err := <-profile; err != nil {
			log.Printf("  profile: %v", err)
		}
	}

	secs := c.duration.Seconds()
	r := &result{
		Scenario: sc.name, Target: t.name, Streams: sc.streams, Upstream: "h1",
		ChunksPerSec:  float64(l.chunks.Load()) / secs,
		StreamsPerSec: float64(l.completed.Load()) / secs,
		AddedP50:      l.added.quantile(0.5), AddedP99: l.added.quantile(0.99), AddedMax: l.added.max(),
		FirstP50: l.first.quantile(0.5),
		TTFBP50:  l.ttfb.quantile(0.5), TTFBP99: l.ttfb.quantile(0.99),
		RSSIdle: idle, RSSLoad: median(rss), OpenStreams: median(open),
	}
	if h2c && t.h2c {
		r.Upstream = "h2c"
	}
	if n := l.chunks.Load(); n > 0 {
		r.CPUPerChunk = cpu / time.Duration(n)
	}
	if n := l.completed.Load(); n > 0 {
		r.CPUPerStream = cpu / time.Duration(n)
	}
	if r.OpenStreams > 0 {
		r.RSSPerStream = (r.RSSLoad - r.RSSIdle) / r.OpenStreams
	}
	r.Errors, r.ErrorKinds = l.errors()
	return r, nil
}

// pastNofile tells whether a proxy process would run out of descriptors
// with streams HTTP/1.1 streams, two descriptors each.
func pastNofile(streams int) bool { return uint64(2*streams+256) > nofile() }

func startSimulator(c *config, listen string, sc scenario) (*proc, error) {
	lo, hi := c.interval[0], c.interval[1]
	cf := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	servers {
		protocols h1 h2c
	}
}
# Any Host: nginx sends its upstream's name.
http://:%s {
	bind %s
	llm_simulator {
		chunk_interval %s %s
		chunks %d
	}
}
`, port(listen), host(listen), lo, hi, sc.chunks)
	path := filepath.Join(c.dir, "simulator.caddyfile")
	if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
		return nil, err
	}
	return start("simulator", c.dir, listen, c.caddy, "run", "--config", path, "--adapter", "caddyfile")
}

// caddyTarget is a Caddy that serves the given handler block. Its admin
// endpoint stays on, on a port of its own, for profiles.
func caddyTarget(handler func(sim string, h2c bool) string) func(*config, string, string, bool) (string, []string, error) {
	return func(c *config, listen, sim string, h2c bool) (string, []string, error) {
		admin := freePort()
		cf := fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
}
http://%s {
	%s
}
`, admin, listen, handler(sim, h2c))
		path := filepath.Join(c.dir, "proxy.caddyfile")
		if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
			return "", nil, err
		}
		return admin, []string{c.caddy, "run", "--config", path, "--adapter", "caddyfile"}, nil
	}
}

func llmTarget(format string, extra ...string) func(*config, string, string, bool) (string, []string, error) {
	return caddyTarget(func(sim string, h2c bool) string {
		scheme := "http://"
		if h2c {
			scheme = "h2c://"
		}
		lines := ""
		for _, e := range extra {
			lines += "\n\t\t" + e
		}
		return "llm_proxy " + scheme + sim + "/v1 {\n\t\tformat " + format + lines + "\n\t}"
	})
}

// nginxTarget is nginx as its documentation says to proxy a stream: HTTP/1.1
// keepalive upstream connections and proxy_buffering off. One worker per
// core, as nginx is deployed.
func nginxTarget(c *config, listen, sim string, _ bool) (string, []string, error) {
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	conf := fmt.Sprintf(`%s
worker_processes %d;
worker_rlimit_nofile %d;
daemon off;
pid %s/nginx.pid;
error_log %s/nginx-error.log warn;
events {
	worker_connections %d;
}
http {
	access_log off;
	client_body_temp_path %s;
	proxy_temp_path %s;
	upstream simulator {
		server %s;
		keepalive 1024;
	}
	server {
		listen %s backlog=16384;
		location / {
			proxy_pass http://simulator;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_buffering off;
			proxy_read_timeout 300s;
		}
	}
}
`, user, runtime.NumCPU(), nofile(), c.dir, c.dir, nofile()-64, c.dir, c.dir, sim, listen)
	path := filepath.Join(c.dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	return "", []string{c.nginx, "-p", c.dir, "-c", path}, nil
}

//go:embed peers/fastapi_proxy.py
var fastapiProxy []byte

// fastapiVersions checks that python can run the fastapi target and says
// with what.
func fastapiVersions(python string) (string, error) {
	out, err := exec.Command(python, "-c", `import sys, fastapi, uvicorn, httpx
print("FastAPI %s, uvicorn %s, httpx %s, Python %s" % (fastapi.__version__, uvicorn.__version__, httpx.__version__, sys.version.split()[0]))`).CombinedOutput()
	if err != nil {
		if why := lastLines(out, 1); why != "" {
			return "", fmt.Errorf("%s: %s", python, why) // such as No module named 'fastapi'
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// fastapiTarget is bench/peers/fastapi_proxy.py: the tutorials' way, in one
// uvicorn worker. Like nginx it stays on HTTP/1.1 to the simulator whatever
// the number of streams.
func fastapiTarget(c *config, listen, sim string, _ bool) (string, []string, error) {
	path := filepath.Join(c.dir, "fastapi_proxy.py")
	if err := os.WriteFile(path, fastapiProxy, 0o644); err != nil {
		return "", nil, err
	}
	return "", []string{c.python, path, "--upstream", "http://" + sim + "/v1/chat/completions",
		"--host", host(listen), "--port", port(listen)}, nil
}

// saveProfile fetches a CPU profile from a Caddy's admin endpoint.
func saveProfile(admin string, d time.Duration, path string) error {
	secs := max(int(d.Seconds())-1, 1)
	return fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs), path)
}

func fetch(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func host(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }
func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

func fileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' {
			return '-'
		}
		return r
	}, s)
}

// medianRun is the run with the median CPU per chunk (the lower middle of
// an even number), carrying the error count of all the runs.
func medianRun(rs []*result) *result {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b *result) int { return cmp.Compare(a.CPUPerChunk, b.CPUPerChunk) })
	m := *rs[(len(rs)-1)/2]
	m.Runs = len(rs)
	for _, r := range rs {
		if r != rs[(len(rs)-1)/2] {
			m.Errors += r.Errors
		}
	}
	return &m
}

func median(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}
