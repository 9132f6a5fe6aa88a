package capture

import (
	"image"
	"image/color"
	"testing"
)

func TestScaledSize(t *testing.T) {
	for _, c := range []struct{ w, h, max, ww, wh int }{
		{1920, 1080, 0, 1920, 1080},    // no limit
		{1920, 1080, 1920, 1920, 1080}, // exactly the limit
		{1280, 720, 1920, 1280, 720},   // never enlarged
		{1920, 1080, 1280, 1280, 720},
		{1920, 1080, 960, 960, 540},
		{1366, 768, 1000, 1000, 562}, // 562.2 rounds down
		{1280, 1024, 640, 640, 512},
		{3840, 1080, 1000, 1000, 281}, // 281.25
		{1000, 1, 10, 10, 1},          // at least one row
	} {
		if w, h := ScaledSize(c.w, c.h, c.max); w != c.ww || h != c.wh {
			t.Errorf("ScaledSize(%d, %d, %d) = %dx%d, want %dx%d", c.w, c.h, c.max, w, h, c.ww, c.wh)
		}
	}
}

func TestScaleAveragesBoxes(t *testing.T) {
	// 4x2: a red 2x2 block next to a block of black and white pixels.
	src := image.NewRGBA(image.Rect(0, 0, 4, 2))
	src.Set(0, 0, color.RGBA{255, 0, 0, 255})
	src.Set(1, 0, color.RGBA{255, 0, 0, 255})
	src.Set(0, 1, color.RGBA{255, 0, 0, 255})
	src.Set(1, 1, color.RGBA{255, 0, 0, 255})
	src.Set(2, 0, color.RGBA{255, 255, 255, 255})
	src.Set(3, 1, color.RGBA{255, 255, 255, 255})
	src.Set(3, 0, color.RGBA{0, 0, 0, 255})
	src.Set(2, 1, color.RGBA{0, 0, 0, 255})

	dst := Scale(nil, src, 2)
	if dst.Rect != image.Rect(0, 0, 2, 1) {
		t.Fatalf("bounds %v", dst.Rect)
	}
	if c := dst.RGBAAt(0, 0); c != (color.RGBA{255, 0, 0, 255}) {
		t.Errorf("red block -> %v", c)
	}
	if c := dst.RGBAAt(1, 0); c != (color.RGBA{128, 128, 128, 255}) {
		t.Errorf("checkerboard -> %v, want mid grey", c)
	}

	// The destination is reused when it fits.
	if again := Scale(dst, src, 2); again != dst {
		t.Error("a destination of the right size was not reused")
	}
	// A narrow enough image is returned as it is.
	if same := Scale(nil, src, 4); same != src {
		t.Error("an image within max_width was copied")
	}
}

func TestScaleOffsetSubImage(t *testing.T) {
	big := image.NewRGBA(image.Rect(0, 0, 40, 20))
	for y := range 20 {
		for x := range 40 {
			c := color.RGBA{0, 0, 0, 255}
			if x >= 20 {
				c = color.RGBA{0, 255, 0, 255}
			}
			big.SetRGBA(x, y, c)
		}
	}
	sub := big.SubImage(image.Rect(20, 0, 40, 20)).(*image.RGBA) // all green
	dst := Scale(nil, sub, 10)
	if dst.Rect.Dx() != 10 || dst.Rect.Dy() != 10 {
		t.Fatalf("bounds %v", dst.Rect)
	}
	for y := range 10 {
		for x := range 10 {
			if c := dst.RGBAAt(x, y); c != (color.RGBA{0, 255, 0, 255}) {
				t.Fatalf("(%d,%d) = %v, want green", x, y, c)
			}
		}
	}
}
