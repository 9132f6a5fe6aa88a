package capture

import (
	"image"
	"image/color"
	"sync"
	"sync/atomic"
)

// fakeScreen is a Grabber over an in-memory screen.
type fakeScreen struct {
	mu  sync.Mutex
	img *image.RGBA
	err error

	// gate, when set, makes every Grab wait for a value (or its closing),
	// so a test decides how many grabs happen.
	gate  chan struct{}
	grabs atomic.Int64
}

func newFakeScreen(w, h int, c color.RGBA) *fakeScreen {
	f := &fakeScreen{img: image.NewRGBA(image.Rect(0, 0, w, h))}
	f.paint(c)
	return f
}

func (f *fakeScreen) Grab() (*image.RGBA, error) {
	if f.gate != nil {
		<-f.gate
	}
	f.grabs.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	// A real grab returns a new image every time.
	img := image.NewRGBA(f.img.Rect)
	copy(img.Pix, f.img.Pix)
	return img, nil
}

func (f *fakeScreen) paint(c color.RGBA) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := 0; i < len(f.img.Pix); i += 4 {
		f.img.Pix[i], f.img.Pix[i+1], f.img.Pix[i+2], f.img.Pix[i+3] = c.R, c.G, c.B, c.A
	}
}

func (f *fakeScreen) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// counter is a Grabber whose screen changes at every grab.
type counter struct {
	n atomic.Uint32
}

func (c *counter) Grab() (*image.RGBA, error) {
	n := c.n.Add(1)
	img := image.NewRGBA(image.Rect(0, 0, 64, 36))
	img.Pix[0], img.Pix[1], img.Pix[2] = byte(n), byte(n>>8), byte(n>>16)
	return img, nil
}
