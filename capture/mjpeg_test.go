package capture

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"mime"
	"mime/multipart"
	"strings"
	"testing"
)

func TestPartWriterBytes(t *testing.T) {
	var b bytes.Buffer
	p := NewPartWriter(&b)
	if err := p.WriteFrame([]byte("JPEG-1")); err != nil {
		t.Fatal(err)
	}
	// The delimiter after the frame goes out with it.
	const first = "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 6\r\n\r\nJPEG-1\r\n--frame"
	if b.String() != first {
		t.Fatalf("after one frame:\n%q\nwant\n%q", b.String(), first)
	}
	if err := p.WriteFrame([]byte("JPEG-two")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	const want = first +
		"\r\nContent-Type: image/jpeg\r\nContent-Length: 8\r\n\r\nJPEG-two\r\n--frame" +
		"--\r\n"
	if b.String() != want {
		t.Fatalf("stream:\n%q\nwant\n%q", b.String(), want)
	}

	// The same bytes read as multipart, with the boundary from the
	// Content-Type we send.
	_, params, err := mime.ParseMediaType(StreamContentType)
	if err != nil || params["boundary"] != Boundary {
		t.Fatalf("StreamContentType %q: %v", StreamContentType, err)
	}
	r := multipart.NewReader(strings.NewReader(want), params["boundary"])
	for _, body := range []string{"JPEG-1", "JPEG-two"} {
		part, err := r.NextPart()
		if err != nil {
			t.Fatal(err)
		}
		if ct := part.Header.Get("Content-Type"); ct != "image/jpeg" {
			t.Errorf("Content-Type %q", ct)
		}
		got, _ := io.ReadAll(part)
		if string(got) != body {
			t.Errorf("part %q, want %q", got, body)
		}
	}
	if _, err := r.NextPart(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the close delimiter: %v, want EOF", err)
	}
}

func TestPartWriterCloseWithoutParts(t *testing.T) {
	var b bytes.Buffer
	if err := NewPartWriter(&b).Close(); err != nil || b.Len() != 0 {
		t.Fatalf("Close of an empty stream wrote %q, %v", b.String(), err)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = 200, 40, 90, 255
	}
	data, err := Encode(img, 70, 0)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	r, g, b, _ := dec.At(10, 10).RGBA()
	got := color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), 255}
	if !near(got, color.RGBA{200, 40, 90, 255}, 8) {
		t.Fatalf("decoded %v", got)
	}
}

func near(a, b color.RGBA, tol int) bool {
	d := func(x, y uint8) bool { return max(int(x)-int(y), int(y)-int(x)) <= tol }
	return d(a.R, b.R) && d(a.G, b.G) && d(a.B, b.B)
}
