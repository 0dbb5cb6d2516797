package quota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// The modes a Resilient store reports.
const (
	// ModePrimary: spends go to the shared store.
	ModePrimary = "primary"
	// ModeDegraded: the shared store failed; each item's failure policy
	// decides, and the shared store is retried every RetryEvery.
	ModeDegraded = "degraded"
)

// Resilient is a Store that spends on a shared primary (Leased) and applies
// each item's failure policy when the primary is unavailable:
//
//   - If every item is FailOpen, the spend is counted on a local Memory
//     store: per replica, from zero, each replica admitting up to the limit
//     on its own. When the primary returns, those spends are copied into it
//     in the background (for a Leased primary), so the shared counters hold
//     them for the rest of their window; a copy that fails is tried again
//     after the next successful round trip. Copies are exactly once (see
//     Adjust, whose settlements go the same way).
//   - Otherwise the spend fails with an error wrapping ErrUnavailable (the
//     caller answers 503 entitlements_unavailable with Retry-After): the
//     quota fails closed.
//
// While degraded, a Leased primary still answers what it can without Redis
// (units already leased, counters known to be spent) before the policy
// applies, since those answers are still globally right.
//
// The mode follows round trips to the shared store only, never a spend a
// Leased primary answered from a local lease: that says nothing about Redis.
// FailAfter (default 3) failed round trips in a row, with no successful one
// between them, switch to degraded; a single failure under load only fails
// (or falls back for) its own request: a Leased primary makes every other
// request try its own round trip. A round trip whose wait was cut short by
// the caller's own deadline (or cancellation) is no failure of the primary. While degraded, Resilient does not
// call the primary for every request: one request per RetryEvery (default
// 250 ms) tries it, and the others go straight to the policy. The first
// successful round trip switches back to primary; a try that the primary
// answered without a round trip decides nothing, and the next request tries
// again. Errors that do not wrap ErrUnavailable are returned as they are.
//
// Resilient is safe for concurrent use; in primary mode it costs one atomic
// load on top of the primary.
type Resilient struct {
	primary   Store
	cached    cachedSpender // primary's offline answers, or nil
	local     *Memory
	retry     time.Duration
	failAfter int64
	now       func() time.Time
	onMode    func(mode string)

	fails     atomic.Int64 // failed round trips since the last successful one
	degraded  atomic.Bool
	nextProbe atomic.Int64 // unix ns: when degraded, the next request at or after it tries the primary

	notifyMu sync.Mutex // serialises onMode calls
	notified string

	// j holds what the primary has not been told yet: spends counted
	// locally and adjustments. applier is the primary, if it can take them.
	j           *journal
	applier     deltaApplier
	onWriteBack func(units int64, err error)
	syncing     atomic.Bool // a write-back is running
	dirty       atomic.Bool // the journal holds changes nobody is sending
	topUps      topUpQueue  // top-ups the primary has not acknowledged (topup.go)
}

// deltaApplier is a primary that can take changes made without it (Leased).
type deltaApplier interface {
	// applyDeltas applies ds, each at most once per (Writer, Seq), waiting
	// at most wait (0: the store's own timeout), and returns each
	// counter's use after.
	applyDeltas(ctx context.Context, ds []Delta, wait time.Duration) ([]int64, error)
}

// ResilientOptions configures a Resilient store.
type ResilientOptions struct {
	// RetryEvery is how often the primary is tried while degraded;
	// default 250 ms.
	RetryEvery time.Duration
	// FailAfter is how many failed round trips in a row switch to
	// degraded; default 3.
	FailAfter int
	// OnMode, if set, is called with ModePrimary or ModeDegraded each time
	// the mode changes (for metrics and logs). Calls are serialised and the
	// last call names the current mode. It must not call Spend.
	OnMode func(mode string)
	// Now is the clock for RetryEvery; default time.Now.
	Now func() time.Time
	// OnWriteBack, if set, is told of each copy of local spends and
	// adjustments into the primary after it returns: the units copied
	// (each change counted by its size, releases too), or the error (the
	// changes are then kept for the next try).
	OnWriteBack func(units int64, err error)
}

// writeBackTimeout bounds one copy of local spends into the primary.
const writeBackTimeout = 2 * time.Second

// cachedSpender is a primary that can answer some spends without its backend.
type cachedSpender interface {
	spendCached(ctx context.Context, group string, items []Item, used []int64) (int, error)
}

// tripSpender is a primary that says whether a spend made a round trip.
// For any other primary every Spend is one.
type tripSpender interface {
	spendTrip(ctx context.Context, group string, items []Item, used []int64) (int, trip, error)
}

var _ Store = (*Resilient)(nil)

// errDegraded is returned for fail-closed items between retries.
var errDegraded = fmt.Errorf("%w: shared quota store down, retrying", ErrUnavailable)

// Defaults of ResilientOptions.
const (
	// DefaultRetryEvery is how often a degraded Resilient tries its primary.
	DefaultRetryEvery = 250 * time.Millisecond
	// DefaultFailAfter is how many failed round trips in a row make a
	// Resilient degraded.
	DefaultFailAfter = 3
)

// NewResilient returns a store spending on primary and falling back to local
// for fail-open items. local may be nil when no quota fails open.
func NewResilient(primary Store, local *Memory, o ResilientOptions) *Resilient {
	r := &Resilient{primary: primary, local: local, retry: o.RetryEvery, now: o.Now, onMode: o.OnMode, notified: ModePrimary,
		onWriteBack: o.OnWriteBack}
	if a, ok := primary.(deltaApplier); ok {
		r.applier = a
	}
	if r.retry <= 0 {
		r.retry = DefaultRetryEvery
	}
	if r.failAfter = int64(o.FailAfter); r.failAfter <= 0 {
		r.failAfter = DefaultFailAfter
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.j = newJournal(r.now)
	if c, ok := primary.(cachedSpender); ok {
		r.cached = c
	}
	return r
}

// Mode returns ModePrimary or ModeDegraded.
func (r *Resilient) Mode() string {
	if r.degraded.Load() {
		return ModeDegraded
	}
	return ModePrimary
}

// Spend implements Store.
func (r *Resilient) Spend(ctx context.Context, group string, items []Item, used []int64) (int, error) {
	probe := false
	if r.degraded.Load() {
		if !r.claimRetry() {
			return r.fallback(ctx, group, items, used, errDegraded)
		}
		probe = true
	}
	d, t, err := r.spendPrimary(ctx, group, items, used)
	switch t {
	case tripOK:
		r.fails.Store(0)
		if r.setDegraded(false) || r.dirty.Load() {
			r.writeBack()
		}
	case tripFailed:
		if r.fails.Add(1) >= r.failAfter {
			r.nextProbe.Store(r.now().Add(r.retry).UnixNano())
			r.setDegraded(true)
		}
	default:
		if probe {
			// Answered from a lease: no news of the primary. Let the next
			// request try.
			r.nextProbe.Store(r.now().UnixNano())
		}
	}
	switch {
	case err == nil:
		return d, nil
	case errors.Is(err, ErrUnavailable):
		return r.fallback(ctx, group, items, used, err)
	default:
		return d, err
	}
}

// spendPrimary spends on the primary and says whether that was a round trip.
func (r *Resilient) spendPrimary(ctx context.Context, group string, items []Item, used []int64) (int, trip, error) {
	if ts, ok := r.primary.(tripSpender); ok {
		return ts.spendTrip(ctx, group, items, used)
	}
	d, err := r.primary.Spend(ctx, group, items, used)
	switch {
	case err == nil:
		return d, tripOK, nil
	case errors.Is(err, ErrUnavailable):
		return d, tripFailed, err
	}
	return d, tripNone, err
}

// claimRetry reports whether this request is the one to try the primary now.
func (r *Resilient) claimRetry() bool {
	next := r.nextProbe.Load()
	now := r.now().UnixNano()
	return now >= next && r.nextProbe.CompareAndSwap(next, now+int64(r.retry))
}

// setDegraded sets the mode and reports whether this call changed it.
func (r *Resilient) setDegraded(v bool) bool {
	if r.degraded.Load() == v || !r.degraded.CompareAndSwap(!v, v) {
		return false
	}
	if r.onMode == nil {
		return true
	}
	r.notifyMu.Lock()
	defer r.notifyMu.Unlock()
	// Report the mode as it stands now, so racing changes end on the truth.
	if m := r.Mode(); m != r.notified {
		r.notified = m
		r.onMode(m)
	}
	return true
}

// writeBackBatch is how many counters one copy sends in one pipeline.
const writeBackBatch = 1000

// writeBack copies the journal (local spends, adjustments) into the
// primary, in the background, one copy at a time. A copy goes on while it
// finds changes (made meanwhile, or more than one batch), and stops at the
// first failure, leaving the rest for the next successful round trip.
func (r *Resilient) writeBack() {
	if r.applier == nil || !r.syncing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		for {
			r.dirty.Store(false)
			if !r.sendTopUps() {
				r.dirty.Store(true)
				r.syncing.Store(false)
				return
			}
			if ds := r.j.take(writeBackBatch); len(ds) > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), writeBackTimeout)
				_, err := r.applier.applyDeltas(ctx, ds, writeBackTimeout)
				cancel()
				r.j.done(ds, err == nil)
				if r.onWriteBack != nil {
					r.onWriteBack(units(ds), err)
				}
				if err != nil {
					r.dirty.Store(true)
					r.syncing.Store(false)
					return
				}
				continue
			}
			r.syncing.Store(false)
			// A change journaled after take, whose writeBack found this
			// copy still running, is copied now.
			if !r.dirty.Load() || !r.syncing.CompareAndSwap(false, true) {
				return
			}
		}
	}()
}

// WaitWriteBack waits until no write-back is running (for tests and
// shutdown).
func (r *Resilient) WaitWriteBack() {
	for r.syncing.Load() {
		time.Sleep(time.Millisecond)
	}
}

// fallback answers without the primary's backend: from the primary's
// cache if it can, else by the items' failure policy.
func (r *Resilient) fallback(ctx context.Context, group string, items []Item, used []int64, cause error) (int, error) {
	if r.cached != nil {
		if d, err := r.cached.spendCached(ctx, group, items, used); err == nil {
			return d, nil
		}
	}
	if r.local == nil {
		return -1, cause
	}
	for i := range items {
		if !items[i].FailOpen {
			return -1, cause
		}
	}
	d, err := r.local.Spend(ctx, group, items, used)
	if err == nil && d < 0 && r.applier != nil {
		// Owed to the primary: copied once it answers again.
		for _, it := range items {
			r.j.add(group, it.Key, it.Reset, max(it.Cost, 0))
		}
		r.dirty.Store(true)
	}
	return d, err
}
