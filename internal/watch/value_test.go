package watch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

func TestValue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n")
	os.WriteFile(path, []byte("1"), 0o600)
	load := func() (*int, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		n, err := strconv.Atoi(string(b))
		if err != nil {
			return nil, errors.New("not a number")
		}
		return &n, nil
	}
	var fails atomic.Int64
	reloaded := make(chan error, 100)
	v, err := NewValue(load, func(err error) {
		if err != nil {
			fails.Add(1)
		}
		reloaded <- err
	}, path)
	if err != nil || *v.Load() != 1 {
		t.Fatalf("first load: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Watch(ctx, 5*time.Millisecond); close(done) }()
	time.Sleep(20 * time.Millisecond)

	steps := []struct {
		content string
		want    int
		wantErr bool
	}{
		{"2", 2, false},
		{"x", 2, true}, // a bad edit keeps the last good value
		{"3", 3, false},
	}
	for _, st := range steps {
		// Write and rename, as editors and Kubernetes do: a poll never sees
		// a half-written file.
		os.WriteFile(path+".tmp", []byte(st.content), 0o600)
		os.Rename(path+".tmp", path)
		select {
		case err := <-reloaded:
			if (err != nil) != st.wantErr {
				t.Errorf("%q: reload error %v, want error %v", st.content, err, st.wantErr)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q: change not seen", st.content)
		}
		if got := *v.Load(); got != st.want {
			t.Errorf("%q: value %d, want %d", st.content, got, st.want)
		}
		time.Sleep(10 * time.Millisecond) // a distinct mtime for the next write
	}
	cancel()
	<-done
	n := 9
	v.Store(&n)
	if *v.Load() != 9 {
		t.Error("Store did not replace the value")
	}
	if _, err := NewValue(func() (*int, error) { return nil, errors.New("boom") }, nil); err == nil {
		t.Error("a failing first load must fail NewValue")
	}
}
