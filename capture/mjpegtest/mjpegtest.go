// Package mjpegtest reads, for tests, a multipart/x-mixed-replace stream of
// JPEGs as desktop_stream serves it.
package mjpegtest

import (
	"bytes"
	"errors"
	"image"
	"image/jpeg"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"testing"
)

// Stream is a client reading one stream.
type Stream struct {
	resp *http.Response
	mr   *multipart.Reader
}

// Open GETs url with c and fails t unless the answer is 200 with a
// multipart/x-mixed-replace body. The body is closed when t ends.
func Open(t testing.TB, c *http.Client, url string) *Stream {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/x-mixed-replace" {
		t.Fatalf("Content-Type %q", resp.Header.Get("Content-Type"))
	}
	return &Stream{resp: resp, mr: multipart.NewReader(resp.Body, params["boundary"])}
}

// Next reads the next part, checks its Content-Type and Content-Length,
// and decodes its JPEG.
func (s *Stream) Next(t testing.TB) image.Image {
	t.Helper()
	p, err := s.mr.NextPart()
	if err != nil {
		t.Fatalf("reading the next part: %v", err)
	}
	if ct := p.Header.Get("Content-Type"); ct != "image/jpeg" {
		t.Fatalf("part Content-Type %q", ct)
	}
	data, err := io.ReadAll(p)
	if err != nil {
		t.Fatal(err)
	}
	if cl := p.Header.Get("Content-Length"); cl != strconv.Itoa(len(data)) {
		t.Fatalf("part Content-Length %q for %d bytes", cl, len(data))
	}
	img, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// NextPart reads the next part as it comes, for tests that watch for the
// stream's end or error.
func (s *Stream) NextPart() (*multipart.Part, error) { return s.mr.NextPart() }

// End reads the stream until it ends, and returns nil when it ended with
// the close delimiter.
func (s *Stream) End() error {
	for {
		if _, err := s.mr.NextPart(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// Close closes the body, as a viewer that leaves.
func (s *Stream) Close() error { return s.resp.Body.Close() }
