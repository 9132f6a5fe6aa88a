package capture

import (
	"io"
	"strconv"
)

// Boundary separates the parts of the stream.
const Boundary = "frame"

// StreamContentType is the Content-Type of the body PartWriter writes.
const StreamContentType = "multipart/x-mixed-replace; boundary=" + Boundary

// PartWriter writes JPEG frames as the parts of a multipart/x-mixed-replace
// body:
//
//	--frame\r\n
//	Content-Type: image/jpeg\r\n
//	Content-Length: 1234\r\n
//	\r\n
//	<1234 bytes>\r\n
//	--frame\r\n
//	Content-Type: image/jpeg\r\n
//	…
//	<jpeg>\r\n
//	--frame--\r\n
//
// The delimiter after a frame goes out with the frame, so a reader that
// scans for it ends the part at once; readers that trust Content-Length need
// not scan. The line break that ends the delimiter line goes out with the
// next part, because only then is it known whether the stream goes on
// ("\r\n") or ends ("--\r\n"): the bytes are a valid multipart body at every
// point the stream may stop.
type PartWriter struct {
	w       io.Writer
	started bool
	head    []byte
}

// NewPartWriter returns a PartWriter writing to w.
func NewPartWriter(w io.Writer) *PartWriter {
	return &PartWriter{w: w, head: make([]byte, 0, 96)}
}

// WriteFrame writes one part holding jpeg.
func (p *PartWriter) WriteFrame(jpeg []byte) error {
	h := p.head[:0]
	if !p.started {
		h = append(h, "--"+Boundary...)
		p.started = true
	}
	h = append(h, "\r\nContent-Type: image/jpeg\r\nContent-Length: "...)
	h = strconv.AppendInt(h, int64(len(jpeg)), 10)
	h = append(h, "\r\n\r\n"...)
	p.head = h
	if _, err := p.w.Write(h); err != nil {
		return err
	}
	if _, err := p.w.Write(jpeg); err != nil {
		return err
	}
	_, err := io.WriteString(p.w, "\r\n--"+Boundary)
	return err
}

// Close ends the body with the close delimiter; it writes nothing if no part
// was written. It does not close the underlying writer.
func (p *PartWriter) Close() error {
	if !p.started {
		return nil
	}
	_, err := io.WriteString(p.w, "--\r\n")
	return err
}
