package export

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// t0 is the fake clocks' start and the events' end time.
var t0 = time.Date(2026, 11, 3, 12, 0, 0, 0, time.UTC)

// manualWait is the shortest wait a fakeClock holds until Fire; shorter
// waits end at once and move the clock (they are the loop's backoffs and
// the limiter's waits, recorded in order).
const manualWait = time.Hour

// fakeClock is the loop's and the exporters' clock in tests.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	sleeps  []time.Duration // the waits that ended at once, in order
	waiters []clockWaiter   // the waits held until Fire
	changed chan struct{}   // closed and replaced on every new waiter
}

type clockWaiter struct {
	d  time.Duration
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0, changed: make(chan struct{})} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if d >= manualWait {
		c.waiters = append(c.waiters, clockWaiter{d, ch})
		close(c.changed)
		c.changed = make(chan struct{})
		return ch
	}
	c.now = c.now.Add(d)
	c.sleeps = append(c.sleeps, d)
	ch <- c.now
	return ch
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sleeps)
}

// WaitFor waits until someone waits for d.
func (c *fakeClock) WaitFor(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		found := slices.ContainsFunc(c.waiters, func(w clockWaiter) bool { return w.d == d })
		changed := c.changed
		c.mu.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("nobody waited for %s", d)
		}
	}
}

// Fire waits until someone waits for d, then ends every wait for d,
// moving the clock by d.
func (c *fakeClock) Fire(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		var fired bool
		kept := c.waiters[:0]
		for _, w := range c.waiters {
			if w.d == d {
				if !fired {
					c.now = c.now.Add(d)
				}
				fired = true
				w.ch <- c.now
				continue
			}
			kept = append(kept, w)
		}
		c.waiters = kept
		changed := c.changed
		c.mu.Unlock()
		if fired {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("nobody waited for %s", d)
		}
	}
}

// memOutbox is an in-memory usage.Outbox with switchable failures.
type memOutbox struct {
	mu         sync.Mutex
	order      []string
	events     map[string]usage.Event
	failPend   int // fail this many Pending calls
	failAck    int // fail this many Ack calls
	failStats  int
	acks       int // Ack calls that succeeded
	stats      int // Stats calls that succeeded
	everAppend int
}

func newMemOutbox(events ...usage.Event) *memOutbox {
	b := &memOutbox{events: map[string]usage.Event{}}
	if err := b.Append(context.Background(), events); err != nil {
		panic(err)
	}
	return b
}

var _ usage.Outbox = (*memOutbox)(nil)

var errInjected = errors.New("injected outbox failure")

func (b *memOutbox) Append(_ context.Context, events []usage.Event) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range events {
		if _, ok := b.events[e.ID]; ok {
			continue
		}
		b.events[e.ID] = e
		b.order = append(b.order, e.ID)
		b.everAppend++
	}
	return nil
}

func (b *memOutbox) Pending(ctx context.Context, n int) ([]usage.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failPend > 0 {
		b.failPend--
		return nil, errInjected
	}
	var out []usage.Event
	for _, id := range b.order {
		if len(out) == n {
			break
		}
		out = append(out, b.events[id])
	}
	return out, nil
}

func (b *memOutbox) Ack(ctx context.Context, ids []string) error {
	if err := ctx.Err(); err != nil {
		return err // as a store over the network would
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failAck > 0 {
		b.failAck--
		return errInjected
	}
	b.acks++
	for _, id := range ids {
		delete(b.events, id)
	}
	b.order = slices.DeleteFunc(b.order, func(id string) bool { _, ok := b.events[id]; return !ok })
	return nil
}

func (b *memOutbox) Stats(ctx context.Context) (usage.Stats, error) {
	if err := ctx.Err(); err != nil {
		return usage.Stats{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failStats > 0 {
		b.failStats--
		return usage.Stats{}, errInjected
	}
	b.stats++
	s := usage.Stats{Backlog: len(b.order)}
	if len(b.order) > 0 {
		s.Oldest = t0
	}
	return s, nil
}

func (b *memOutbox) Close() error { return nil }

func (b *memOutbox) Backlog() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.order)
}

func (b *memOutbox) Has(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.events[id]
	return ok
}

// recorder is an Observer that keeps everything.
type recorder struct {
	mu        sync.Mutex
	delivered int
	lastAt    time.Time
	failed    map[Kind]int
	backlogs  []int
	outboxErr []string
}

func newRecorder() *recorder { return &recorder{failed: map[Kind]int{}} }

func (r *recorder) Delivered(n int, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delivered += n
	r.lastAt = at
}

func (r *recorder) Failed(k Kind, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed[k] += n
}

func (r *recorder) Backlog(s usage.Stats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.backlogs = append(r.backlogs, s.Backlog)
}

func (r *recorder) OutboxError(op string, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outboxErr = append(r.outboxErr, op)
}

func (r *recorder) DeliveredCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.delivered
}

func (r *recorder) Failures() map[Kind]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[Kind]int{}
	for k, v := range r.failed {
		m[k] = v
	}
	return m
}

func (r *recorder) Backlogs() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.backlogs)
}

func (r *recorder) OutboxErrors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.outboxErr)
}

// makeEvents returns n events of five customers, event i using i+1 units.
func makeEvents(prefix string, n int) []usage.Event {
	out := make([]usage.Event, n)
	for i := range out {
		out[i] = usage.Event{
			ID:       usage.NewID(fmt.Sprintf("%s-%d", prefix, i), "res-"+prefix),
			Subject:  fmt.Sprintf("team-%d", i%5),
			Customer: fmt.Sprintf("cus_%d", i%5),
			Route:    "chat",
			Meter:    "llm_tokens",
			Units:    int64(i + 1),
			Reserved: 4096,
			Status:   200,
			Start:    t0.Add(-2 * time.Second),
			End:      t0,
		}
	}
	return out
}

// perCustomer sums events' units by customer.
func perCustomer(events []usage.Event) map[string]int64 {
	m := map[string]int64{}
	for _, e := range events {
		m[e.Customer] += e.Units
	}
	return m
}

// waitUntil polls cond until it holds; the timeout only guards against a
// hang, it is never what a test asserts.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// startRun runs Run in a goroutine; the function it returns stops it and
// waits until it returned.
func startRun(t *testing.T, box usage.Outbox, exp usage.Exporter, opts RunOptions) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := Run(ctx, box, exp, opts); err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
