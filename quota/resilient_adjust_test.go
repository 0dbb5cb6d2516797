package quota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// applyFake is a primary that takes journaled changes as Redis does: a
// change with a writer is applied only if its sequence number is above the
// writer's last for the counter. It can fail copies, lose replies (apply,
// then fail) and hold copies until released.
type applyFake struct {
	down atomic.Bool // Spend and copies fail with ErrUnavailable

	mu       sync.Mutex
	failNext int           // copies to fail without applying
	loseNext int           // copies to apply, then fail
	gate     chan struct{} // if set, copies wait for it
	sent     []Delta       // every change received, in order
	inFlight map[string]int
	overlap  bool // two copies of one counter were in flight at once
	applied  map[string]int64
	last     map[string]uint64
}

func newApplyFake() *applyFake {
	return &applyFake{inFlight: map[string]int{}, applied: map[string]int64{}, last: map[string]uint64{}}
}

func (f *applyFake) Spend(_ context.Context, _ string, items []Item, used []int64) (int, error) {
	if f.down.Load() {
		return -1, fmt.Errorf("%w: down", ErrUnavailable)
	}
	return -1, nil
}

func (f *applyFake) Peek(_ context.Context, group string, it Item) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied[group+"/"+it.Key], nil
}

func (f *applyFake) applyDeltas(_ context.Context, ds []Delta, _ time.Duration) ([]int64, error) {
	f.mu.Lock()
	f.sent = append(f.sent, ds...)
	for _, d := range ds {
		k := d.Group + "/" + d.Key
		if f.inFlight[k]++; f.inFlight[k] > 1 {
			f.overlap = true
		}
	}
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range ds {
		f.inFlight[d.Group+"/"+d.Key]--
	}
	if f.down.Load() || f.failNext > 0 {
		f.failNext = max(f.failNext-1, 0)
		return nil, fmt.Errorf("%w: no reply", ErrUnavailable)
	}
	used := make([]int64, len(ds))
	for i, d := range ds {
		k := d.Group + "/" + d.Key
		if d.Writer == "" || d.Seq > f.last[d.Writer+k] {
			f.applied[k] += d.N
			f.last[d.Writer+k] = d.Seq
		}
		used[i] = f.applied[k]
	}
	if f.loseNext > 0 {
		f.loseNext--
		return nil, fmt.Errorf("%w: reply lost", ErrUnavailable)
	}
	return used, nil
}

func (f *applyFake) get() (sent []Delta, applied map[string]int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	applied = map[string]int64{}
	for k, v := range f.applied {
		applied[k] = v
	}
	return append([]Delta(nil), f.sent...), applied
}

// TestResilientAdjustJournal: the rules by which adjustments reach the
// primary exactly once.
func TestResilientAdjustJournal(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(time.Hour)
	ctx := context.Background()
	type env struct {
		clk *testClock
		f   *applyFake
		r   *Resilient
	}
	setup := func(local bool) env {
		clk := &testClock{t: t0}
		f := newApplyFake()
		var m *Memory
		if local {
			m = NewMemory(clk.Now)
		}
		return env{clk, f, NewResilient(f, m, ResilientOptions{RetryEvery: time.Second, FailAfter: 1, Now: clk.Now})}
	}
	adjust := func(t *testing.T, r *Resilient, key string, delta int64) int64 {
		t.Helper()
		used, err := r.Adjust(ctx, "g", key, delta, reset)
		if err != nil {
			t.Fatalf("Adjust(%s, %d): %v", key, delta, err)
		}
		return used
	}
	// roundTrip makes a spend that reaches the primary, as a Check would.
	roundTrip := func(t *testing.T, e env) {
		t.Helper()
		if _, err := e.r.Spend(ctx, "g", []Item{{Key: "other", Cost: 1, Limit: 100, Reset: reset}}, make([]int64, 1)); err != nil {
			t.Fatal(err)
		}
		e.r.WaitWriteBack()
	}
	// outage makes the store degraded.
	outage := func(t *testing.T, e env) {
		t.Helper()
		e.f.down.Store(true)
		if _, err := e.r.Spend(ctx, "g", []Item{{Key: "closed", Cost: 1, Limit: 100, Reset: reset}}, make([]int64, 1)); !errors.Is(err, ErrUnavailable) || e.r.Mode() != ModeDegraded {
			t.Fatalf("outage: %v, mode %s", err, e.r.Mode())
		}
	}
	// back brings the primary back and lets a retry find it.
	back := func(t *testing.T, e env) {
		t.Helper()
		e.f.down.Store(false)
		e.clk.Add(time.Second)
		roundTrip(t, e)
		if e.r.Mode() != ModePrimary {
			t.Fatalf("mode %s after the primary came back", e.r.Mode())
		}
	}

	t.Run("sent at once, each with the writer and the next sequence", func(t *testing.T) {
		e := setup(true)
		if got := adjust(t, e.r, "k", 10); got != 10 {
			t.Errorf("Adjust = %d, want the primary's 10", got)
		}
		adjust(t, e.r, "k", -3)
		sent, applied := e.f.get()
		if len(sent) != 2 || sent[0].Writer == "" || sent[1].Writer != sent[0].Writer || sent[1].Seq <= sent[0].Seq {
			t.Errorf("sent %+v, want two copies by one writer in increasing order", sent)
		}
		if applied["g/k"] != 7 {
			t.Errorf("applied %d, want 7", applied["g/k"])
		}
	})

	t.Run("a failed copy is sent again, the same, after the next successful round trip", func(t *testing.T) {
		e := setup(true)
		e.f.failNext = 1
		adjust(t, e.r, "k", -4)
		if e.r.Mode() != ModePrimary {
			t.Errorf("mode %s after a failed copy: adjustments do not move it", e.r.Mode())
		}
		roundTrip(t, e)
		sent, applied := e.f.get()
		if len(sent) != 2 || sent[1] != sent[0] {
			t.Fatalf("sent %+v, want the failed copy sent again as it was", sent)
		}
		if applied["g/k"] != -4 {
			t.Errorf("applied %d, want -4", applied["g/k"])
		}
		adjust(t, e.r, "k", -1)
		if sent, _ := e.f.get(); sent[2].Seq <= sent[1].Seq {
			t.Errorf("next copy has seq %d after %d", sent[2].Seq, sent[1].Seq)
		}
	})

	t.Run("a copy whose reply was lost is sent again and applied once", func(t *testing.T) {
		e := setup(true)
		e.f.loseNext = 1
		adjust(t, e.r, "k", -4)
		roundTrip(t, e)
		sent, applied := e.f.get()
		if len(sent) != 2 || applied["g/k"] != -4 {
			t.Errorf("sent %+v, applied %d; want two copies applied once (-4)", sent, applied["g/k"])
		}
	})

	t.Run("one copy per counter at a time; what comes meanwhile follows it", func(t *testing.T) {
		e := setup(true)
		gate := make(chan struct{})
		e.f.gate = gate
		done := make(chan struct{})
		go func() {
			defer close(done)
			e.r.Adjust(ctx, "g", "k", -1, reset)
		}()
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
			if sent, _ := e.f.get(); len(sent) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the first copy never started")
			}
		}
		// The two that follow are queued: they return without a copy of
		// their own (one that waited on the gate would never return).
		queued := make(chan struct{})
		go func() {
			defer close(queued)
			e.r.Adjust(ctx, "g", "k", -2, reset)
			e.r.Adjust(ctx, "g", "k", -3, reset)
		}()
		select {
		case <-queued:
		case <-time.After(time.Minute):
			t.Error("adjustments of a counter with a copy on its way did not return: they sent copies of their own")
		}
		if sent, _ := e.f.get(); len(sent) != 1 {
			t.Errorf("%d copies started while the first of the counter was on its way, want 1", len(sent))
		}
		e.f.mu.Lock()
		e.f.gate = nil
		e.f.mu.Unlock()
		close(gate)
		<-done
		<-queued
		e.r.WaitWriteBack()
		sent, applied := e.f.get()
		if len(sent) != 2 || sent[1].N != -5 || sent[1].Seq <= sent[0].Seq || e.f.overlap {
			t.Errorf("sent %+v (overlap %v), want the two queued as one copy after the first", sent, e.f.overlap)
		}
		if applied["g/k"] != -6 {
			t.Errorf("applied %d, want -6", applied["g/k"])
		}
	})

	t.Run("while degraded, changes wait, netted, for the primary's return", func(t *testing.T) {
		e := setup(true)
		outage(t, e)
		adjust(t, e.r, "k", -4)
		adjust(t, e.r, "k", 3)
		adjust(t, e.r, "zero", 4)
		adjust(t, e.r, "zero", -4)
		// A fail-open spend counted locally, then settled: the local count
		// and the copy both follow the settlement.
		used := make([]int64, 1)
		if d, err := e.r.Spend(ctx, "g", []Item{{Key: "open", Cost: 5, Limit: 100, Reset: reset, FailOpen: true}}, used); d != -1 || err != nil {
			t.Fatalf("fail-open spend: %d %v", d, err)
		}
		if got := adjust(t, e.r, "open", -2); got != 3 {
			t.Errorf("Adjust while degraded = %d, want the local count 3", got)
		}
		if got, _ := e.r.Peek(ctx, "g", Item{Key: "open", Reset: reset}); got != 3 {
			t.Errorf("Peek while degraded = %d, want the local count 3", got)
		}
		if sent, _ := e.f.get(); len(sent) != 0 {
			t.Errorf("%d copies sent while degraded, want 0", len(sent))
		}
		back(t, e)
		sent, applied := e.f.get()
		if len(sent) != 2 || applied["g/k"] != -1 || applied["g/open"] != 3 || applied["g/zero"] != 0 {
			t.Errorf("sent %+v, applied %v; want k -1 and open 3, nothing for zero", sent, applied)
		}
		// Nothing is copied twice.
		outage(t, e)
		back(t, e)
		if sent, _ := e.f.get(); len(sent) != 2 {
			t.Errorf("%d copies after a second return, want still 2", len(sent))
		}
	})

	t.Run("changes for a window that ended are dropped", func(t *testing.T) {
		e := setup(true)
		outage(t, e)
		if _, err := e.r.Adjust(ctx, "g", "short", -4, t0.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		e.clk.Add(time.Second)
		back(t, e)
		if sent, _ := e.f.get(); len(sent) != 0 {
			t.Errorf("sent %+v for a window that ended", sent)
		}
	})

	t.Run("Peek counts what the primary is still owed", func(t *testing.T) {
		e := setup(true)
		adjust(t, e.r, "k", 10)
		e.f.failNext = 1
		adjust(t, e.r, "k", -4)
		if got, err := e.r.Peek(ctx, "g", Item{Key: "k", Reset: reset}); got != 6 || err != nil {
			t.Errorf("Peek = %d, %v; want 10 applied - 4 owed", got, err)
		}
	})

	t.Run("without a local store, adjustments are kept all the same", func(t *testing.T) {
		e := setup(false)
		outage(t, e)
		adjust(t, e.r, "k", -4)
		if _, err := e.r.Peek(ctx, "g", Item{Key: "k", Reset: reset}); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Peek while degraded with no local store: %v, want ErrUnavailable", err)
		}
		back(t, e)
		if _, applied := e.f.get(); applied["g/k"] != -4 {
			t.Errorf("applied %d, want -4", applied["g/k"])
		}
	})
}

// TestResilientAdjustExactlyOnce: through a real Redis, an adjustment
// whose reply is lost, or made while Redis is down, reaches the counter
// exactly once.
func TestResilientAdjustExactlyOnce(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	reset := time.Now().Add(time.Hour)
	setup := func() (*Leased, *Resilient, *testClock) {
		clk := &testClock{t: time.Now()}
		s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("once%d:", testPrefixes.Add(1)),
			LeaseSize: 1, Timeout: time.Second, LateReply: 10 * time.Minute})
		return s, NewResilient(s, NewMemory(clk.Now), ResilientOptions{RetryEvery: time.Second, FailAfter: 1, Now: clk.Now}), clk
	}
	spend := func(r *Resilient, key string, cost int64, failOpen bool) error {
		d, err := r.Spend(ctx, "g", []Item{{Key: key, Cost: cost, Limit: 1000, Reset: reset, FailOpen: failOpen}}, make([]int64, 1))
		if err == nil && d >= 0 {
			err = fmt.Errorf("refused")
		}
		return err
	}
	c := srv.Client()

	t.Run("a reply lost to a timeout", func(t *testing.T) {
		s, r, _ := setup()
		// Open the connection the pause will stall (a busy machine may
		// time out a first try).
		for i := 0; spend(r, "warm", 1, false) != nil; i++ {
			if i == 10 {
				t.Fatal("no round trip succeeded")
			}
		}
		if _, err := r.Adjust(ctx, "g", "k", 10, reset); err != nil {
			t.Fatal(err)
		}
		srv.Pause()
		_, err := r.Adjust(ctx, "g", "k", -4, reset)
		srv.Resume()
		if err != nil {
			t.Fatalf("Adjust with redis paused: %v, want nil (kept for later)", err)
		}
		// The script was sent before the wait ran out: Redis runs it now.
		for deadline := time.Now().Add(time.Minute); redisUsed(t, c, s, "g", "k") != 6; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("redis never ran the adjustment sent while it was paused: u = %d", redisUsed(t, c, s, "g", "k"))
			}
		}
		// The next round trip copies the journal: the same copy, skipped.
		if err := spend(r, "x", 1, false); err != nil {
			t.Fatal(err)
		}
		r.WaitWriteBack()
		if got := redisUsed(t, c, s, "g", "k"); got != 6 {
			t.Errorf("u = %d after the copy was sent again, want 6 (applied once)", got)
		}
		if _, err := r.Adjust(ctx, "g", "k", -1, reset); err != nil {
			t.Fatal(err)
		}
		if got := redisUsed(t, c, s, "g", "k"); got != 5 {
			t.Errorf("u = %d after one more release, want 5", got)
		}
	})

	t.Run("settled while redis was down", func(t *testing.T) {
		s, r, clk := setup()
		// A reservation on Redis, and one more round trip to open the
		// connection the outage will stall.
		if err := spend(r, "k", 10, false); err != nil {
			t.Fatal(err)
		}
		srv.Pause()
		err := spend(r, "y", 1, false)
		srv.Resume()
		if !errors.Is(err, ErrUnavailable) || r.Mode() != ModeDegraded {
			t.Fatalf("spend with redis paused: %v, mode %s", err, r.Mode())
		}
		waitLate(t, s)
		calls := scriptCalls(t, c)
		// Settled while degraded: the reservation on Redis, and a fail-open
		// spend counted locally.
		if _, err := r.Adjust(ctx, "g", "k", -4, reset); err != nil {
			t.Fatal(err)
		}
		if err := spend(r, "open", 10, true); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Adjust(ctx, "g", "open", -7, reset); err != nil {
			t.Fatal(err)
		}
		if got := scriptCalls(t, c) - calls; got != 0 {
			t.Errorf("%d scripts ran while degraded, want 0", got)
		}
		if got := redisUsed(t, c, s, "g", "k"); got != 10 {
			t.Errorf("u = %d before the return, want the reservation 10", got)
		}
		for i := 0; r.Mode() != ModePrimary; i++ {
			if i == 100 {
				t.Fatalf("still %s", r.Mode())
			}
			clk.Add(time.Second)
			spend(r, "z", 1, false)
		}
		r.WaitWriteBack()
		if k, open := redisUsed(t, c, s, "g", "k"), redisUsed(t, c, s, "g", "open"); k != 6 || open != 3 {
			t.Errorf("after the return: k = %d, open = %d; want 6 and 3", k, open)
		}
		// A second outage and return copies nothing again.
		srv.Pause()
		if err := spend(r, "y2", 1, false); !errors.Is(err, ErrUnavailable) || r.Mode() != ModeDegraded {
			t.Fatalf("second outage: %v, mode %s", err, r.Mode())
		}
		srv.Resume()
		waitLate(t, s)
		for i := 0; r.Mode() != ModePrimary; i++ {
			if i == 100 {
				t.Fatalf("still %s", r.Mode())
			}
			clk.Add(time.Second)
			spend(r, "z", 1, false)
		}
		r.WaitWriteBack()
		if k, open := redisUsed(t, c, s, "g", "k"), redisUsed(t, c, s, "g", "open"); k != 6 || open != 3 {
			t.Errorf("after a second return: k = %d, open = %d; want still 6 and 3", k, open)
		}
	})
}
