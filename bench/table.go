package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// printTable writes the results as a Markdown table, each scenario's rows
// with their CPU and memory against Caddy's reverse_proxy in the same
// scenario.
func printTable(w io.Writer, results []*result) {
	fmt.Fprintln(w, "| scenario | target | chunks/s | streams/s | proxy CPU per chunk | vs reverse_proxy | added latency p50 / p99 / max | first token added p50 | TTFB p50 / p99 | memory per stream | vs reverse_proxy | errors |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	base := map[string]*result{}
	for _, r := range results {
		if r.Target == "reverse_proxy" {
			base[r.Scenario] = r
		}
	}
	for _, r := range results {
		name := r.Target
		if r.Upstream == "h2c" {
			name += " (h2c upstream)"
		}
		cpu, mem := "n/a", "n/a"
		cpuRatio, memRatio := "", ""
		if r.Target != "floor" {
			cpu, mem = us(r.CPUPerChunk), kib(r.RSSPerStream)
			if b := base[r.Scenario]; b != nil && b.CPUPerChunk > 0 {
				cpuRatio = fmt.Sprintf("%.2f×", float64(r.CPUPerChunk)/float64(b.CPUPerChunk))
			}
			if b := base[r.Scenario]; b != nil && b.RSSPerStream > 0 {
				memRatio = fmt.Sprintf("%.2f×", float64(r.RSSPerStream)/float64(b.RSSPerStream))
			}
		}
		fmt.Fprintf(w, "| %s | %s | %.0f | %.0f | %s | %s | %s / %s / %s | %s | %s / %s | %s | %s | %d |\n",
			r.Scenario, name, r.ChunksPerSec, r.StreamsPerSec, cpu, cpuRatio,
			us(r.AddedP50), us(r.AddedP99), us(r.AddedMax), us(r.FirstP50),
			us(r.TTFBP50), us(r.TTFBP99), mem, memRatio, r.Errors)
	}
}

// machine says what the figures were measured on.
func machine(c *config) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	nginx := "no nginx"
	if out, err := exec.Command(c.nginx, "-v").CombinedOutput(); err == nil {
		nginx = strings.TrimSpace(strings.TrimPrefix(string(out), "nginx version: "))
	}
	peers := nginx
	if c.fastapi != "" {
		peers += "; " + c.fastapi
	}
	return fmt.Sprintf("%s, %d cores, %s, %s; %s; chunks every %s to %s; %s warm-up, %s measured per row",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), model, runtime.Version(), peers,
		c.interval[0], c.interval[1], c.warmup, c.duration)
}

// us formats a duration in µs below 1 ms, else in ms or s.
func us(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func kib(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/1024) }
