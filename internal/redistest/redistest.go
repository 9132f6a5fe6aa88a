// Package redistest runs a private redis-server for tests that need a real
// Redis.
package redistest

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// Server is a redis-server on a loopback port of its own, keeping nothing
// on disk. It is killed when the test ends.
type Server struct {
	// Port is its TCP port on 127.0.0.1. It stays the same when the server
	// is stopped and started again, so that clients find it again.
	Port int

	t    testing.TB
	bin  string
	args []string
	log  string
	cmd  *exec.Cmd
}

// Start starts a server as New prepares it and waits until it answers.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	s := New(t, args...)
	s.Start()
	return s
}

// New prepares a server with extra redis-server arguments (such as
// "--requirepass", "pw") but does not start it, for tests in which Redis
// comes up after its clients. It skips t when redis-server is not
// installed, or fails it under CI=true (see testenv.Need).
func New(t testing.TB, args ...string) *Server {
	t.Helper()
	bin := testenv.Program(t, "redis-server (apt-get install redis-server)", "redis-server")
	dir := t.TempDir()
	s := &Server{Port: testenv.FreePort(t), t: t, bin: bin, log: filepath.Join(dir, "redis.log")}
	s.args = append([]string{
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", s.log,
	}, args...)
	t.Cleanup(s.Stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// URL is the server's redis:// URL, database 0, without a password.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Start starts the server, or starts it again after Stop, and waits until
// it answers PING.
func (s *Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, s.args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !s.answers() {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(s.log)
			s.t.Fatalf("redis-server on port %d did not answer PING:\n%s", s.Port, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answers speaks just enough RESP to know the server is up, without the
// client under test.
func (s *Server) answers() bool {
	c, err := net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	// -NOAUTH also means up.
	return err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH"))
}

// Signal sends sig to the running server: SIGSTOP hangs it, so that it
// accepts connections but answers nothing, and SIGCONT resumes it.
func (s *Server) Signal(sig os.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("signalling redis-server: %v", err)
	}
}

// Stop kills the server and waits for it to exit. It does nothing when the
// server is not running.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}
