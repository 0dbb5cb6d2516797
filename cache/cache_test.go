package cache

import (
	"context"
	"errors"
	"fmt"
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
		want      Outcome
		wantErr   error
		wantCalls int64
	}
	steps := []step{
		{"cold miss", 0, false, known, Miss, nil, 1},
		{"hit", time.Second, false, known, Hit, nil, 1},
		{"still fresh at ttl-1s", 28 * time.Second, false, known, Hit, nil, 1},
		{"expired: refetch", 2 * time.Second, false, known, Miss, nil, 2},
		{"unknown is a miss", 0, false, unknown, Miss, entitlement.ErrNotFound, 3},
		{"unknown cached", 4 * time.Second, false, unknown, NegativeHit, entitlement.ErrNotFound, 3},
		{"negative ttl expires first", 2 * time.Second, false, unknown, Miss, entitlement.ErrNotFound, 4},
		{"source down after expiry: stale", 31 * time.Second, true, known, Stale, nil, 5},
		{"stale again, still bounded", 50 * time.Second, true, known, Stale, nil, 6},
		{"past stale_if_error: error", 20 * time.Second, true, known, Error, errDown, 7},
		{"source back: fresh", 0, false, known, Miss, nil, 8},
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
		if _, o, err := c.Get(context.Background(), known); o != Error || !errors.Is(err, errDown) {
			t.Fatalf("outcome %s err %v, want error", o, err)
		}
	}
	if got, want := src.calls.Load(), int64(3); got != want {
		t.Errorf("source calls = %d, want %d (errors must not be cached)", got, want)
	}
	down.Store(false)
	if _, o, err := c.Get(context.Background(), known); o != Miss || err != nil {
		t.Errorf("after recovery: %s %v", o, err)
	}
}

func TestConcurrentMissesMakeOneCall(t *testing.T) {
	c, src, _, _ := newTest(Options{})
	release := make(chan struct{})
	inner := src.lookup
	src.lookup = func(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
		<-release
		return inner(ctx, k)
	}
	const n = 1000
	var wg sync.WaitGroup
	var ok atomic.Int64
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if e, _, err := c.Get(context.Background(), known); err == nil && e.Subject == "acme" {
				ok.Add(1)
			}
		}()
	}
	// Let the goroutines pile up on the flight before it lands.
	for src.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	if got := src.calls.Load(); got != 1 {
		t.Errorf("source calls = %d, want 1", got)
	}
	if got := ok.Load(); got != n {
		t.Errorf("successful lookups = %d, want %d", got, n)
	}
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
	if _, o, err := c.Get(ctx, known); o != Error || !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %s %v", o, err)
	}
	close(release)
	for c.Len() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, o, _ := c.Get(context.Background(), known); o != Hit {
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
	if _, o, _ := c.Get(context.Background(), known); o != Miss {
		t.Errorf("next lookup: %s, want miss", o)
	}
}

func TestPurge(t *testing.T) {
	c, _, _, _ := newTest(Options{})
	c.Get(context.Background(), known)
	c.Purge()
	if _, o, _ := c.Get(context.Background(), known); o != Miss {
		t.Errorf("after purge: %s, want miss", o)
	}
}

func TestBoundedUnderUnknownFlood(t *testing.T) {
	c, _, _, _ := newTest(Options{MaxEntries: 100})
	for i := range 10000 {
		c.Get(context.Background(), entitlement.Key{Kind: entitlement.ByAPIKey, ID: fmt.Sprint(i)})
	}
	if got := c.Len(); got != 100 {
		t.Errorf("entries = %d, want 100", got)
	}
}

func BenchmarkGetHit(b *testing.B) {
	c, _, _, _ := newTest(Options{})
	ctx := context.Background()
	c.Get(ctx, known)
	b.ReportAllocs()
	for b.Loop() {
		if _, o, _ := c.Get(ctx, known); o != Hit {
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
		want Outcome
	}{{known, Miss}, {byKey, Miss}, {other, NegativeHit}} {
		if _, o, _ := c.Get(context.Background(), tt.key); o != tt.want {
			t.Errorf("%v: %s, want %s", tt.key, o, tt.want)
		}
	}
}
