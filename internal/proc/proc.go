// Package proc runs the child processes of the end-to-end suite and the load
// harness (tollgate, Envoy, a do-nothing server): each with its output in a
// log file, reaped in the background, and stopped by its own PID (SIGTERM,
// then SIGKILL after a grace period), never by name, so that nothing else on
// the machine is touched.
package proc

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"time"
)

// grace is how long Stop waits after SIGTERM before SIGKILL.
const grace = 5 * time.Second

// tailBytes is how much of the log Tail returns, for error messages.
const tailBytes = 4000

// Child is a process started by Start.
type Child struct {
	Name string // for messages
	Log  string // the file with its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // what Wait returned, once done is closed
}

// Start runs cmd with its stdout and stderr in a new file at logPath, and
// reaps it in the background.
func Start(name, logPath string, cmd *exec.Cmd) (*Child, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &Child{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		lf.Close()
		close(c.done)
	}()
	return c, nil
}

// PID is the process's id.
func (c *Child) PID() int { return c.cmd.Process.Pid }

// Stop sends SIGTERM to the process's PID, then SIGKILL after a grace
// period, and returns once it has exited. Stopping an exited process does
// nothing.
func (c *Child) Stop() {
	if c.Exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// Exited reports whether the process has exited (and been reaped).
func (c *Child) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Err is how the process ended; nil while it runs.
func (c *Child) Err() error {
	if !c.Exited() {
		return nil
	}
	return c.err
}

// Tail is the end of the process's log.
func (c *Child) Tail() string {
	b, _ := os.ReadFile(c.Log)
	if len(b) > tailBytes {
		b = b[len(b)-tailBytes:]
	}
	return string(b)
}

// WaitLine waits for a line of the process's log that re matches, and
// returns it. It fails at once if the process exits first.
func (c *Child) WaitLine(re *regexp.Regexp, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c.Exited() {
			return "", fmt.Errorf("%s exited: %v\n%s", c.Name, c.err, c.Tail())
		}
		if line, ok := c.findLine(re); ok {
			return line, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("%s: no line matching %s in %s:\n%s", c.Name, re, timeout, c.Tail())
}

// WaitJSON waits for a line as WaitLine does, and decodes it (a JSON
// object, as in a structured log) into v.
func (c *Child) WaitJSON(re *regexp.Regexp, timeout time.Duration, v any) error {
	line, err := c.WaitLine(re, timeout)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(line), v); err != nil {
		return fmt.Errorf("%s: line %q: %v", c.Name, line, err)
	}
	return nil
}

func (c *Child) findLine(re *regexp.Regexp) (string, bool) {
	f, err := os.Open(c.Log)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if re.Match(sc.Bytes()) {
			return sc.Text(), true
		}
	}
	return "", false
}
