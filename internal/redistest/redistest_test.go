package redistest

import (
	"strconv"
	"syscall"
	"testing"
)

// A server stopped and started again answers on the same port, and one
// that was never started (or is hung) does not answer.
func TestStartStopStart(t *testing.T) {
	s := New(t)
	if s.answers() {
		t.Fatal("answers before Start")
	}
	s.Start()
	s.Signal(syscall.SIGSTOP)
	if s.answers() {
		t.Fatal("answers while stopped by SIGSTOP")
	}
	s.Signal(syscall.SIGCONT)
	s.Stop()
	if s.answers() {
		t.Fatal("answers after Stop")
	}
	s.Start()
	if !s.answers() {
		t.Fatal("does not answer after a second Start")
	}
	if want := "redis://127.0.0.1:" + strconv.Itoa(s.Port) + "/0"; s.URL() != want {
		t.Errorf("URL %q, want %q", s.URL(), want)
	}
}
