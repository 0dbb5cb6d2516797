package deploy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// server is a tollgate process started by a test.
type server struct {
	cmd    *exec.Cmd
	stderr string // file with its log
	done   chan error
}

// startTollgate runs the built binary with args (and env, NAME=value, added
// to this process's environment) and waits, for at most a generous minute,
// until adminAddr's /readyz answers 200.
func startTollgate(t *testing.T, args []string, adminAddr string, env ...string) *server {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	s := &server{stderr: filepath.Join(t.TempDir(), "stderr"), done: make(chan error, 1)}
	f, err := os.Create(s.stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s.cmd = exec.Command(tollgateBin, args...)
	s.cmd.Stderr, s.cmd.Stdout = f, f
	if len(env) > 0 {
		s.cmd.Env = append(os.Environ(), env...)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		// Only the process this test started, by its PID.
		if s.cmd.ProcessState == nil {
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case err := <-s.done:
			s.done <- err
			t.Fatalf("tollgate %v exited: %v\n%s", args, err, s.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tollgate %v: /readyz not 200 within a minute (%v)\n%s", args, err, s.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) log() string {
	b, _ := os.ReadFile(s.stderr)
	return string(b)
}

// stop sends SIGTERM and wants a clean exit.
func (s *server) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Errorf("tollgate exited with %v after SIGTERM\n%s", err, s.log())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("tollgate still running two minutes after SIGTERM\n%s", s.log())
	}
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// grpcHealth asks grpc.health.v1 for the server's overall status.
func grpcHealth(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := healthpb.NewHealthClient(dial(t, addr)).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetStatus().String()
}

// check sends one ext_authz Check, as Envoy would, and returns the HTTP
// status tollgate answers with (200 for an allow).
func check(t *testing.T, conn *grpc.ClientConn, method, path string, headers map[string]string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{
		Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Host: "api.example.com", Headers: headers},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok := resp.GetOkResponse(); ok != nil {
		return http.StatusOK
	}
	if d := resp.GetDeniedResponse(); d != nil {
		return int(d.GetStatus().GetCode())
	}
	t.Fatalf("Check answered neither ok nor denied: %v", resp)
	return 0
}

// scrape returns the body of GET url.
func scrape(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	return b.Bytes()
}
