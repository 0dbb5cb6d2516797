package main

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"
)

// blockedWriter is a stderr whose reader has stalled: every write waits
// until the test ends.
type blockedWriter struct{ release chan struct{} }

func (w blockedWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

// TestFailingServeExitsWithStderrStalled: serve's last error is written
// directly (its asynchronous log is closed by then), and a stalled stderr
// must not keep the process from exiting with its status.
func TestFailingServeExitsWithStderrStalled(t *testing.T) {
	defer func(d time.Duration) { finalWriteBound = d }(finalWriteBound)
	finalWriteBound = 10 * time.Millisecond
	w := blockedWriter{make(chan struct{})}
	defer close(w.release)
	for _, tt := range []struct {
		name string
		args []string
		want int
	}{
		{"config missing", []string{"serve", "--config", filepath.Join(t.TempDir(), "none.yaml")}, 1},
		{"bad flag", []string{"serve", "--no-such-flag"}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan int, 1)
			go func() { done <- run(context.Background(), tt.args, nil, io.Discard, w) }()
			select {
			case got := <-done:
				if got != tt.want {
					t.Errorf("exit status %d, want %d", got, tt.want)
				}
			case <-time.After(time.Minute): // a guard against hanging, not a measure
				t.Fatal("run did not return with stderr stalled")
			}
		})
	}
}
