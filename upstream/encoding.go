package upstream

import (
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// decodedBody undoes a Content-Encoding the proxy never asked for. Some
// servers and the proxies in front of them compress anyway; relaying the
// compressed bytes as an event stream, or as a JSON body without its
// Content-Encoding header, would hand the client garbage. It returns the
// body to read and what closes the decoder, or an error for an encoding it
// cannot read.
func decodedBody(resp *http.Response) (io.Reader, func(), error) {
	switch enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
		return resp.Body, func() {}, nil
	case "gzip", "x-gzip":
		g := &lazyGzip{r: resp.Body}
		return g, g.close, nil
	case "zstd":
		// One decoder goroutine-free and light: a stream's blocks come one
		// at a time, and each must be passed on as soon as it is whole.
		z, err := zstd.NewReader(resp.Body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxZstdWindow))
		if err != nil {
			return nil, nil, encodingError(enc)
		}
		return zstdBody{z}, z.Close, nil
	default:
		return nil, nil, encodingError(enc)
	}
}

// maxZstdWindow bounds the history a zstd decoder keeps. The decoder
// allocates it whole from the few bytes of a frame header, and the
// library's default, 512 MiB, let an upstream take that much memory per
// stream. 8 MiB is what RFC 9659 has HTTP encoders stay within and every
// decoder accept; a stream costs about that at most, however long it is.
const maxZstdWindow = 8 << 20

// ErrZstdWindow is the read error of a zstd body whose frame asks for a
// window larger than maxZstdWindow.
var ErrZstdWindow = errors.New("upstream's zstd stream asks for a window over 8 MiB")

// zstdBody names the decoder's refusal of a frame's window.
type zstdBody struct{ z *zstd.Decoder }

func (b zstdBody) Read(p []byte) (int, error) {
	n, err := b.z.Read(p)
	if errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		err = ErrZstdWindow
	}
	return n, err
}

func encodingError(enc string) error {
	return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
		Message: "upstream answered in a content encoding the proxy cannot read: " + enc}
}

// lazyGzip reads the gzip header on the first Read: gzip.NewReader reads
// it at once, which would block Open until the upstream's first bytes.
type lazyGzip struct {
	r   io.Reader
	z   *gzip.Reader
	err error
}

func (g *lazyGzip) Read(p []byte) (int, error) {
	if g.z == nil && g.err == nil {
		g.z, g.err = gzip.NewReader(g.r)
	}
	if g.err != nil {
		return 0, g.err
	}
	return g.z.Read(p)
}

func (g *lazyGzip) close() {
	if g.z != nil {
		g.z.Close()
	}
}
