package capture

import (
	"bytes"
	"image"
	"image/jpeg"
)

// Encode encodes img as a baseline JPEG of the given quality (1-100).
// sizeHint, the size of the previous frame, saves the buffer's regrowth.
func Encode(img *image.RGBA, quality, sizeHint int) ([]byte, error) {
	var b bytes.Buffer
	b.Grow(sizeHint + sizeHint/8 + 4096)
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: quality}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
