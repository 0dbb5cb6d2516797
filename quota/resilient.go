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
//     on its own. Those spends are not copied to the primary when it returns.
//   - Otherwise the spend fails with an error wrapping ErrUnavailable (the
//     caller answers 503 entitlements_unavailable with Retry-After): the
//     quota fails closed.
//
// While degraded, a Leased primary still answers what it can without Redis
// (units already leased, counters known to be spent) before the policy
// applies, since those answers are still globally right.
//
// After a failure Resilient does not call the primary for every request:
// one request per RetryEvery (default 250 ms) tries it; the others go
// straight to the policy. The first success switches back to the primary.
// Errors that do not wrap ErrUnavailable are returned as they are.
//
// Resilient is safe for concurrent use; in primary mode it costs one atomic
// load on top of the primary.
type Resilient struct {
	primary Store
	cached  cachedSpender // primary's offline answers, or nil
	local   *Memory
	retry   time.Duration
	now     func() time.Time
	onMode  func(mode string)

	degraded  atomic.Bool
	nextProbe atomic.Int64 // unix ns: when degraded, the next request at or after it tries the primary

	notifyMu sync.Mutex // serialises onMode calls
	notified string
}

// ResilientOptions configures a Resilient store.
type ResilientOptions struct {
	// RetryEvery is how often the primary is tried while degraded;
	// default 250 ms.
	RetryEvery time.Duration
	// OnMode, if set, is called with ModePrimary or ModeDegraded each time
	// the mode changes (for metrics and logs). Calls are serialised and the
	// last call names the current mode. It must not call Spend.
	OnMode func(mode string)
	// Now is the clock for RetryEvery; default time.Now.
	Now func() time.Time
}

// cachedSpender is a primary that can answer some spends without its backend.
type cachedSpender interface {
	spendCached(ctx context.Context, group string, items []Item, used []int64) (int, error)
}

var _ Store = (*Resilient)(nil)

// errDegraded is returned for fail-closed items between retries.
var errDegraded = fmt.Errorf("%w: shared quota store down, retrying", ErrUnavailable)

// DefaultRetryEvery is how often a degraded Resilient tries its primary.
const DefaultRetryEvery = 250 * time.Millisecond

// NewResilient returns a store spending on primary and falling back to local
// for fail-open items. local may be nil when no quota fails open.
func NewResilient(primary Store, local *Memory, o ResilientOptions) *Resilient {
	r := &Resilient{primary: primary, local: local, retry: o.RetryEvery, now: o.Now, onMode: o.OnMode, notified: ModePrimary}
	if r.retry <= 0 {
		r.retry = DefaultRetryEvery
	}
	if r.now == nil {
		r.now = time.Now
	}
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
	if r.degraded.Load() && !r.claimRetry() {
		return r.fallback(ctx, group, items, used, errDegraded)
	}
	d, err := r.primary.Spend(ctx, group, items, used)
	switch {
	case err == nil:
		r.setDegraded(false)
		return d, nil
	case errors.Is(err, ErrUnavailable):
		r.nextProbe.Store(r.now().Add(r.retry).UnixNano())
		r.setDegraded(true)
		return r.fallback(ctx, group, items, used, err)
	default:
		return d, err
	}
}

// claimRetry reports whether this request is the one to try the primary now.
func (r *Resilient) claimRetry() bool {
	next := r.nextProbe.Load()
	now := r.now().UnixNano()
	return now >= next && r.nextProbe.CompareAndSwap(next, now+int64(r.retry))
}

func (r *Resilient) setDegraded(v bool) {
	if r.degraded.Load() == v || !r.degraded.CompareAndSwap(!v, v) {
		return
	}
	if r.onMode == nil {
		return
	}
	r.notifyMu.Lock()
	defer r.notifyMu.Unlock()
	// Report the mode as it stands now, so racing changes end on the truth.
	if m := r.Mode(); m != r.notified {
		r.notified = m
		r.onMode(m)
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
	return r.local.Spend(ctx, group, items, used)
}
