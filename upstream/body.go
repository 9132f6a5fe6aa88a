package upstream

import (
	"errors"
	"io"
	"sync"
)

// errBodyReleased is what asking for a released body again says.
var errBodyReleased = errors.New("the request body was released once the stream was committed")

// requestBody is an upstream request's body: the transport may read it
// again (HTTP/2 retries one that a server refused before it was
// processed) until the stream is committed, when it is released, so that
// an open stream holds no copy of what it asked.
type requestBody struct {
	mu sync.Mutex
	b  []byte
}

// open is the request's GetBody.
func (rb *requestBody) open() (io.ReadCloser, error) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if rb.b == nil {
		return nil, errBodyReleased
	}
	return &onceReader{b: rb.b}, nil
}

func (rb *requestBody) release() {
	rb.mu.Lock()
	rb.b = nil
	rb.mu.Unlock()
}

// onceReader reads b once and lets go of it at its end or when closed,
// whichever comes first: the transport keeps the request (and its Body)
// for as long as the response is read. The HTTP/2 transport closes it from
// another goroutine than the one reading it, hence the lock.
type onceReader struct {
	mu sync.Mutex
	b  []byte
}

func (o *onceReader) Read(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.b) == 0 {
		o.b = nil
		return 0, io.EOF
	}
	n := copy(p, o.b)
	o.b = o.b[n:]
	if len(o.b) == 0 {
		o.b = nil
	}
	return n, nil
}

func (o *onceReader) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b = nil
	return nil
}
