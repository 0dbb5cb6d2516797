package outbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/usage/outbox/outboxtest"
)

// crashEnv, when set, makes TestFileSIGKILL the child: it appends to the
// file the variable names until killed, printing each ID Append returned.
const crashEnv = "TOLLGATE_OUTBOX_CRASH_FILE"

// A process killed with SIGKILL loses no event whose Append returned, and
// leaves a file that opens cleanly (bbolt's check and the outbox's counters).
func TestFileSIGKILL(t *testing.T) {
	if path := os.Getenv(crashEnv); path != "" {
		crashChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "outbox.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestFileSIGKILL$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	const killAfter = 400
	acked := map[string]bool{}
	lines := bufio.NewScanner(out)
	for len(acked) < killAfter && lines.Scan() {
		if id, ok := strings.CutPrefix(lines.Text(), "acked "); ok {
			acked[id] = true
		}
		if len(acked) == 1 {
			// While the child holds the file, another process cannot
			// open it: a clear error, not a wait.
			if _, err := OpenFile(path, FileOptions{LockTimeout: 10 * time.Millisecond}); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
				t.Errorf("OpenFile while the child holds it = %v, want ErrLocked naming the path", err)
			}
		}
	}
	if len(acked) < killAfter {
		t.Fatalf("child stopped after %d appends: %v", len(acked), lines.Err())
	}
	// SIGKILL, by PID, mid-run: the child's appenders are still going.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Read what the child printed before it died: those were acked too.
	for lines.Scan() {
		if id, ok := strings.CutPrefix(lines.Text(), "acked "); ok {
			acked[id] = true
		}
	}
	err = cmd.Wait()
	killed = true
	if ws, ok := cmd.ProcessState.Sys().(interface{ Signaled() bool }); !ok || !ws.Signaled() {
		t.Fatalf("child ended by %v, not by the kill", err)
	}

	f, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer f.Close()
	s, err := f.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stored, err := f.Pending(context.Background(), s.Backlog+1)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != s.Backlog {
		t.Fatalf("%d events stored, backlog counter %d", len(stored), s.Backlog)
	}
	have := make(map[string]bool, len(stored))
	for _, e := range stored {
		have[e.ID] = true
	}
	lost := 0
	for id := range acked {
		if !have[id] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged events lost after SIGKILL", lost, len(acked))
	}
	t.Logf("%d acknowledged, %d stored (some committed but not yet printed)", len(acked), len(stored))
}

// crashChild appends from several goroutines forever, each event alone, so
// that commits are grouped, and prints "acked ID" after each Append returns.
func crashChild(path string) {
	f, err := OpenFile(path, FileOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; ; i += 8 {
				e := outboxtest.Event(i)
				if err := f.Append(context.Background(), []usage.Event{e}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintln(w, "acked", e.ID)
				w.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}
