package capture

import "image"

// ScaledSize is the size of a w×h image scaled down to at most maxWidth
// pixels wide with its aspect ratio kept. A maxWidth of 0, or one at least w,
// keeps the size.
func ScaledSize(w, h, maxWidth int) (int, int) {
	if maxWidth <= 0 || w <= maxWidth {
		return w, h
	}
	sh := (h*maxWidth + w/2) / w // rounded
	return maxWidth, max(sh, 1)
}

// Scale returns src scaled down to ScaledSize(…, maxWidth), or src itself
// when it is narrow enough. It averages each destination pixel's box of
// source pixels, which keeps thin text lines that nearest-neighbour sampling
// drops. dst is reused when it has the right size, so a loop can pass back
// what Scale returned last time.
func Scale(dst, src *image.RGBA, maxWidth int) *image.RGBA {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	dw, dh := ScaledSize(sw, sh, maxWidth)
	if dw == sw && dh == sh {
		return src
	}
	if dst == nil || dst.Rect.Dx() != dw || dst.Rect.Dy() != dh {
		dst = image.NewRGBA(image.Rect(0, 0, dw, dh))
	}

	// Source column spans of each destination column: [xs[i], xs[i+1]).
	xs := make([]int, dw+1)
	for i := range xs {
		xs[i] = i * sw / dw
	}
	sums := make([]uint32, 3*dw)
	for dy := range dh {
		y0, y1 := dy*sh/dh, (dy+1)*sh/dh
		clear(sums)
		for y := y0; y < y1; y++ {
			row := src.Pix[src.PixOffset(src.Rect.Min.X, src.Rect.Min.Y+y):]
			for dx := range dw {
				var r, g, b uint32
				for i := xs[dx] * 4; i < xs[dx+1]*4; i += 4 {
					p := row[i : i+3 : i+3]
					r += uint32(p[0])
					g += uint32(p[1])
					b += uint32(p[2])
				}
				s := sums[3*dx : 3*dx+3 : 3*dx+3]
				s[0] += r
				s[1] += g
				s[2] += b
			}
		}
		out := dst.Pix[dy*dst.Stride : dy*dst.Stride+4*dw]
		rows := uint32(y1 - y0)
		for dx := range dw {
			n := rows * uint32(xs[dx+1]-xs[dx])
			s := sums[3*dx : 3*dx+3 : 3*dx+3]
			o := out[4*dx : 4*dx+4 : 4*dx+4]
			o[0] = uint8((s[0] + n/2) / n)
			o[1] = uint8((s[1] + n/2) / n)
			o[2] = uint8((s[2] + n/2) / n)
			o[3] = 0xff
		}
	}
	return dst
}
