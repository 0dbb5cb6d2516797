package proc

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStartWaitLineStop(t *testing.T) {
	dir := t.TempDir()
	c, err := Start("sleeper", filepath.Join(dir, "sleeper.log"), exec.Command("sh", "-c", "echo 'listening 127.0.0.1:1'; exec sleep 30"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	line, err := c.WaitLine(regexp.MustCompile(`^listening `), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := line, "listening 127.0.0.1:1"; got != want {
		t.Errorf("WaitLine = %q, want %q", got, want)
	}
	if c.Exited() || c.Err() != nil {
		t.Fatalf("Exited() = %v, Err() = %v before Stop", c.Exited(), c.Err())
	}
	c.Stop()
	if !c.Exited() {
		t.Fatal("not exited after Stop")
	}
	// SIGTERM, not the SIGKILL that follows the grace period, ended it.
	if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("process ended with %v, want killed by SIGTERM", c.cmd.ProcessState)
	}
	c.Stop() // stopping an exited process does nothing
}

func TestWaitLineExited(t *testing.T) {
	dir := t.TempDir()
	c, err := Start("quitter", filepath.Join(dir, "quitter.log"), exec.Command("sh", "-c", "echo bye; exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.WaitLine(regexp.MustCompile(`never`), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "quitter exited") || !strings.Contains(err.Error(), "bye") {
		t.Errorf("WaitLine = %v, want an error that says it exited and shows the log", err)
	}
	if c.Err() == nil {
		t.Error("Err() = nil after exit 3")
	}
}

func TestWaitJSON(t *testing.T) {
	dir := t.TempDir()
	c, err := Start("server", filepath.Join(dir, "server.log"), exec.Command("sh", "-c", `echo 'starting'; echo '{"msg":"serving","GRPC":"127.0.0.1:1"}'; exec sleep 30`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	var line struct{ Msg, GRPC string }
	if err := c.WaitJSON(regexp.MustCompile(`"msg":"serving"`), 5*time.Second, &line); err != nil {
		t.Fatal(err)
	}
	if got, want := line.GRPC, "127.0.0.1:1"; got != want {
		t.Errorf("GRPC = %q, want %q", got, want)
	}
	if err := c.WaitJSON(regexp.MustCompile(`^starting`), 5*time.Second, &line); err == nil {
		t.Error("WaitJSON decoded a line that is not JSON")
	}
}
