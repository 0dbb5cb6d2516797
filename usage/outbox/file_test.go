package outbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/usage/outbox/outboxtest"
)

func openTestFile(t testing.TB, path string, opts FileOptions) *File {
	t.Helper()
	f, err := OpenFile(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

func TestFileTable(t *testing.T) {
	outboxtest.Run(t, func(t *testing.T, cfg outboxtest.Config) (usage.Outbox, func() usage.Outbox) {
		path := filepath.Join(t.TempDir(), "outbox.db")
		opts := FileOptions{MaxEvents: cfg.MaxEvents}
		f := openTestFile(t, path, opts)
		return f, func() usage.Outbox {
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			return openTestFile(t, path, opts)
		}
	})
}

// clock is a fake time, moved by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func pendingIDs(t *testing.T, ob usage.Outbox) []string {
	t.Helper()
	got, err := ob.Pending(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	return outboxtest.IDs(got)
}

func TestFileDedupWindow(t *testing.T) {
	ctx := context.Background()
	ev := outboxtest.Events
	tests := []struct {
		name     string
		opts     FileOptions
		ack      int           // events 0..ack-1 appended and acknowledged
		wait     time.Duration // then the clock moves this much
		readd    int           // then event readd is appended again
		wantKept bool          // and is waiting again
	}{
		{"just inside the window", FileOptions{DedupWindow: time.Hour}, 1, time.Hour - time.Nanosecond, 0, false},
		{"at the window's end", FileOptions{DedupWindow: time.Hour}, 1, time.Hour, 0, true},
		{"no window", FileOptions{DedupWindow: -1}, 1, 0, 0, true},
		{"default window", FileOptions{}, 1, DefaultDedupWindow - time.Second, 0, false},
		{"MaxAcked forgets the oldest", FileOptions{DedupWindow: time.Hour, MaxAcked: 2}, 3, 0, 0, true},
		{"MaxAcked keeps the newest", FileOptions{DedupWindow: time.Hour, MaxAcked: 2}, 3, 0, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock()
			tt.opts.Now = c.Now
			f := openTestFile(t, filepath.Join(t.TempDir(), "outbox.db"), tt.opts)
			// One ack per event: MaxAcked forgets in ack order.
			for _, e := range ev(0, tt.ack) {
				if err := f.Append(ctx, []usage.Event{e}); err != nil {
					t.Fatal(err)
				}
				if err := f.Ack(ctx, []string{e.ID}); err != nil {
					t.Fatal(err)
				}
			}
			c.Add(tt.wait)
			if err := f.Append(ctx, ev(tt.readd, tt.readd+1)); err != nil {
				t.Fatal(err)
			}
			got := len(pendingIDs(t, f)) == 1
			if got != tt.wantKept {
				t.Fatalf("re-appended event waiting: %v, want %v", got, tt.wantKept)
			}
		})
	}
}

// The record of acknowledged IDs is trimmed as Acks go by, past the window
// or past MaxAcked, so the file does not grow with every event ever
// exported; the counter OpenFile checks stays right.
func TestFileAckedRecordBounded(t *testing.T) {
	tests := []struct {
		name     string
		maxAcked int
		want     int
	}{
		{"past the window", 100, 10},
		{"past MaxAcked", 5, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			c := newClock()
			path := filepath.Join(t.TempDir(), "outbox.db")
			opts := FileOptions{DedupWindow: time.Minute, MaxAcked: tt.maxAcked, Now: c.Now}
			f := openTestFile(t, path, opts)
			for i := range 20 {
				e := outboxtest.Event(i)
				if err := f.Append(ctx, []usage.Event{e}); err != nil {
					t.Fatal(err)
				}
				if err := f.Ack(ctx, []string{e.ID}); err != nil {
					t.Fatal(err)
				}
				if i == 9 {
					c.Add(time.Minute) // the first ten expire
				}
			}
			var acked, order int
			if err := f.db.View(func(tx *bolt.Tx) error {
				acked, order = tx.Bucket(bucketAcked).Stats().KeyN, tx.Bucket(bucketAckOrder).Stats().KeyN
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if acked != tt.want || order != tt.want {
				t.Fatalf("acked IDs remembered: %d (in order %d), want %d", acked, order, tt.want)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			openTestFile(t, path, opts) // the counter agrees
		})
	}
}

// An ID acknowledged, forgotten, appended and acknowledged again is
// remembered from its second Ack: forgetting the first does not forget it.
func TestFileReackedIDRemembered(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	f := openTestFile(t, filepath.Join(t.TempDir(), "outbox.db"), FileOptions{DedupWindow: time.Minute, Now: c.Now})
	e := outboxtest.Events(0, 1)
	for range 2 {
		if err := f.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
		if got := pendingIDs(t, f); len(got) != 1 {
			t.Fatalf("pending %v, want the event", got)
		}
		if err := f.Ack(ctx, outboxtest.IDs(e)); err != nil {
			t.Fatal(err)
		}
		c.Add(time.Minute) // the first Ack expires; the second's record replaces it
	}
	c.Add(-time.Second) // inside the second Ack's window
	if err := f.Append(ctx, e); err != nil {
		t.Fatal(err)
	}
	if got := pendingIDs(t, f); len(got) != 0 {
		t.Fatalf("stored again %v within the window of its second Ack", got)
	}
}

func TestFileStatsOldest(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	f := openTestFile(t, filepath.Join(t.TempDir(), "outbox.db"), FileOptions{Now: c.Now})
	first := c.Now()
	if err := f.Append(ctx, outboxtest.Events(0, 2)); err != nil {
		t.Fatal(err)
	}
	c.Add(time.Minute)
	second := c.Now()
	if err := f.Append(ctx, outboxtest.Events(2, 3)); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		ack    []string
		want   usage.Stats
		reason string
	}{
		{nil, usage.Stats{Backlog: 3, Oldest: first}, "three waiting"},
		{[]string{outboxtest.Event(1).ID}, usage.Stats{Backlog: 2, Oldest: first}, "event 0 still waits"},
		{[]string{outboxtest.Event(0).ID}, usage.Stats{Backlog: 1, Oldest: second}, "event 2, appended later"},
		{[]string{outboxtest.Event(2).ID}, usage.Stats{}, "none"},
	} {
		if err := f.Ack(ctx, step.ack); err != nil {
			t.Fatal(err)
		}
		got, err := f.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got.Backlog != step.want.Backlog || !got.Oldest.Equal(step.want.Oldest) {
			t.Errorf("%s: Stats = %+v, want %+v", step.reason, got, step.want)
		}
	}
}

// Appends that queue while a commit runs are committed together, in one
// transaction.
func TestFileGroupCommit(t *testing.T) {
	ctx := context.Background()
	f := openTestFile(t, filepath.Join(t.TempDir(), "outbox.db"), FileOptions{})
	release := make(chan struct{})
	var groups []int
	var mu sync.Mutex
	f.onCommit = func(n int) {
		mu.Lock()
		groups = append(groups, n)
		first := len(groups) == 1
		mu.Unlock()
		if first {
			<-release
		}
	}
	const queued = 10
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := f.Append(ctx, outboxtest.Events(0, 1)); err != nil {
			t.Error(err)
		}
	})
	// Wait until the first commit holds the writer, then queue the rest.
	waitFor(t, "first commit", func() bool { mu.Lock(); defer mu.Unlock(); return len(groups) == 1 })
	for i := range queued {
		wg.Go(func() {
			if err := f.Append(ctx, outboxtest.Events(1+i, 2+i)); err != nil {
				t.Error(err)
			}
		})
	}
	waitFor(t, "appends queued", func() bool { return len(f.appends) == queued })
	close(release)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(groups) != 2 || groups[0] != 1 || groups[1] != queued {
		t.Fatalf("commits of %v appends, want [1 %d]", groups, queued)
	}
	if got := pendingIDs(t, f); len(got) != 1+queued {
		t.Fatalf("%d events waiting, want %d", len(got), 1+queued)
	}
}

// waitFor polls cond until it holds, failing after a generous time: it
// waits for other goroutines to get somewhere, and measures nothing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// In one group, an Append past the bound fails alone: the others are
// stored.
func TestFileGroupFullFailsAlone(t *testing.T) {
	ctx := context.Background()
	f := openTestFile(t, filepath.Join(t.TempDir(), "outbox.db"), FileOptions{MaxEvents: 4})
	release := make(chan struct{})
	var commits atomic.Int32
	f.onCommit = func(int) {
		if commits.Add(1) == 1 {
			<-release
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := f.Append(ctx, outboxtest.Events(0, 1)); err != nil {
			t.Error(err)
		}
	})
	waitFor(t, "first commit", func() bool { return commits.Load() == 1 })
	errs := make([]error, 3)
	batches := [][]usage.Event{outboxtest.Events(1, 3), outboxtest.Events(3, 5), outboxtest.Events(5, 6)}
	for i, b := range batches {
		wg.Go(func() { errs[i] = f.Append(ctx, b) })
		waitFor(t, "append queued", func() bool { return len(f.appends) == i+1 })
	}
	close(release)
	wg.Wait()
	if commits.Load() != 2 {
		t.Fatalf("%d commits, want 2", commits.Load())
	}
	// 1 waiting + 2 fit; then 2 more would make 5 > 4; then 1 fits.
	if errs[0] != nil || !errors.Is(errs[1], usage.ErrFull) || errs[2] != nil {
		t.Fatalf("errors = %v, want [nil ErrFull nil]", errs)
	}
	want := outboxtest.IDs(append(outboxtest.Events(0, 3), outboxtest.Event(5)))
	if got := pendingIDs(t, f); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("pending %v, want %v", got, want)
	}
}

func TestFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	openTestFile(t, path, FileOptions{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Fatalf("mode %v, want 0600", got)
	}
}

func TestFileSecondOpenFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	openTestFile(t, path, FileOptions{})
	f, err := OpenFile(path, FileOptions{LockTimeout: 50 * time.Millisecond})
	if err == nil {
		f.Close()
		t.Fatal("second OpenFile succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Fatalf("err = %v, want ErrLocked naming %s", err, path)
	}
}

func TestFileClosed(t *testing.T) {
	ctx := context.Background()
	f, err := OpenFile(filepath.Join(t.TempDir(), "outbox.db"), FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := f.Append(ctx, outboxtest.Events(0, 1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
	if _, err := f.Pending(ctx, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Pending after Close = %v, want ErrClosed", err)
	}
	if err := f.Ack(ctx, []string{"x"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Ack after Close = %v, want ErrClosed", err)
	}
	if _, err := f.Stats(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats after Close = %v, want ErrClosed", err)
	}
}

func TestFileRejectsEventWithoutID(t *testing.T) {
	f := openTestFile(t, filepath.Join(t.TempDir(), "outbox.db"), FileOptions{})
	err := f.Append(context.Background(), []usage.Event{outboxtest.Event(0), {Subject: "acme"}})
	if err == nil || !strings.Contains(err.Error(), "no ID") {
		t.Fatalf("err = %v, want an error about the ID", err)
	}
	if got := pendingIDs(t, f); len(got) != 0 {
		t.Fatalf("stored %v, want none of the batch", got)
	}
}

// A damaged file is refused at open, with an error naming it: starting
// empty would lose the events it holds.
func TestFileCorrupt(t *testing.T) {
	// full copies an outbox with enough events to span many pages.
	template := filepath.Join(t.TempDir(), "full.db")
	f, err := OpenFile(template, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Append(context.Background(), outboxtest.Events(0, 2000)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	full := func(t *testing.T, path string) {
		b, err := os.ReadFile(template)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	truncate := func(frac float64) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			full(t, path)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, int64(float64(fi.Size())*frac)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// boltWith makes a bbolt file and changes it with fn.
	boltWith := func(fn func(tx *bolt.Tx) error) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			full(t, path)
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(fn); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name  string
		make  func(t *testing.T, path string)
		wants string
	}{
		{"not a bbolt file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(strings.Repeat("not an outbox\n", 1000)), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "invalid database"},
		{"a few bytes", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"truncated to half", truncate(0.5), "truncated"},
		{"truncated to a tenth", truncate(0.1), "truncated"},
		{"truncated after the meta pages", func(t *testing.T, path string) {
			full(t, path)
			if err := os.Truncate(path, 2*4096+100); err != nil {
				t.Fatal(err)
			}
		}, "truncated"},
		{"meta pages overwritten", func(t *testing.T, path string) {
			full(t, path)
			fh, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			if _, err := fh.WriteAt(make([]byte, 2*4096), 0); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"a page of events overwritten", func(t *testing.T, path string) {
			full(t, path)
			// Find a leaf page in use, then fill it with garbage.
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			leaf := 0
			_ = db.View(func(tx *bolt.Tx) error {
				for id := 2; leaf == 0; id++ {
					info, err := tx.Page(id)
					if err != nil || info == nil {
						t.Fatalf("no leaf page: %v", err)
					}
					if info.Type == "leaf" {
						leaf = id
					}
				}
				return nil
			})
			pageSize := db.Info().PageSize
			db.Close()
			fh, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			if _, err := fh.WriteAt([]byte(strings.Repeat("\xab", pageSize)), int64(leaf*pageSize)); err != nil {
				t.Fatal(err)
			}
		}, "Page expected to be"},
		{"another application's buckets", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }); err != nil {
				t.Fatal(err)
			}
			db.Close()
		}, "not a usage outbox"},
		{"backlog counter disagrees", boltWith(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyBacklog, []byte{0, 0, 0, 0, 0, 0, 0, 7})
		}), "counter says 7"},
		{"an event without its ID", boltWith(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketIDs).Delete([]byte(outboxtest.Event(3).ID))
		}), "waiting IDs"},
		{"a newer layout", boltWith(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyVersion, []byte{0, 0, 0, 0, 0, 0, 0, 2})
		}), "layout version 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "outbox.db")
			tt.make(t, path)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := OpenFile(path, FileOptions{LockTimeout: time.Second})
			if err == nil {
				f.Close()
				t.Fatal("OpenFile succeeded on a damaged file")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.wants) {
				t.Fatalf("err = %v\nwant ErrCorrupt naming %s and %q", err, path, tt.wants)
			}
			t.Log(err)
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(after) != string(before) {
				t.Fatal("OpenFile changed the damaged file")
			}
		})
	}
}
