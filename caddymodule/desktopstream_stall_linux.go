package caddymodule

import (
	"fmt"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpProgress reads from the kernel how far the client's TCP acknowledged
// the stream: a frame is taken when the last byte queued with it is
// acknowledged. Acknowledged means in the client's receive buffer, which is
// the client's to size; what our side still holds does not count.
type tcpProgress struct {
	rc syscall.RawConn
	// target is the count of acknowledged bytes at which the frames noted
	// are all taken; 0 when none is waiting. One frame is followed at a
	// time: the next is noted once it is taken.
	target uint64
}

// newProgress follows c if the kernel tells its acknowledgements (Linux
// 4.1 and later), else returns flushed.
func newProgress(c *net.TCPConn) progress {
	if c == nil || !reportsAcks() {
		return flushed{}
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return flushed{}
	}
	p := &tcpProgress{rc: rc}
	if _, _, ok := p.read(); !ok {
		return flushed{}
	}
	return p
}

// read returns the bytes the client acknowledged so far and those queued
// and not acknowledged yet.
func (p *tcpProgress) read() (acked, queued uint64, ok bool) {
	err := p.rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return
		}
		q, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		if err != nil || q < 0 {
			return
		}
		acked, queued, ok = info.Bytes_acked, uint64(q), true
	})
	return acked, queued, ok && err == nil
}

func (p *tcpProgress) sent() {
	if p.target != 0 {
		return
	}
	if acked, queued, ok := p.read(); ok && queued > 0 {
		p.target = acked + queued
	}
}

func (p *tcpProgress) caughtUp() bool {
	if p.target == 0 {
		return true
	}
	// A connection that cannot be read any more is broken; the next
	// write tells.
	if acked, _, ok := p.read(); ok && acked < p.target {
		return false
	}
	p.target = 0
	return true
}

// reportsAcks tells whether the kernel fills tcpi_bytes_acked (Linux 4.1):
// an older one leaves it 0, which would make every viewer look stalled.
var reportsAcks = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 4 || major == 4 && minor >= 1
})
