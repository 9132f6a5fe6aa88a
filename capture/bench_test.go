package capture

import (
	"context"
	"hash/maphash"
	"image"
	"image/color"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/kbinani/screenshot"

	"github.com/llmstream/caddy-llmstream/capture/xvfbtest"
)

// desktop draws a 1920x1080 picture with what a screen holds: a gradient
// wallpaper, flat windows with title bars, lines of text-like strokes and a
// photo-like noisy area. JPEG cost depends on content, and a flat colour
// would flatter the encoder.
func desktop() *image.RGBA {
	const w, h = 1920, 1080
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	rng := rand.New(rand.NewPCG(1, 2))
	for y := range h {
		for x := range w {
			img.SetRGBA(x, y, color.RGBA{uint8(40 + x*60/w), uint8(70 + y*80/h), 140, 255})
		}
	}
	fill := func(r image.Rectangle, c color.RGBA) {
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				img.SetRGBA(x, y, c)
			}
		}
	}
	for _, win := range []image.Rectangle{
		image.Rect(80, 60, 1100, 900),
		image.Rect(900, 200, 1840, 1000),
	} {
		fill(win, color.RGBA{250, 250, 250, 255})
		fill(image.Rect(win.Min.X, win.Min.Y, win.Max.X, win.Min.Y+32), color.RGBA{60, 60, 70, 255})
		// Text: 8x16 cells with a few dark strokes, 40% of lines indented.
		for y := win.Min.Y + 48; y+16 < win.Max.Y-16; y += 20 {
			end := win.Max.X - 16 - rng.IntN(300)
			for x := win.Min.X + 16 + rng.IntN(2)*40; x+8 < end; x += 9 {
				if rng.IntN(7) == 0 {
					continue // a space
				}
				for range 6 {
					px, py := x+rng.IntN(7), y+rng.IntN(14)
					fill(image.Rect(px, py, px+1, py+2+rng.IntN(3)), color.RGBA{20, 20, 30, 255})
				}
			}
		}
	}
	// A photo: smooth colours plus noise.
	for y := 600; y < 870; y++ {
		for x := 120; x < 600; x++ {
			n := uint8(rng.IntN(40))
			img.SetRGBA(x, y, color.RGBA{uint8(x/3) + n, uint8(y/4) + n, 90 + n, 255})
		}
	}
	return img
}

var desktopOnce = sync.OnceValue(desktop)

// measure runs f b.N times and also reports the process's CPU time per run,
// which a busy machine disturbs less than the wall time.
func measure(b *testing.B, f func()) {
	b.Helper()
	cpu0 := cpuTime()
	n := 0
	for b.Loop() {
		f()
		n++
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(n), "cpu-ms/op")
}

func BenchmarkGrab(b *testing.B) {
	if os.Getenv("DISPLAY") == "" {
		b.Setenv("DISPLAY", xvfbtest.Start(b, "1920x1080x24").Display)
	}
	s := NewScreen(0)
	defer s.Close()
	img, err := s.Grab()
	if err != nil {
		b.Skipf("no display: %v", err)
	}
	b.Logf("display %v", img.Rect)
	b.Run("persistent", func(b *testing.B) {
		measure(b, func() {
			if _, err := s.Grab(); err != nil {
				b.Fatal(err)
			}
		})
	})
	// What every grab cost when it went through screenshot alone.
	b.Run("screenshot", func(b *testing.B) {
		measure(b, func() {
			if _, err := screenshot.CaptureDisplay(0); err != nil {
				b.Fatal(err)
			}
		})
	})
}

func BenchmarkHash1080p(b *testing.B) {
	img := desktopOnce()
	seed := maphash.MakeSeed()
	b.SetBytes(int64(len(img.Pix)))
	measure(b, func() { maphash.Bytes(seed, img.Pix) })
}

func BenchmarkScale1080pTo1280(b *testing.B) {
	img := desktopOnce()
	var dst *image.RGBA
	measure(b, func() { dst = Scale(dst, img, 1280) })
}

func BenchmarkEncode1080p(b *testing.B) {
	img := desktopOnce()
	for _, q := range []int{50, 70, 90} {
		b.Run(qname(q), func(b *testing.B) {
			var n int
			measure(b, func() {
				data, err := Encode(img, q, n)
				if err != nil {
					b.Fatal(err)
				}
				n = len(data)
			})
			b.ReportMetric(float64(n)/1024, "KiB/frame")
		})
	}
}

func BenchmarkEncode720p(b *testing.B) {
	img := Scale(nil, desktopOnce(), 1280)
	var n int
	measure(b, func() {
		data, err := Encode(img, 70, n)
		if err != nil {
			b.Fatal(err)
		}
		n = len(data)
	})
	b.ReportMetric(float64(n)/1024, "KiB/frame")
}

func qname(q int) string {
	return "q" + string(rune('0'+q/10)) + string(rune('0'+q%10))
}

// BenchmarkViewers measures the CPU the whole process spends per frame with
// 1 and 20 viewers of one hub whose screen changes at every grab (the worst
// case: every tick is encoded). "discard" viewers write their parts to
// io.Discard: the cost of the hub and the viewers themselves. "tcp" viewers
// write to loopback TCP connections, drained by readers in this process,
// whose CPU is counted too.
func BenchmarkViewers(b *testing.B) {
	for _, sink := range []string{"discard", "tcp"} {
		for _, n := range []int{1, 20} {
			b.Run(sink+"-"+string(rune('0'+n/10))+string(rune('0'+n%10)), func(b *testing.B) {
				benchViewers(b, sink, n)
			})
		}
	}
}

// changing is a 1080p desktop whose corner pixel changes at every grab.
type changing struct {
	base *image.RGBA
	n    int
}

func (c *changing) Grab() (*image.RGBA, error) {
	img := image.NewRGBA(c.base.Rect)
	copy(img.Pix, c.base.Pix)
	c.n++
	img.Pix[0] = byte(c.n)
	return img, nil
}

func benchViewers(b *testing.B, sink string, n int) {
	h := NewHub(&changing{base: desktopOnce()}, Options{FPS: 1000, Quality: 70})
	defer h.Close()

	writers := make([]io.Writer, n)
	for i := range writers {
		writers[i] = io.Discard
		if sink == "tcp" {
			c, s := tcpPair(b)
			writers[i] = c
			go func() { _, _ = io.Copy(io.Discard, s) }()
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	first := make(chan *Frame, 1)
	for i := range n {
		v, err := h.Join()
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer v.Leave()
			p := NewPartWriter(writers[i])
			for {
				f, err := v.Next(ctx)
				if err != nil {
					return
				}
				if err := p.WriteFrame(f.JPEG); err != nil {
					return
				}
				if i == 0 {
					select {
					case first <- f:
					default:
					}
				}
			}
		}()
	}
	<-first // warm up: the loop runs and every viewer is in
	start, cpu0 := time.Now(), cpuTime()
	enc0 := h.Stats().Encodes
	for b.Loop() {
		<-first
	}
	frames := h.Stats().Encodes - enc0
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(frames), "cpu-ms/frame")
	b.ReportMetric(float64(frames)/time.Since(start).Seconds(), "frames/s")
}

func tcpPair(b *testing.B) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}
