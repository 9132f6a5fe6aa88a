package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	soakFor     = flag.Duration("soak", 8*time.Second, "how long TestSoak runs (CI runs the short default)")
	soakStreams = flag.Int("soak.streams", 200, "concurrent streams in TestSoak")
)

// chaosUpstream streams n words for a prompt "<mode>-<n>", then misbehaves
// as the mode says: ok, reset, stall, garbage, error.
func chaosUpstream(t *testing.T) *upstream {
	return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Messages []struct{ Content string }
		}
		json.NewDecoder(r.Body).Decode(&req)
		mode, n := "ok", 10
		if len(req.Messages) > 0 {
			mode, n = parsePrompt(req.Messages[0].Content)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := 0; i < n; i++ {
			if _, err := io.WriteString(w, "data: "+chunkJSON(fmt.Sprintf("w%d ", i))+"\n\n"); err != nil {
				return
			}
			f.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
			}
		}
		switch mode {
		case "reset":
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		case "stall":
			<-r.Context().Done()
		case "garbage":
			io.WriteString(w, "data: {garbage\n\n")
		case "error":
			io.WriteString(w, `data: {"error":{"message":"chaos","type":"server_error"}}`+"\n\n")
		default:
			io.WriteString(w, "data: "+finishJSON+"\n\ndata: [DONE]\n\n")
		}
	})
}

func parsePrompt(p string) (string, int) {
	mode, ns, _ := strings.Cut(p, "-")
	n, _ := strconv.Atoi(ns)
	return mode, n
}

// procStats reads a process's open files and resident memory.
func procStats(t *testing.T, pid int) (fds int, rssKB int) {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			rssKB, _ = strconv.Atoi(strings.Fields(l)[1])
		}
	}
	return len(entries), rssKB
}

// goroutines reads Caddy's goroutine count from its admin pprof endpoint.
func goroutines(t *testing.T, admin string) int {
	resp, err := http.Get("http://" + admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "goroutine profile: total ")))
	return n
}

// TestSoak holds many concurrent streams against an upstream that resets,
// stalls, sends garbage and error events, with clients that vanish, and
// checks that nothing is lost or leaked: every completed stream has
// exactly the upstream's words in order and a done; every failed one ends
// with the error signal and never a done; afterwards goroutines and open
// files return to their baseline. Longer: go test ./e2e -run TestSoak -soak 5m -soak.streams 1000
func TestSoak(t *testing.T) {
	up := chaosUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
	llm_proxy {
		to %s/v1
		format ndjson
		heartbeat 200ms
		timeouts {
			idle 500ms
		}
	}
}`, up.URL))
	pid := c.cmd.Process.Pid
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *soakStreams, MaxConnsPerHost: 0}}

	run := func(d time.Duration) map[string]int {
		var mu sync.Mutex
		counts := map[string]int{}
		var failures atomic.Int32
		deadline := time.Now().Add(d)
		var wg sync.WaitGroup
		for i := 0; i < *soakStreams; i++ {
			wg.Add(1)
			go func(seed uint64) {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, 1))
				for time.Now().Before(deadline) {
					mode := []string{"ok", "ok", "ok", "reset", "stall", "garbage", "error", "vanish"}[rng.IntN(8)]
					n := 3 + rng.IntN(20)
					outcome, err := soakOne(client, c.URL, mode, n)
					if err != nil {
						if failures.Add(1) <= 5 {
							t.Errorf("%s-%d: %v", mode, n, err)
						}
						return
					}
					mu.Lock()
					counts[outcome]++
					mu.Unlock()
				}
			}(uint64(i))
		}
		wg.Wait()
		return counts
	}

	// Warm up, then take the baseline.
	run(500 * time.Millisecond)
	settle(client, up)
	baseG, baseFD := goroutines(t, c.Admin), 0
	baseFD, baseRSS := procStats(t, pid)

	counts := run(*soakFor)
	settle(client, up)
	t.Logf("streams by outcome: %v", counts)

	// Goroutines and files go back to the baseline once connections close.
	deadline := time.Now().Add(10 * time.Second)
	for {
		g := goroutines(t, c.Admin)
		fds, rss := procStats(t, pid)
		if g <= baseG+5 && fds <= baseFD+5 {
			t.Logf("after: %d goroutines (baseline %d), %d files (%d), RSS %d KiB (%d)", g, baseG, fds, baseFD, rss, baseRSS)
			if rss > baseRSS+200<<10 {
				t.Errorf("resident memory grew from %d to %d KiB", baseRSS, rss)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leak: %d goroutines (baseline %d), %d files (baseline %d)", g, baseG, fds, baseFD)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if counts["completed"] == 0 || counts["failed"] == 0 || counts["vanished"] == 0 {
		t.Errorf("the mix did not exercise every path: %v", counts)
	}
}

// settle closes idle connections on both sides, so that what remains open
// is what the proxy itself holds.
func settle(client *http.Client, up *upstream) {
	client.CloseIdleConnections()
	up.CloseClientConnections()
	time.Sleep(300 * time.Millisecond)
}

// soakOne runs one stream and checks it; it returns the outcome.
func soakOne(client *http.Client, base, mode string, n int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/?prompt="+mode+"-"+strconv.Itoa(n), nil)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	var words []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if mode == "ok" {
				return "", fmt.Errorf("ok stream broke after %d words: %v", len(words), err)
			}
			if mode == "vanish" {
				return "", fmt.Errorf("vanish stream broke: %v", err)
			}
			return "", fmt.Errorf("%s stream ended without its error signal after %d words: %v", mode, len(words), err)
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue // heartbeat
		}
		var obj struct {
			Content *string
			Done    bool
			Error   *struct{ Message string }
		}
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			return "", fmt.Errorf("bad line %q", line)
		}
		switch {
		case obj.Content != nil:
			if want := fmt.Sprintf("w%d ", len(words)); *obj.Content != want {
				return "", fmt.Errorf("word %d is %q, want %q", len(words), *obj.Content, want)
			}
			words = append(words, *obj.Content)
			if mode == "vanish" && len(words) == n/2+1 {
				cancel()
				return "vanished", nil
			}
		case obj.Done:
			if mode != "ok" && mode != "vanish" {
				return "", fmt.Errorf("%s stream ended with done", mode)
			}
			if len(words) != n {
				return "", fmt.Errorf("done after %d of %d words", len(words), n)
			}
			return "completed", nil
		case obj.Error != nil:
			if mode == "ok" || mode == "vanish" {
				return "", fmt.Errorf("ok stream failed: %s", obj.Error.Message)
			}
			if len(words) != n {
				return "", fmt.Errorf("%s: error after %d of %d words", mode, len(words), n)
			}
			// The error line is the failure signal: the body ends
			// cleanly after it, with nothing more.
			if rest, err := io.ReadAll(br); err != nil || len(bytes.TrimSpace(rest)) != 0 {
				return "", fmt.Errorf("%s: after the error: %q, %v", mode, rest, err)
			}
			return "failed", nil
		}
	}
}
