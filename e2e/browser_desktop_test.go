//go:build linux || freebsd || openbsd || netbsd

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

// viewDesktop starts Xvfb painted red, caddy streaming it at 10 fps, and
// Chromium on the viewer page, and waits until the page shows red.
func viewDesktop(t *testing.T) (*xvfbtest.Server, *tab) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs Chromium")
	}
	x := xvfbtest.Start(t, "320x240x24")
	xvfbtest.Paint(t, x.Display, "red")
	c := desktopCaddy(t, 10, x.Display)
	p := &tab{t: t, ctx: newBrowser(t)}
	p.do(chromedp.Navigate(c.URL + "/desktop?view"))
	waitColour(p, "255,0,0", 10*time.Second)
	return x, p
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

// desktopStatus is the page's status line.
const desktopStatus = `document.getElementById("status").textContent`

// waitColour polls the page until it shows colour, and says how long that
// took.
func waitColour(p *tab, want string, limit time.Duration) time.Duration {
	p.t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < limit {
		got := pageEval[string](p, shownColour)
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
	p.t.Fatalf("the page shows %s, not %s, after %v", last, want, limit)
	return 0
}

func abs(x int) int { return max(x, -x) }

// Chromium paints a part of a multipart/x-mixed-replace image only when
// the next part's headers arrive: the stream follows each new picture with
// a part one tick later, so the viewer page shows a change promptly even
// when the screen then stays still.
func TestBrowserDesktopPaintsPromptly(t *testing.T) {
	x, p := viewDesktop(t)
	if got := pageEval[string](p, desktopStatus); got != "live" {
		t.Errorf("status %q", got)
	}
	for _, col := range []struct{ name, rgb string }{
		{"blue", "0,0,255"}, {"green", "0,255,0"}, {"white", "255,255,255"},
	} {
		xvfbtest.Paint(t, x.Display, col.name)
		// Without the repeat, the keepalive would paint it after 2s.
		d := waitColour(p, col.rgb, time.Second)
		t.Logf("Chromium showed %s after %v", col.name, d)
	}
}

// The viewer page shows why the stream dropped and reconnects when the
// display is back.
func TestBrowserDesktopReconnects(t *testing.T) {
	x, p := viewDesktop(t)

	x.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(pageEval[string](p, desktopStatus), "desktop_stream: no X display: cannot connect to "+x.Display) {
		if time.Now().After(deadline) {
			t.Fatalf("the page shows %q after the display went", pageEval[string](p, desktopStatus))
		}
		time.Sleep(50 * time.Millisecond)
	}

	x2 := xvfbtest.StartDisplay(t, x.Display, "320x240x24")
	xvfbtest.Paint(t, x2.Display, "#00ff00")
	waitColour(p, "0,255,0", 15*time.Second)
	deadline = time.Now().Add(5 * time.Second)
	for pageEval[string](p, desktopStatus) != "live" {
		if time.Now().After(deadline) {
			t.Fatalf("status %q after reconnecting", pageEval[string](p, desktopStatus))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
