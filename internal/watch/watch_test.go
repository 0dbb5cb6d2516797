package watch

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPollReportsSettledChanges drives polls by hand: a change is reported
// at the first poll that finds the file as the previous poll did, never
// while it is being written.
func TestPollReportsSettledChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	step := 0
	// write puts content at path in place (truncate and write, as many
	// editors do), with a time stamp of its own unless sameTime.
	write := func(content string, sameTime bool) {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if !sameTime {
			step++
		}
		if err := os.Chtimes(path, base, base.Add(time.Duration(step)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	write("routes:\n  - a\n  - b\n", false)
	p := newPoller(path)
	steps := []struct {
		name string
		do   func()
		want bool
	}{
		{"nothing changed", func() {}, false},
		{"first half written in place", func() { write("routes:\n", false) }, false},
		{"second half written", func() { write("routes:\n  - a\n  - c\n", false) }, false},
		{"unchanged since", func() {}, true},
		{"still unchanged", func() {}, false},
		{"renamed over", func() {
			os.WriteFile(path+".tmp", []byte("routes: []\n"), 0o600)
			os.Chtimes(path+".tmp", base, base.Add(100*time.Second))
			os.Rename(path+".tmp", path)
		}, false},
		{"renamed file settled", func() {}, true},
		{"written with the same size and time stamp", func() { write("routes: [x]\n", false) }, false},
		{"rewritten, same size and time stamp", func() { write("routes: [y]\n", true) }, false},
		{"same content twice", func() {}, true},
		{"removed", func() { os.Remove(path) }, false},
		{"still gone", func() {}, false},
		{"back", func() { write("routes: [z]\n", false) }, false},
		{"back and settled", func() {}, true},
	}
	for _, st := range steps {
		st.do()
		if got := p.poll(); got != st.want {
			t.Fatalf("%s: poll = %v, want %v", st.name, got, st.want)
		}
	}
}

// TestFileCallsChangedOnceSettled runs File's loop with polls driven by
// hand: tick returns once the previous poll is done, and starts the next.
func TestFileCallsChangedOnceSettled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, []byte("a: 1\n"), 0o600)
	polled, ticks := make(chan struct{}), make(chan bool)
	var got []string
	done := make(chan struct{})
	go func() {
		watchFile(newPoller(path), func() bool { polled <- struct{}{}; return <-ticks }, func() {
			b, _ := os.ReadFile(path)
			got = append(got, string(b))
		})
		close(done)
	}()
	tick := func() { <-polled; ticks <- true }
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("a: ")
	tick() // sees the first half
	<-polled
	f.WriteString("2\n")
	f.Close()
	ticks <- true
	tick() // finds the whole file as the previous poll did: changed runs
	tick() // nothing new
	<-polled
	ticks <- false
	<-done
	if len(got) != 1 || got[0] != "a: 2\n" {
		t.Errorf("changed saw %q, want [\"a: 2\\n\"]", got)
	}
}

// TestValueDropsALoadOverlappingAWrite: a reload during which the file is
// written again keeps the old value and reports nothing.
func TestValueDropsALoadOverlappingAWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, []byte("1"), 0o600)
	var during func()
	loads := 0
	v, err := NewValue(func() (*string, error) {
		loads++
		b, err := os.ReadFile(path)
		if during != nil {
			during()
		}
		s := string(b)
		return &s, err
	}, func(err error) { t.Logf("reloaded: %v", err) }, path)
	if err != nil {
		t.Fatal(err)
	}
	reports := 0
	v.onReload = func(error) { reports++ }
	os.WriteFile(path, []byte("2"), 0o600)
	during = func() { os.WriteFile(path, []byte("33"), 0o600) }
	v.reloadSettled()
	if got := *v.Load(); got != "1" || reports != 0 {
		t.Errorf("after an overlapped load: value %q, %d reports; want \"1\", 0", got, reports)
	}
	during = nil
	v.reloadSettled()
	if got := *v.Load(); got != "33" || reports != 1 {
		t.Errorf("after a clean load: value %q, %d reports; want \"33\", 1", got, reports)
	}
	if loads != 3 {
		t.Errorf("%d loads, want 3", loads)
	}
}

// TestUnchanged: a write between the snapshot and the check is seen, so a
// caller that loads a file itself can drop a load the write overlapped.
func TestUnchanged(t *testing.T) {
	tests := []struct {
		name  string
		write func(path string)
		want  bool
	}{
		{"nothing written", func(string) {}, true},
		{"rewritten with other content", func(p string) { os.WriteFile(p, []byte("rules: []\nmore: 1\n"), 0o600) }, false},
		{"truncated", func(p string) { os.WriteFile(p, nil, 0o600) }, false},
		{"removed", func(p string) { os.Remove(p) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tollgate.yaml")
			os.WriteFile(path, []byte("rules: []\n"), 0o600)
			unchanged := Unchanged(path)
			tt.write(path)
			if got := unchanged(); got != tt.want {
				t.Errorf("Unchanged after %s = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}
