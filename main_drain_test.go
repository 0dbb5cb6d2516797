package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/apptest"
)

// servingLine reads r (a server's stderr) until the "serving" line and
// returns the addresses it names.
func servingLine(t *testing.T, r io.Reader) (grpcAddr, adminAddr string) {
	t.Helper()
	type addrs struct{ GRPC, Admin string }
	found := make(chan addrs, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var line struct{ Msg, GRPC, Admin string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
				found <- addrs{line.GRPC, line.Admin}
				return
			}
		}
		close(found)
	}()
	select {
	case a, ok := <-found:
		if !ok {
			t.Fatal("stderr ended before the serving line")
		}
		return a.GRPC, a.Admin
	case <-time.After(patience):
		t.Fatal("no serving line")
	}
	return "", ""
}

// TestStalledStderrNeverBlocksChecks is issue 11's hole 3 against the real
// server: stderr is a pipe nobody reads. A flood of unknown keys (each a
// logged denial) fills the pipe and the log queue; Checks keep being
// answered, the lines that do not fit are dropped and counted, a paying
// customer is still let in, and the server still drains and stops.
func TestStalledStderrNeverBlocksChecks(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	dir := demoDir(t, "127.0.0.1:0")
	cfgPath := filepath.Join(dir, "tollgate.yaml")
	editFile(t, cfgPath, "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  max_in_flight: 16\n")

	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan int, 1)
	go func() { exit <- run(ctx, []string{"serve", "--config", cfgPath}, nil, io.Discard, pw) }()
	// Runs first (cleanups are last in, first out): closing the pipe frees
	// any write still blocked in it, so that a failing run ends.
	t.Cleanup(func() {
		cancel()
		pr.Close()
		<-exit
		pw.Close()
	})
	grpcAddr, adminAddr := servingLine(t, pr) // then nobody reads the pipe again
	conn := dialGRPC(t, grpcAddr)

	// Flood until the log has had to drop lines: the pipe (64 KiB) and the
	// queue (1 MiB) are full by then. Every Check gets an answer meanwhile.
	const workers, batch, most = 32, 1000, 200_000
	sent := 0
	for apptest.MetricValue(t, adminAddr, "tollgate_log_dropped_total") == "0" {
		if sent >= most {
			t.Fatalf("%d Checks and no log line dropped", sent)
		}
		errs := make(chan error, batch)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < batch; i += workers {
					got, err := checkKey(conn, fmt.Sprintf("unknown-%d-%d", sent, i))
					if err == nil && got != "invalid_credentials" && got != "entitlements_unavailable" { // decided or shed
						err = fmt.Errorf("unknown key answered %q", got)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("with stderr stalled after %d Checks: %v", sent, err)
		}
		sent += batch
	}

	if got, err := checkKey(conn, "demo-free-key"); got != "ok" || err != nil {
		t.Errorf("paying customer with stderr stalled: %q, %v; want ok", got, err)
	}
	if got := getStatus(t, "http://"+adminAddr+"/readyz"); got != 200 {
		t.Errorf("/readyz = %d, want 200 before the drain", got)
	}
	cancel()
	select {
	case got := <-exit:
		exit <- got // for the cleanup
		if got != 0 {
			t.Errorf("exit status = %d, want 0", got)
		}
	case <-time.After(patience):
		t.Fatal("serve did not stop with stderr stalled")
	}
}

// tollgateBinary builds tollgate once for the tests that run it as a
// process.
var tollgateBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "tollgate-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "tollgate")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// TestClosedStderrDoesNotKill is issue 11's hole 4, as the issue ran it:
// `(tollgate serve … 2>&1 >/dev/null) | head -c 10`, then a Check whose
// denial is logged. The built binary must keep serving and exit 0 on
// SIGTERM, not die of SIGPIPE.
func TestClosedStderrDoesNotKill(t *testing.T) {
	dir := demoDir(t, "127.0.0.1:0")
	cmd, pr, done, waitErr := startBinary(t, "serve", "--config", filepath.Join(dir, "tollgate.yaml"))
	grpcAddr, _ := servingLine(t, pr)
	pr.Close() // the reader is gone, as `head` is after ten bytes

	conn := dialGRPC(t, grpcAddr)
	if got, err := checkKey(conn, "nobody-knows-this-key"); got != "invalid_credentials" || err != nil {
		t.Fatalf("unknown key: %q, %v; want invalid_credentials", got, err)
	}
	if got, err := checkKey(conn, "demo-free-key"); got != "ok" || err != nil {
		t.Errorf("after a log line to a closed stderr: %q, %v; want ok", got, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v (the process is gone)", err)
	}
	select {
	case <-done:
		if err := *waitErr; err != nil {
			t.Errorf("tollgate ended with %v, want exit status 0", err)
		}
	case <-time.After(patience):
		t.Fatal("tollgate did not stop on SIGTERM")
	}
}

// startBinary runs the built tollgate with args, its stderr a pipe whose
// read end it returns. done is closed once the process is reaped, and
// *waitErr is then how it ended. The test's cleanup kills it (by its PID)
// if it is still running.
func startBinary(t *testing.T, args ...string) (cmd *exec.Cmd, stderr *os.File, done chan struct{}, waitErr *error) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin, err := tollgateBinary()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, args...)
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close() // the child holds the write end now
	done = make(chan struct{})
	waitErr = new(error)
	go func() { *waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	return cmd, pr, done, waitErr
}
