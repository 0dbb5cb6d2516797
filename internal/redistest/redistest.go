// Package redistest runs a real redis-server for tests: one private instance
// per call to Start, on a free loopback port, with no persistence, killed when
// the test ends. Tests of Redis adapters use it instead of a fake, because the
// behaviour worth testing (Lua scripts, expiry, a server that dies and comes
// back) lives in the server.
//
// redis-server must be on PATH; CI installs it with scripts/install-redis.sh.
// A missing binary fails the test rather than skipping it, so a CI run without
// Redis cannot pass silently.
package redistest

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/internal/testcerts"
)

// startTimeout bounds how long Start and Restart wait for PING to answer.
const startTimeout = 10 * time.Second

// Server is one redis-server process owned by a test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int

	tls   *TLSFiles // nil: plain TCP
	extra []string  // more redis-server arguments

	mu     sync.Mutex
	cmd    *exec.Cmd     // nil while killed
	exited chan struct{} // closed when cmd has been reaped
}

// Start launches redis-server on a free 127.0.0.1 port in its own temporary
// directory and returns once it answers PING. The process is killed (by its
// PID) when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return startServer(t, nil, nil, freePort)
}

// TLSFiles are the PEM files of a TLS server made by StartTLS: the CA that
// signed both certificates, and a client certificate and key.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
	// ServerName is the name in the server's certificate.
	ServerName string
	// Mutual is set when the server requires a client certificate.
	Mutual bool
}

// StartTLS is Start with the server speaking only TLS, with a certificate
// for "localhost" and 127.0.0.1 from a fresh CA. With mutual, it also
// requires a client certificate from that CA (CertFile and KeyFile).
func StartTLS(t testing.TB, mutual bool) *Server {
	t.Helper()
	dir := t.TempDir()
	ca := testcerts.Issue(t, 1, nil, true, "tollgate test CA")
	srv := testcerts.Issue(t, 2, ca, false, "localhost", "127.0.0.1")
	cli := testcerts.Issue(t, 3, ca, false, "tollgate")
	f := &TLSFiles{
		CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem"),
		ServerName: "localhost", Mutual: mutual,
	}
	ca.WriteCert(t, f.CAFile)
	srv.WriteCert(t, filepath.Join(dir, "server.pem"))
	srv.WriteKey(t, filepath.Join(dir, "server-key.pem"))
	cli.WriteCert(t, f.CertFile)
	cli.WriteKey(t, f.KeyFile)
	return startServer(t, f, nil, freePort)
}

// TLS returns the TLS files of a server made by StartTLS, or nil.
func (s *Server) TLS() *TLSFiles { return s.tls }

// ClientTLS is a client tls.Config for a server made by StartTLS (nil for a
// plain one): it trusts the CA and, for a mutual server, presents the
// client certificate.
func (s *Server) ClientTLS() *tls.Config {
	if s.tls == nil {
		return nil
	}
	pem, err := os.ReadFile(s.tls.CAFile)
	if err != nil {
		s.t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	c := &tls.Config{RootCAs: roots, ServerName: s.tls.ServerName, MinVersion: tls.VersionTLS12}
	if s.tls.Mutual {
		cert, err := tls.LoadX509KeyPair(s.tls.CertFile, s.tls.KeyFile)
		if err != nil {
			s.t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

func startServer(t testing.TB, tlsFiles *TLSFiles, extra []string, port func() (int, error)) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not on PATH (%v): run scripts/install-redis.sh", err)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), tls: tlsFiles, extra: extra}
	t.Cleanup(s.Kill)
	// A free port can be taken between choosing it and redis binding it;
	// try a few.
	for attempt := 0; ; attempt++ {
		s.port, err = port()
		if err == nil {
			err = s.start()
		}
		if err == nil {
			return s
		}
		if attempt == 4 {
			t.Fatalf("redistest: start redis-server: %v", err)
		}
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Kill stops the server with SIGKILL, as a crash would, and waits for the
// process to exit. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd, s.exited = nil, nil
}

// Pause stops the server with SIGSTOP: connections still open at the
// kernel, but nothing answers, as with a Redis stalled by a slow command or a
// network that drops packets. Resume undoes it.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// Restart starts the server again on the same port (killing it first if it
// runs) and waits for PING. The data is gone: nothing is persisted. Call it
// from the test's goroutine: it fails the test if redis does not come back.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	s.killLocked()
	s.mu.Unlock()
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: restart redis-server on %s: %v", s.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client returns a new go-redis client for the server, closed when the test
// ends. Each call returns a separate client (with its own connection pool),
// so tests can stand for several replicas.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:            s.Addr(),
		DialTimeout:     time.Second,
		ReadTimeout:     time.Second,
		WriteTimeout:    time.Second,
		DisableIdentity: true,
		TLSConfig:       s.ClientTLS(),
	})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// start launches the process on s.port and waits until it answers PING.
func (s *Server) start() error {
	logFile := filepath.Join(s.dir, "redis.log")
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", s.dir,
		"--logfile", logFile,
	}
	if f := s.tls; f != nil {
		dir := filepath.Dir(f.CAFile)
		auth := "no"
		if f.Mutual {
			auth = "yes"
		}
		args = append(args[2:], "--port", "0", "--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", filepath.Join(dir, "server.pem"), "--tls-key-file", filepath.Join(dir, "server-key.pem"),
			"--tls-ca-cert-file", f.CAFile, "--tls-auth-clients", auth)
	}
	cmd := exec.Command(s.bin, append(args, s.extra...)...)
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			s.mu.Lock()
			if s.cmd == cmd {
				s.cmd, s.exited = nil, nil
			}
			s.mu.Unlock()
			return fmt.Errorf("redis-server exited on port %d: %s", s.port, tail(logFile))
		default:
		}
		if s.ping() == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on port %d did not answer PING within %v: %s", s.port, startTimeout, tail(logFile))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ping speaks just enough RESP to check the server is serving.
func (s *Server) ping() error {
	d := &net.Dialer{Timeout: 200 * time.Millisecond}
	var c net.Conn
	var err error
	if s.tls != nil {
		c, err = (&tls.Dialer{NetDialer: d, Config: s.ClientTLS()}).Dial("tcp", s.Addr())
	} else {
		c, err = d.Dial("tcp", s.Addr())
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return errors.New("unexpected PING reply " + strconv.Quote(line))
	}
	return nil
}

// freeClusterPort is a free port whose cluster bus port (port + 10000) is
// free too.
func freeClusterPort() (int, error) {
	for range 50 {
		p, err := freePort()
		if err != nil {
			return 0, err
		}
		if p+10000 > 65535 {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+10000)))
		if err != nil {
			continue
		}
		l.Close()
		return p, nil
	}
	return 0, errors.New("no free port with a free cluster bus port")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail is the end of redis's log, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return strings.TrimSpace(string(b))
}
