//go:build linux || freebsd || openbsd || netbsd

package caddymodule

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

// page drives one Chromium tab through the DevTools protocol.
type page struct {
	ws *websocket.Conn
	id atomic.Int64
}

// openChromium starts headless Chromium on url and connects to its tab.
func openChromium(t *testing.T, url string) *page {
	t.Helper()
	bin := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("Chromium is not installed")
	}
	// Not t.TempDir: Chromium's helper processes may still write there
	// while the test's cleanup removes it.
	profile, err := os.MkdirTemp("", "desktopstream-chromium")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--remote-debugging-port=0", "--remote-allow-origins=*", "--user-data-dir="+profile, url)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // to kill its helpers with it
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		for range 20 { // helpers may still be exiting
			if os.RemoveAll(profile) == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	// "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if _, ws, ok := strings.Cut(sc.Text(), "DevTools listening on "); ok {
				found <- ws
			}
		}
	}()
	var browser string
	select {
	case browser = <-found:
	case <-time.After(20 * time.Second):
		t.Fatal("Chromium did not start")
	}
	host := strings.TrimPrefix(browser, "ws://")
	host = host[:strings.IndexByte(host, '/')]

	// Find the tab's own socket.
	var targets []struct{ Type, URL, WebSocketDebuggerURL string }
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/json/list")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&targets)
			resp.Body.Close()
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, url[:strings.IndexByte(url, '?')]) {
				ws, err := websocket.Dial(tg.WebSocketDebuggerURL, "", "http://localhost/")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ws.Close() })
				return &page{ws: ws}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no tab for %s: %v %+v", url, err, targets)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eval evaluates a JavaScript expression returning a string.
func (p *page) eval(t *testing.T, expr string) string {
	t.Helper()
	id := p.id.Add(1)
	req := map[string]any{"id": id, "method": "Runtime.evaluate",
		"params": map[string]any{"expression": expr, "returnByValue": true}}
	if err := websocket.JSON.Send(p.ws, req); err != nil {
		t.Fatal(err)
	}
	for {
		var resp struct {
			ID     int64
			Result struct {
				Result struct{ Value any }
			}
			Error *struct{ Message string }
		}
		if err := websocket.JSON.Receive(p.ws, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.ID != id {
			continue // an event
		}
		if resp.Error != nil {
			t.Fatalf("evaluating: %s", resp.Error.Message)
		}
		return fmt.Sprint(resp.Result.Result.Value)
	}
}

// shownColour draws the page's <img> on a canvas and reads its centre.
const shownColour = `(() => {
	const img = document.getElementById("screen");
	if (!img || !img.naturalWidth) return "none";
	const c = document.createElement("canvas");
	c.width = img.naturalWidth; c.height = img.naturalHeight;
	const g = c.getContext("2d");
	g.drawImage(img, 0, 0);
	const d = g.getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
	return d[0] + "," + d[1] + "," + d[2];
})()`

// waitColour polls the page until it shows colour, and says how long that
// took.
func (p *page) waitColour(t *testing.T, want string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < limit {
		got := p.eval(t, shownColour)
		var r, g, b int
		if _, err := fmt.Sscanf(got, "%d,%d,%d", &r, &g, &b); err == nil {
			var wr, wg, wb int
			fmt.Sscanf(want, "%d,%d,%d", &wr, &wg, &wb)
			if abs(r-wr) < 40 && abs(g-wg) < 40 && abs(b-wb) < 40 {
				return time.Since(start)
			}
		}
		last = got
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the page shows %s, not %s, after %v", last, want, limit)
	return 0
}

func abs(x int) int { return max(x, -x) }

// Chromium paints a part of a multipart/x-mixed-replace image only when
// the next part's headers arrive: the stream follows each new picture with
// a part one tick later, so the viewer page shows a change promptly even
// when the screen then stays still.
func TestDesktopStreamChromiumPaintsPromptly(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Chromium")
	}
	x := xDisplay(t, "320x240x24")
	xvfbtest.Paint(t, x.Display, "red")
	ds := provision(t, "desktop_stream {\n fps 10\n}")
	srv, _ := serve(t, ds)

	p := openChromium(t, srv.URL+"/desk?view")
	p.waitColour(t, "255,0,0", 10*time.Second)
	if got := p.eval(t, `document.getElementById("status").textContent`); got != "live" {
		t.Errorf("status %q", got)
	}
	for _, c := range []struct{ name, rgb string }{
		{"blue", "0,0,255"}, {"green", "0,255,0"}, {"white", "255,255,255"},
	} {
		xvfbtest.Paint(t, x.Display, c.name)
		// Without the repeat, the keepalive would paint it after 2s.
		d := p.waitColour(t, c.rgb, time.Second)
		t.Logf("Chromium showed %s after %v", c.name, d)
	}
}

// The viewer page shows why the stream dropped and reconnects when the
// display is back.
func TestDesktopStreamChromiumReconnects(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Chromium")
	}
	x := xDisplay(t, "320x240x24")
	xvfbtest.Paint(t, x.Display, "red")
	ds := provision(t, "desktop_stream {\n fps 10\n}")
	srv, _ := serve(t, ds)

	p := openChromium(t, srv.URL+"/desk?view")
	p.waitColour(t, "255,0,0", 10*time.Second)

	x.Stop()
	status := `document.getElementById("status").textContent`
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.eval(t, status), "desktop_stream: no X display: cannot connect to "+x.Display) {
		if time.Now().After(deadline) {
			t.Fatalf("the page shows %q after the display went", p.eval(t, status))
		}
		time.Sleep(50 * time.Millisecond)
	}

	x2 := xvfbtest.StartDisplay(t, x.Display, "320x240x24")
	xvfbtest.Paint(t, x2.Display, "#00ff00")
	p.waitColour(t, "0,255,0", 15*time.Second)
	deadline = time.Now().Add(5 * time.Second)
	for p.eval(t, status) != "live" {
		if time.Now().After(deadline) {
			t.Fatalf("status %q after reconnecting", p.eval(t, status))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
