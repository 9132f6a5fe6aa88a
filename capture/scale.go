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

	// col[sx] is the destination column of source column sx; n[dx] the
	// number of source columns that column averages.
	col := make([]int32, sw)
	n := make([]uint32, dw)
	for sx := range sw {
		dx := sx * dw / sw
		col[sx] = int32(dx)
		n[dx]++
	}
	sums := make([]uint32, 3*dw)
	for dy := range dh {
		y0, y1 := dy*sh/dh, (dy+1)*sh/dh
		clear(sums)
		for y := y0; y < y1; y++ {
			off := src.PixOffset(src.Rect.Min.X, src.Rect.Min.Y+y)
			row := src.Pix[off : off+4*sw : off+4*sw]
			for sx, dx := range col {
				p := row[4*sx : 4*sx+3 : 4*sx+3]
				s := sums[3*dx : 3*dx+3 : 3*dx+3]
				s[0] += uint32(p[0])
				s[1] += uint32(p[1])
				s[2] += uint32(p[2])
			}
		}
		out := dst.Pix[dy*dst.Stride : dy*dst.Stride+4*dw]
		rows := uint32(y1 - y0)
		for dx := range dw {
			k := rows * n[dx]
			s := sums[3*dx : 3*dx+3 : 3*dx+3]
			o := out[4*dx : 4*dx+4 : 4*dx+4]
			o[0] = uint8((s[0] + k/2) / k)
			o[1] = uint8((s[1] + k/2) / k)
			o[2] = uint8((s[2] + k/2) / k)
			o[3] = 0xff
		}
	}
	return dst
}
