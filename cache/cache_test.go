package cache

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
)

// fakeSource is a hand-written Source whose behaviour each test sets.
type fakeSource struct {
	calls  atomic.Int64
	lookup func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error)
}

func (f *fakeSource) Lookup(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
	f.calls.Add(1)
	return f.lookup(ctx, k)
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var (
	known   = entitlement.Key{Kind: entitlement.BySubject, ID: "acme"}
	unknown = entitlement.Key{Kind: entitlement.BySubject, ID: "nobody"}
	errDown = errors.New("backend down")
)

func newTest(opts Options) (*Cache, *fakeSource, *clock, *atomic.Bool) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	down := &atomic.Bool{}
	src := &fakeSource{lookup: func(_ context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
		if down.Load() {
			return nil, errDown
		}
		if k == known {
			return &entitlement.Entitlement{Subject: "acme", Plan: "pro"}, nil
		}
		return nil, entitlement.ErrNotFound
	}}
	opts.Now = clk.now
	return New(src, opts), src, clk, down
}

func TestLifecycle(t *testing.T) {
	c, src, clk, down := newTest(Options{TTL: 30 * time.Second, NegativeTTL: 5 * time.Second, StaleIfError: time.Minute})
	ctx := context.Background()
	type step struct {
		name      string
		advance   time.Duration
		down      bool
		key       entitlement.Key
		want      entitlement.CacheOutcome
		wantErr   error
		wantCalls int64
	}
	steps := []step{
		{"cold miss", 0, false, known, entitlement.CacheMiss, nil, 1},
		{"hit", time.Second, false, known, entitlement.CacheHit, nil, 1},
		{"still fresh at ttl-1s", 28 * time.Second, false, known, entitlement.CacheHit, nil, 1},
		{"expired: refetch", 2 * time.Second, false, known, entitlement.CacheMiss, nil, 2},
		{"unknown is a miss", 0, false, unknown, entitlement.CacheMiss, entitlement.ErrNotFound, 3},
		{"unknown cached", 4 * time.Second, false, unknown, entitlement.CacheNegativeHit, entitlement.ErrNotFound, 3},
		{"negative ttl expires first", 2 * time.Second, false, unknown, entitlement.CacheMiss, entitlement.ErrNotFound, 4},
		{"source down after expiry: stale", 31 * time.Second, true, known, entitlement.CacheStale, nil, 5},
		{"stale again, still bounded", 50 * time.Second, true, known, entitlement.CacheStale, nil, 6},
		{"past stale_if_error: error", 20 * time.Second, true, known, entitlement.CacheError, errDown, 7},
		{"source back: fresh", 0, false, known, entitlement.CacheMiss, nil, 8},
	}
	for _, s := range steps {
		clk.add(s.advance)
		down.Store(s.down)
		e, got, err := c.Get(ctx, s.key)
		if got != s.want {
			t.Errorf("%s: outcome = %s, want %s", s.name, got, s.want)
		}
		if !errors.Is(err, s.wantErr) || (s.wantErr == nil && err != nil) {
			t.Errorf("%s: err = %v, want %v", s.name, err, s.wantErr)
		}
		if s.wantErr == nil && (e == nil || e.Subject != "acme") {
			t.Errorf("%s: entitlement = %+v", s.name, e)
		}
		if n := src.calls.Load(); n != s.wantCalls {
			t.Errorf("%s: source calls = %d, want %d", s.name, n, s.wantCalls)
		}
	}
}

func TestErrorsAreNotCachedAsUnknown(t *testing.T) {
	c, src, _, down := newTest(Options{})
	down.Store(true)
	for range 3 {
		if _, o, err := c.Get(context.Background(), known); o != entitlement.CacheError || !errors.Is(err, errDown) {
			t.Fatalf("outcome %s err %v, want error", o, err)
		}
	}
	if got, want := src.calls.Load(), int64(3); got != want {
		t.Errorf("source calls = %d, want %d (errors must not be cached)", got, want)
	}
	down.Store(false)
	if _, o, err := c.Get(context.Background(), known); o != entitlement.CacheMiss || err != nil {
		t.Errorf("after recovery: %s %v", o, err)
	}
}

// TestSingleFlight holds the rule doc.go states: one source call per key
// while a call is in flight; a later lookup is answered by what that call
// stored; only a call that stored nothing fresh lets a second one through.
func TestSingleFlight(t *testing.T) {
	t.Run("concurrent lookups share the call in flight", func(t *testing.T) {
		c, src, _, _ := newTest(Options{Timeout: time.Minute})
		release := make(chan struct{})
		inner := src.lookup
		src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
			<-release
			return inner(ctx, k)
		}
		const n = 1000
		var wg sync.WaitGroup
		var started, ok atomic.Int64
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				started.Add(1)
				if e, _, err := c.Get(context.Background(), known); err == nil && e.Subject == "acme" {
					ok.Add(1)
				}
			}()
		}
		// However many have joined the flight when it lands, the rest find
		// its answer (in the cache, or by the flight's second look).
		for src.calls.Load() == 0 || started.Load() < n {
			runtime.Gosched()
		}
		close(release)
		wg.Wait()
		if got, want := src.calls.Load(), int64(1); got != want {
			t.Errorf("source calls = %d, want %d", got, want)
		}
		if got, want := ok.Load(), int64(n); got != want {
			t.Errorf("successful lookups = %d, want %d", got, want)
		}
	})

	t.Run("a flight begun after the answer landed asks nobody", func(t *testing.T) {
		// A caller that missed the cache before the first flight stored its
		// answer, and reached the flight group after it had ended, runs a
		// flight of its own: the second look in fetch answers it.
		c, src, _, _ := newTest(Options{})
		if _, o, err := c.Get(context.Background(), known); o != entitlement.CacheMiss || err != nil {
			t.Fatalf("first lookup: %s %v", o, err)
		}
		res := c.fetch(context.Background(), known)
		if got, want := res.outcome, entitlement.CacheHit; got != want || res.ent == nil {
			t.Errorf("late flight: outcome %s (%v), want %s", got, res.ent, want)
		}
		if got, want := src.calls.Load(), int64(1); got != want {
			t.Errorf("source calls = %d, want %d", got, want)
		}
	})

	t.Run("a call cut off by the timeout is not shared with later lookups", func(t *testing.T) {
		// The source honours the deadline but keeps working, as a remote
		// service does: the next lookup is a second call while the first is
		// still running there.
		c, src, _, _ := newTest(Options{Timeout: time.Millisecond})
		src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		for i := range 2 {
			if _, o, err := c.Get(context.Background(), known); o != entitlement.CacheError || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("lookup %d: %s %v, want error", i, o, err)
			}
		}
		if got, want := src.calls.Load(), int64(2); got != want {
			t.Errorf("source calls = %d, want %d", got, want)
		}
	})
}

func TestCallerGivesUpFetchStillCaches(t *testing.T) {
	c, src, _, _ := newTest(Options{Timeout: time.Second})
	release := make(chan struct{})
	inner := src.lookup
	src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
		<-release
		return inner(ctx, k)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, o, err := c.Get(ctx, known); o != entitlement.CacheError || !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %s %v", o, err)
	}
	close(release)
	for c.Len() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, o, _ := c.Get(context.Background(), known); o != entitlement.CacheHit {
		t.Errorf("after the abandoned fetch landed: outcome %s, want hit", o)
	}
}

func TestInvalidateDuringFetch(t *testing.T) {
	c, src, _, _ := newTest(Options{})
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	inner := src.lookup
	src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
		started <- struct{}{}
		<-release
		return inner(ctx, k)
	}
	done := make(chan struct{})
	go func() { c.Get(context.Background(), known); close(done) }()
	<-started
	c.Invalidate(known)
	close(release)
	<-done
	if got := c.Len(); got != 0 {
		t.Errorf("entries after invalidated fetch = %d, want 0 (the old answer must not be stored)", got)
	}
	src.lookup = inner
	if _, o, _ := c.Get(context.Background(), known); o != entitlement.CacheMiss {
		t.Errorf("next lookup: %s, want miss", o)
	}
}

func TestPurge(t *testing.T) {
	c, _, _, _ := newTest(Options{})
	c.Get(context.Background(), known)
	c.Purge()
	if _, o, _ := c.Get(context.Background(), known); o != entitlement.CacheMiss {
		t.Errorf("after purge: %s, want miss", o)
	}
}

// paid is the source's answer for the keys "paid-N".
func paid(k entitlement.Key) (*entitlement.Entitlement, bool) {
	if strings.HasPrefix(k.ID, "paid-") {
		return &entitlement.Entitlement{Subject: k.ID, Plan: "pro"}, true
	}
	return nil, false
}

// TestUnknownFloodKeepsKnownRecords: unknown keys have an LRU of their own,
// so a flood of them evicts neither a known subject's record nor the
// ability to serve it while the source is down; both LRUs stay bounded.
func TestUnknownFloodKeepsKnownRecords(t *testing.T) {
	c, src, _, down := newTest(Options{MaxEntries: 100, NegativeMaxEntries: 50, StaleIfError: time.Hour})
	inner := src.lookup
	src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
		if e, ok := paid(k); ok && !down.Load() {
			return e, nil
		}
		return inner(ctx, k)
	}
	ctx := context.Background()
	customers := make([]entitlement.Key, 20)
	for i := range customers {
		customers[i] = entitlement.Key{Kind: entitlement.ByAPIKey, ID: fmt.Sprint("paid-", i)}
		if _, o, err := c.Get(ctx, customers[i]); o != entitlement.CacheMiss || err != nil {
			t.Fatalf("customer %d: %s %v", i, o, err)
		}
	}
	for i := range 10000 {
		c.Get(ctx, entitlement.Key{Kind: entitlement.ByAPIKey, ID: fmt.Sprint("made-up-", i)})
	}
	if got, want := c.Len(), 20+50; got != want {
		t.Errorf("entries = %d, want %d (20 known, 50 unknown)", got, want)
	}
	down.Store(true)
	for i, k := range customers {
		if e, o, err := c.Get(ctx, k); o != entitlement.CacheHit || err != nil || e.Subject != k.ID {
			t.Errorf("customer %d after the flood, source down: %s %v, want a hit", i, o, err)
		}
	}
	// Known records are bounded by MaxEntries all the same.
	down.Store(false)
	for i := range 1000 {
		c.Get(ctx, entitlement.Key{Kind: entitlement.ByAPIKey, ID: fmt.Sprint("paid-more-", i)})
	}
	if got, want := c.Len(), 100+50; got != want {
		t.Errorf("entries = %d, want %d", got, want)
	}
}

// TestRevalidate: a reload or a resubscription marks records for
// revalidation; it never takes away what stale-if-error serves, and any
// answer from the source replaces the record.
func TestRevalidate(t *testing.T) {
	type step struct {
		name       string
		revalidate bool
		down       bool
		empty      bool // the source answers "not found" for every key
		key        entitlement.Key
		want       entitlement.CacheOutcome
		wantErr    error
		wantCalls  int64
	}
	steps := []step{
		{"cold miss", false, false, false, known, entitlement.CacheMiss, nil, 1},
		{"unknown cached", false, false, false, unknown, entitlement.CacheMiss, entitlement.ErrNotFound, 2},
		{"hit", false, false, false, known, entitlement.CacheHit, nil, 2},
		{"revalidate, source down: stale, not an error", true, true, false, known, entitlement.CacheStale, nil, 3},
		{"unknown: stale unknown", false, true, false, unknown, entitlement.CacheStale, entitlement.ErrNotFound, 4},
		{"still down: stale again", false, true, false, known, entitlement.CacheStale, nil, 5},
		{"source back: refetched", false, false, false, known, entitlement.CacheMiss, nil, 6},
		{"then fresh", false, false, false, known, entitlement.CacheHit, nil, 6},
		{"revalidate, source now empty: unknown replaces the record", true, false, true, known, entitlement.CacheMiss, entitlement.ErrNotFound, 7},
		{"source down: the unknown is what serves", false, true, false, known, entitlement.CacheNegativeHit, entitlement.ErrNotFound, 7},
	}
	c, src, _, down := newTest(Options{StaleIfError: time.Hour})
	empty := &atomic.Bool{}
	inner := src.lookup
	src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
		if empty.Load() && !down.Load() {
			return nil, entitlement.ErrNotFound
		}
		return inner(ctx, k)
	}
	for _, s := range steps {
		if s.revalidate {
			c.Revalidate()
		}
		down.Store(s.down)
		empty.Store(s.empty)
		e, got, err := c.Get(context.Background(), s.key)
		if got != s.want {
			t.Errorf("%s: outcome = %s, want %s", s.name, got, s.want)
		}
		if !errors.Is(err, s.wantErr) || (s.wantErr == nil && err != nil) {
			t.Errorf("%s: err = %v, want %v", s.name, err, s.wantErr)
		}
		if s.wantErr == nil && (e == nil || e.Subject != "acme") {
			t.Errorf("%s: entitlement = %+v", s.name, e)
		}
		if n := src.calls.Load(); n != s.wantCalls {
			t.Errorf("%s: source calls = %d, want %d", s.name, n, s.wantCalls)
		}
	}
}

// TestRevalidateDuringFetch: a fetch in flight when records are marked
// stores its answer, still marked: usable when the source fails, not fresh.
func TestRevalidateDuringFetch(t *testing.T) {
	c, src, _, down := newTest(Options{StaleIfError: time.Hour})
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	inner := src.lookup
	src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
		select {
		case started <- struct{}{}:
			<-release
		default: // later calls do not wait
		}
		return inner(ctx, k)
	}
	done := make(chan struct{})
	go func() { c.Get(context.Background(), known); close(done) }()
	<-started
	c.Revalidate()
	close(release)
	<-done
	down.Store(true)
	if _, o, err := c.Get(context.Background(), known); o != entitlement.CacheStale || err != nil {
		t.Errorf("after a revalidation during the fetch, source down: %s %v, want stale", o, err)
	}
}

// TestUnconfirmedNotFound: a "not found" the source cannot vouch for (a
// source that came back empty) serves a key's record until its stale window
// ends, a record replaces it, or an invalidation drops it. A plain "not
// found" (a deletion, announced or not) replaces the record at once.
func TestUnconfirmedNotFound(t *testing.T) {
	const ttl, stale = 30 * time.Second, time.Hour
	lost, deleted := entitlement.ErrNotFoundUnconfirmed, entitlement.ErrNotFound
	type step struct {
		name       string
		advance    time.Duration
		revalidate bool
		invalidate bool
		answer     error // nil: the source has the record
		want       entitlement.CacheOutcome
		wantErr    error
	}
	tests := []struct {
		name  string
		opts  Options
		steps []step
	}{
		{"unconfirmed: the record outlives an empty source, for its stale window", Options{}, []step{
			{"cold miss", 0, false, false, nil, entitlement.CacheMiss, nil},
			{"resubscribed to an empty source: the record serves", 0, true, false, lost, entitlement.CacheSuspectNotFound, nil},
			{"again, each time asking the source", time.Minute, false, false, lost, entitlement.CacheSuspectNotFound, nil},
			{"just inside ttl+stale_if_error", ttl + stale - time.Minute - time.Second, false, false, lost, entitlement.CacheSuspectNotFound, nil},
			{"past ttl+stale_if_error: unknown", time.Second, false, false, lost, entitlement.CacheMiss, entitlement.ErrNotFound},
			{"and remembered as unknown", 0, false, false, lost, entitlement.CacheNegativeHit, entitlement.ErrNotFound},
		}},
		{"unconfirmed: a record from the source replaces it", Options{}, []step{
			{"cold miss", 0, false, false, nil, entitlement.CacheMiss, nil},
			{"empty source", 0, true, false, lost, entitlement.CacheSuspectNotFound, nil},
			{"the writer puts it back", 0, false, false, nil, entitlement.CacheMiss, nil},
			{"fresh", 0, false, false, lost, entitlement.CacheHit, nil},
			{"expired, empty again", ttl, false, false, lost, entitlement.CacheSuspectNotFound, nil},
		}},
		{"unconfirmed: an invalidation makes it believed", Options{}, []step{
			{"cold miss", 0, false, false, nil, entitlement.CacheMiss, nil},
			{"invalidated", 0, false, true, lost, entitlement.CacheMiss, entitlement.ErrNotFound},
		}},
		{"confirmed: a deletion the replica missed is believed at once", Options{}, []step{
			{"cold miss", 0, false, false, nil, entitlement.CacheMiss, nil},
			{"revalidated after a missed message", 0, true, false, deleted, entitlement.CacheMiss, entitlement.ErrNotFound},
			{"and remembered as unknown", 0, false, false, nil, entitlement.CacheNegativeHit, entitlement.ErrNotFound},
		}},
		{"confirmed: believed when the record expires, too", Options{}, []step{
			{"cold miss", 0, false, false, nil, entitlement.CacheMiss, nil},
			{"expired", ttl, false, false, deleted, entitlement.CacheMiss, entitlement.ErrNotFound},
		}},
		{"confirmed: believed after a revalidation", Options{}, []step{
			{"cold miss", 0, false, false, nil, entitlement.CacheMiss, nil},
			{"revalidated after a missed message", 0, true, false, deleted, entitlement.CacheMiss, entitlement.ErrNotFound},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.TTL, tt.opts.StaleIfError = ttl, stale
			c, src, clk, _ := newTest(tt.opts)
			var answer atomic.Pointer[error]
			inner := src.lookup
			src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
				if err := answer.Load(); err != nil && *err != nil {
					return nil, *err
				}
				return inner(ctx, k)
			}
			for _, s := range tt.steps {
				clk.add(s.advance)
				if s.revalidate {
					c.Revalidate()
				}
				if s.invalidate {
					c.InvalidateSubject("acme")
				}
				answer.Store(&s.answer)
				e, got, err := c.Get(context.Background(), known)
				if got != s.want {
					t.Errorf("%s: outcome = %s, want %s", s.name, got, s.want)
				}
				if !errors.Is(err, s.wantErr) || (s.wantErr == nil && err != nil) {
					t.Errorf("%s: err = %v, want %v", s.name, err, s.wantErr)
				}
				if s.wantErr == nil && (e == nil || e.Subject != "acme") {
					t.Errorf("%s: entitlement = %+v", s.name, e)
				}
			}
		})
	}
}

func BenchmarkGetHit(b *testing.B) {
	c, _, _, _ := newTest(Options{})
	ctx := context.Background()
	c.Get(ctx, known)
	b.ReportAllocs()
	for b.Loop() {
		if _, o, _ := c.Get(ctx, known); o != entitlement.CacheHit {
			b.Fatal(o)
		}
	}
}

func BenchmarkGetHitParallel(b *testing.B) {
	c, _, _, _ := newTest(Options{})
	ctx := context.Background()
	c.Get(ctx, known)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Get(ctx, known)
		}
	})
}

func TestInvalidateSubjectDropsEveryKey(t *testing.T) {
	c, src, _, _ := newTest(Options{})
	inner := src.lookup
	src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
		if k.Kind == entitlement.ByAPIKey && k.ID == "digest-of-acme" {
			return &entitlement.Entitlement{Subject: "acme", Plan: "pro"}, nil
		}
		return inner(ctx, k)
	}
	byKey := entitlement.Key{Kind: entitlement.ByAPIKey, ID: "digest-of-acme"}
	other := entitlement.Key{Kind: entitlement.BySubject, ID: "nobody"}
	for _, k := range []entitlement.Key{known, byKey, other} {
		c.Get(context.Background(), k)
	}
	if got := c.InvalidateSubject("acme"); got != 2 {
		t.Errorf("dropped %d, want 2 (by subject and by key)", got)
	}
	for _, tt := range []struct {
		key  entitlement.Key
		want entitlement.CacheOutcome
	}{{known, entitlement.CacheMiss}, {byKey, entitlement.CacheMiss}, {other, entitlement.CacheNegativeHit}} {
		if _, o, _ := c.Get(context.Background(), tt.key); o != tt.want {
			t.Errorf("%v: %s, want %s", tt.key, o, tt.want)
		}
	}
}
