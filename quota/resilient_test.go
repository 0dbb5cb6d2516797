package quota

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/internal/redistest"
	"github.com/tollgate-authz/tollgate/period"
)

// fakeStore is a Store whose Spend is a function field. It takes local
// spends and adjustments back (applyDeltas) unless addErr is set.
type fakeStore struct {
	calls  atomic.Int64
	spend  func(ctx context.Context, group string, items []Item, used []int64) (int, error)
	mu     sync.Mutex
	added  map[string]int64 // key → units written back
	addErr error
}

func (f *fakeStore) applyDeltas(_ context.Context, ds []Delta, _ time.Duration) ([]int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.addErr != nil {
		return nil, f.addErr
	}
	if f.added == nil {
		f.added = map[string]int64{}
	}
	used := make([]int64, len(ds))
	for i, d := range ds {
		f.added[d.Group+"/"+d.Key] += d.N
		used[i] = f.added[d.Group+"/"+d.Key]
	}
	return used, nil
}

func (f *fakeStore) addedUnits(key string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.added[key]
}

func (f *fakeStore) Spend(ctx context.Context, group string, items []Item, used []int64) (int, error) {
	f.calls.Add(1)
	return f.spend(ctx, group, items, used)
}

// modeLog records OnMode calls.
type modeLog struct {
	mu    sync.Mutex
	modes []string
}

func (m *modeLog) record(mode string) { m.mu.Lock(); m.modes = append(m.modes, mode); m.mu.Unlock() }
func (m *modeLog) get() []string      { m.mu.Lock(); defer m.mu.Unlock(); return slices.Clone(m.modes) }

func TestResilientPolicy(t *testing.T) {
	clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	var down atomic.Bool
	primary := &fakeStore{spend: func(ctx context.Context, group string, items []Item, used []int64) (int, error) {
		if down.Load() {
			return -1, fmt.Errorf("%w: redis: connection refused", ErrUnavailable)
		}
		return -1, nil
	}}
	var log modeLog
	local := NewMemory(clk.Now)
	// One failure degrades here: this test is about the failure policy;
	// TestResilientHysteresis is about when the mode changes.
	r := NewResilient(primary, local, ResilientOptions{RetryEvery: time.Second, FailAfter: 1, OnMode: log.record, Now: clk.Now})
	reset := clk.Now().Add(time.Hour)
	closed := []Item{{Key: "closed", Cost: 1, Limit: 100, Reset: reset}}
	open := []Item{{Key: "open", Cost: 1, Limit: 3, Reset: reset, FailOpen: true}}
	mixed := []Item{open[0], closed[0]}
	ctx := context.Background()
	used := make([]int64, 2)
	spend := func(items []Item) (int, error) { return r.Spend(ctx, "g", items, used[:len(items)]) }

	// Healthy: everything goes to the primary.
	if d, err := spend(closed); d != -1 || err != nil || primary.calls.Load() != 1 || r.Mode() != ModePrimary {
		t.Fatalf("healthy: denied=%d err=%v calls=%d mode=%s", d, err, primary.calls.Load(), r.Mode())
	}

	// The primary fails: fail-closed items fail, and the mode flips.
	down.Store(true)
	if _, err := spend(closed); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("closed item with primary down: err=%v, want ErrUnavailable", err)
	}
	if r.Mode() != ModeDegraded || !slices.Equal(log.get(), []string{ModeDegraded}) {
		t.Fatalf("mode=%s, OnMode calls %v; want degraded", r.Mode(), log.get())
	}
	calls := primary.calls.Load()

	// Until RetryEvery passes, the primary is left alone.
	if _, err := spend(closed); !errors.Is(err, ErrUnavailable) {
		t.Errorf("closed item while degraded: err=%v, want ErrUnavailable", err)
	}
	if _, err := spend(mixed); !errors.Is(err, ErrUnavailable) {
		t.Errorf("a fail-open item with a fail-closed one: err=%v, want ErrUnavailable", err)
	}
	for i, want := range []int{-1, -1, -1, 0, 0} {
		if d, err := spend(open); d != want || err != nil {
			t.Errorf("open spend %d while degraded: denied=%d err=%v, want denied=%d (local limit 3)", i, d, err, want)
		}
	}
	if got := local.Used("g", "open"); got != 3 {
		t.Errorf("local count = %d, want 3", got)
	}
	if got := local.Used("g", "closed"); got != 0 {
		t.Errorf("fail-closed item counted locally: %d", got)
	}
	if got := primary.calls.Load(); got != calls {
		t.Errorf("primary called %d times while backing off, want 0", got-calls)
	}

	// One retry per RetryEvery, and it still fails.
	clk.Add(time.Second)
	for range 5 {
		spend(closed)
	}
	if got := primary.calls.Load() - calls; got != 1 {
		t.Errorf("primary called %d times in one retry period, want 1", got)
	}
	if r.Mode() != ModeDegraded {
		t.Errorf("mode after a failed retry = %s", r.Mode())
	}

	// The primary returns: the next retry switches back by itself, and the
	// spends counted locally are written back to it. The first copy fails:
	// the units are kept for the next return.
	primary.mu.Lock()
	primary.addErr = errors.New("connection reset")
	primary.mu.Unlock()
	down.Store(false)
	clk.Add(time.Second)
	if d, err := spend(closed); d != -1 || err != nil {
		t.Errorf("first spend after recovery: denied=%d err=%v", d, err)
	}
	if r.Mode() != ModePrimary || !slices.Equal(log.get(), []string{ModeDegraded, ModePrimary}) {
		t.Errorf("mode=%s, OnMode calls %v; want back to primary", r.Mode(), log.get())
	}
	r.WaitWriteBack()
	if got := primary.addedUnits("g/open"); got != 0 {
		t.Errorf("failed write-back recorded %d units", got)
	}
	// outage takes the primary down, runs during, and brings it back.
	outage := func(during func()) {
		down.Store(true)
		spend(closed) // notices the outage
		during()
		down.Store(false)
		clk.Add(time.Second)
		spend(closed) // notices the return
		r.WaitWriteBack()
	}
	// Another outage and return: now the copy succeeds, with every unit
	// spent locally in this window (the 3 of the first outage; the local
	// limit refuses more).
	primary.mu.Lock()
	primary.addErr = nil
	primary.mu.Unlock()
	outage(func() {
		if d, err := spend(open); d != 0 || err != nil {
			t.Errorf("open spend in the second outage: denied=%d err=%v, want refused locally (limit 3 reached)", d, err)
		}
	})
	if got, want := primary.addedUnits("g/open"), int64(3); got != want {
		t.Errorf("written back %d units of the open item, want %d", got, want)
	}
	if got := primary.addedUnits("g/closed"); got != 0 {
		t.Errorf("written back %d units of the fail-closed item, want 0", got)
	}
	// Nothing is written twice.
	outage(func() {})
	if got, want := primary.addedUnits("g/open"), int64(3); got != want {
		t.Errorf("after a third return: written back %d units, want still %d", got, want)
	}

	calls = primary.calls.Load()
	spend(open)
	if primary.calls.Load() != calls+1 {
		t.Errorf("fail-open item did not go to the recovered primary")
	}

	// Other errors are the caller's, not a failure of the shared store.
	boom := errors.New("boom")
	primary.spend = func(context.Context, string, []Item, []int64) (int, error) { return -1, boom }
	if _, err := spend(open); err != boom || r.Mode() != ModePrimary {
		t.Errorf("other error: err=%v mode=%s, want boom and primary", err, r.Mode())
	}
}

// tripStore is a primary that says whether each spend made a round trip,
// as Leased does: next is the outcome of the next spend.
type tripStore struct {
	calls atomic.Int64
	next  trip
}

func (f *tripStore) Spend(ctx context.Context, group string, items []Item, used []int64) (int, error) {
	d, _, err := f.spendTrip(ctx, group, items, used)
	return d, err
}

func (f *tripStore) spendTrip(context.Context, string, []Item, []int64) (int, trip, error) {
	f.calls.Add(1)
	switch f.next {
	case tripFailed:
		return -1, tripFailed, fmt.Errorf("%w: redis lease: i/o timeout", ErrUnavailable)
	case tripNone:
		return -1, tripNone, nil // from a local lease
	}
	return -1, tripOK, nil
}

// TestResilientHysteresis: the mode follows round trips to the primary
// only, changes to degraded after FailAfter failures in a row, and back
// after one successful round trip.
func TestResilientHysteresis(t *testing.T) {
	const (
		ok   = tripOK
		fail = tripFailed
		none = tripNone
	)
	type step struct {
		advance   time.Duration // before the spend
		next      trip          // the primary's outcome, if called
		called    bool          // whether the spend reached the primary
		wantModes []string      // OnMode calls so far
	}
	D, P := ModeDegraded, ModePrimary
	tests := []struct {
		name  string
		steps []step
	}{
		{"failures with successes between them change nothing", []step{
			{0, fail, true, nil}, {0, ok, true, nil}, {0, fail, true, nil}, {0, fail, true, nil},
			{0, ok, true, nil}, {0, fail, true, nil}, {0, none, true, nil}, {0, fail, true, nil},
		}},
		{"three failed round trips in a row degrade", []step{
			{0, fail, true, nil}, {0, fail, true, nil}, {0, fail, true, []string{D}},
			// Until RetryEvery passes, the primary is left alone.
			{0, ok, false, []string{D}}, {0, ok, false, []string{D}},
		}},
		{"local answers between failures neither count nor reset", []step{
			{0, fail, true, nil}, {0, none, true, nil}, {0, fail, true, nil}, {0, none, true, nil},
			{0, fail, true, []string{D}},
		}},
		{"a lease answer while degraded is no proof that redis is back", []step{
			{0, fail, true, nil}, {0, fail, true, nil}, {0, fail, true, []string{D}},
			{time.Second, none, true, []string{D}},
			// The try decided nothing: the next request tries again.
			{0, none, true, []string{D}},
			{0, fail, true, []string{D}},
			{0, ok, false, []string{D}},
			{time.Second, ok, true, []string{D, P}},
		}},
		{"one successful round trip restores, and the count starts over", []step{
			{0, fail, true, nil}, {0, fail, true, nil}, {0, fail, true, []string{D}},
			{time.Second, ok, true, []string{D, P}},
			{0, fail, true, []string{D, P}}, {0, fail, true, []string{D, P}},
			{0, fail, true, []string{D, P, D}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
			primary := &tripStore{}
			var log modeLog
			r := NewResilient(primary, nil, ResilientOptions{RetryEvery: time.Second, OnMode: log.record, Now: clk.Now})
			items := []Item{{Key: "k", Cost: 1, Limit: 10, Reset: clk.Now().Add(time.Hour)}}
			for i, st := range tt.steps {
				clk.Add(st.advance)
				primary.next = st.next
				before := primary.calls.Load()
				r.Spend(context.Background(), "g", items, make([]int64, 1))
				if got := primary.calls.Load() != before; got != st.called {
					t.Errorf("step %d: primary called = %v, want %v", i, got, st.called)
				}
				if got := log.get(); !slices.Equal(got, st.wantModes) {
					t.Fatalf("step %d: OnMode calls %v, want %v", i, got, st.wantModes)
				}
			}
		})
	}
}

// TestResilientModeFollowsRedis kills, restarts, pauses and resumes a real
// Redis under a Resilient store: OnMode reports each outage once and each
// return once, never a spend served from a lease as a return.
func TestResilientModeFollowsRedis(t *testing.T) {
	srv := redistest.Start(t)
	clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	leased := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("mode%d:", testPrefixes.Add(1)),
		LeaseSize: 10, Timeout: 200 * time.Millisecond, LateReply: 10 * time.Minute, Now: clk.Now})
	var log modeLog
	r := NewResilient(leased, NewMemory(clk.Now), ResilientOptions{RetryEvery: time.Second, OnMode: log.record, Now: clk.Now})
	reset := clk.Now().Add(time.Hour)
	spend := func(group string) error {
		_, err := r.Spend(context.Background(), group, []Item{{Key: "k", Cost: 1, Limit: 1000, Reset: reset}}, make([]int64, 1))
		return err
	}
	expect := func(when string, want ...string) {
		t.Helper()
		if got := log.get(); !slices.Equal(got, want) {
			t.Fatalf("%s: OnMode calls %v, want %v", when, got, want)
		}
	}
	// untilPrimary tries once per RetryEvery until a round trip succeeds:
	// on a loaded machine the first may time out.
	untilPrimary := func() {
		t.Helper()
		for i := 0; r.Mode() != ModePrimary; i++ {
			if i == 100 {
				t.Fatalf("still %s after %d tries", r.Mode(), i)
			}
			clk.Add(time.Second)
			spend("x")
		}
	}
	if err := spend("leased"); err != nil { // leases 10, spends 1
		t.Fatal(err)
	}
	D, P := ModeDegraded, ModePrimary

	srv.Kill()
	for i := range 2 {
		if err := spend("x"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("spend %d with redis dead: %v", i, err)
		}
	}
	expect("two failed round trips")
	for range 5 {
		if err := spend("leased"); err != nil {
			t.Fatalf("spend from a lease with redis dead: %v", err)
		}
	}
	expect("spends from a lease between failures")
	spend("x")
	expect("three failed round trips", D)
	clk.Add(time.Second)
	for range 3 {
		if err := spend("leased"); err != nil {
			t.Fatalf("spend from a lease with redis dead: %v", err)
		}
	}
	expect("tries answered from a lease", D)
	spend("x")
	expect("a try that failed", D)

	srv.Restart()
	untilPrimary()
	expect("redis restarted", D, P)

	srv.Pause()
	for i := range 3 {
		if err := spend(fmt.Sprint("paused", i)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("spend %d with redis paused: %v", i, err)
		}
	}
	srv.Resume()
	expect("three round trips timed out", D, P, D)
	waitLate(t, leased)
	untilPrimary()
	expect("redis resumed", D, P, D, P)
}

// TestRedisRestartDuringLoad kills Redis under load, checks each failure
// policy while it is down, restarts it and checks that the store comes back
// by itself, reporting the outage and the return once each. Timeouts are
// generous: only the outage may fail a round trip, however busy the machine.
func TestRedisRestartDuringLoad(t *testing.T) {
	const (
		leaseSize  = 10
		localLimit = 100
		retryEvery = 50 * time.Millisecond
	)
	srv := redistest.Start(t)
	leased := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("restart%d:", testPrefixes.Add(1)), LeaseSize: leaseSize, Timeout: 10 * time.Second})
	local := NewMemory(nil)
	var log modeLog
	r := NewResilient(leased, local, ResilientOptions{RetryEvery: retryEvery, OnMode: log.record})

	reset := time.Now().Add(time.Hour)
	// closed fails closed; open fails open with plenty of room; small fails
	// open and is spent only while Redis is down, so it is counted locally
	// from its first unit and must stop at its limit.
	closed := []Item{{Key: "closed", Cost: 1, Limit: 1 << 40, Reset: reset}}
	open := []Item{{Key: "open", Cost: 1, Limit: 1 << 40, Reset: reset, FailOpen: true}}
	small := []Item{{Key: "small", Cost: 1, Limit: localLimit, Reset: reset, FailOpen: true}}

	type tally struct{ ok, refused, unavailable, other atomic.Int64 }
	var phase atomic.Int32  // 0 healthy, 1 redis down, 2 redis restarting and back
	var tallies [3][3]tally // [phase][closed, open, small]
	// Each spend holds gate for reading from its phase load to its tally, and
	// the phase changes under the write lock, so a spend tallied as "down"
	// ran wholly between the end of the kill and the start of the restart.
	var gate sync.RWMutex
	setPhase := func(p int32, during func()) {
		gate.Lock()
		defer gate.Unlock()
		if during != nil {
			during()
		}
		phase.Store(p)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			used := make([]int64, 1)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				gate.RLock()
				p := phase.Load()
				kind, group, items := (w+i)%2, "acme", closed
				if kind == 1 {
					group, items = "beta", open
				}
				if p == 1 && i%4 == 3 {
					kind, group, items = 2, "gamma", small
				}
				d, err := r.Spend(context.Background(), group, items, used)
				tl := &tallies[p][kind]
				switch {
				case err == nil && d < 0:
					tl.ok.Add(1)
				case err == nil:
					tl.refused.Add(1)
				case errors.Is(err, ErrUnavailable):
					tl.unavailable.Add(1)
				default:
					tl.other.Add(1)
					t.Errorf("unexpected error: %v", err)
				}
				gate.RUnlock()
				time.Sleep(20 * time.Microsecond)
			}
		}()
	}
	// waitFor waits for cond; a minute is far past anything in play.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within a minute", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	waitFor("spends before the outage", func() bool {
		return tallies[0][0].ok.Load() > 0 && tallies[0][1].ok.Load() > 0
	})
	if r.Mode() != ModePrimary {
		t.Fatalf("mode %s before the outage", r.Mode())
	}
	st0 := leased.Stats()

	setPhase(1, srv.Kill)
	waitFor("degraded after kill", func() bool { return r.Mode() == ModeDegraded })
	waitFor("each policy applied while down", func() bool {
		d := &tallies[1]
		return d[0].unavailable.Load() > 0 && d[1].ok.Load() > 0 && d[2].refused.Load() > 0
	})
	if got := local.Used("beta", "open"); got == 0 {
		t.Errorf("fail-open item not counted locally while redis was down")
	}
	if got := local.Used("gamma", "small"); got != localLimit {
		t.Errorf("local count of the small fail-open item = %d, want its limit %d", got, localLimit)
	}

	setPhase(2, nil)
	srv.Restart()
	waitFor("back to primary after restart", func() bool { return r.Mode() == ModePrimary })
	st1 := leased.Stats()
	waitFor("spends after recovery", func() bool {
		return tallies[2][0].ok.Load() > 0 && tallies[2][1].ok.Load() > 0 && leased.Stats().RoundTrips > st1.RoundTrips
	})
	close(stop)
	wg.Wait()
	st2 := leased.Stats()

	down, back := &tallies[1], &tallies[2]
	t.Logf("down: closed ok=%d unavailable=%d; open ok=%d; small ok=%d refused=%d",
		down[0].ok.Load(), down[0].unavailable.Load(), down[1].ok.Load(), down[2].ok.Load(), down[2].refused.Load())
	t.Logf("back: closed ok=%d unavailable=%d; open ok=%d unavailable=%d",
		back[0].ok.Load(), back[0].unavailable.Load(), back[1].ok.Load(), back[1].unavailable.Load())
	t.Logf("stats before %+v, at recovery %+v, end %+v", st0, st1, st2)

	if down[0].unavailable.Load() == 0 {
		t.Error("no fail-closed spend failed while redis was down")
	}
	// Only units leased before the kill may still serve the closed item.
	if got := down[0].ok.Load(); got >= leaseSize {
		t.Errorf("%d fail-closed spends allowed while redis was down, want < lease size %d", got, leaseSize)
	}
	if down[1].unavailable.Load() != 0 || down[2].unavailable.Load() != 0 {
		t.Errorf("fail-open items failed: %d, %d", down[1].unavailable.Load(), down[2].unavailable.Load())
	}
	if got := down[2].ok.Load(); got != localLimit {
		t.Errorf("small fail-open item admitted %d while redis was down, want %d", got, localLimit)
	}
	if down[2].refused.Load() == 0 {
		t.Error("small fail-open item never refused locally")
	}
	if back[0].ok.Load() == 0 || back[1].ok.Load() == 0 {
		t.Errorf("no spends after recovery: closed %d, open %d", back[0].ok.Load(), back[1].ok.Load())
	}
	if st2.RoundTrips <= st1.RoundTrips {
		t.Errorf("no round trips after recovery (%d → %d)", st1.RoundTrips, st2.RoundTrips)
	}
	if got := redisUsed(t, srv.Client(), leased, "acme", "closed"); got == 0 {
		t.Error("the restarted redis holds no count for the closed item")
	}
	// What the fail-open items spent locally while Redis was down was
	// written back to the restarted Redis.
	r.WaitWriteBack()
	if got := redisUsed(t, srv.Client(), leased, "gamma", "small"); got != localLimit {
		t.Errorf("redis holds %d for the small item after recovery, want its %d local spends", got, localLimit)
	}
	if got, local := redisUsed(t, srv.Client(), leased, "beta", "open"), local.Used("beta", "open"); got < local {
		t.Errorf("redis holds %d for the open item after recovery, fewer than the %d spent locally", got, local)
	}
	if got, want := log.get(), []string{ModeDegraded, ModePrimary}; !slices.Equal(got, want) {
		t.Errorf("OnMode calls %v, want %v", got, want)
	}
}

// BenchmarkResilientSpend is the hot path through Resilient over Leased.
func BenchmarkResilientSpend(b *testing.B) {
	srv := redistest.Start(b)
	s := NewResilient(NewLeased(LeasedOptions{Client: srv.Client(), LeaseSize: 1 << 40}), NewMemory(nil), ResilientOptions{})
	items := []Item{{Key: Key("acme", "requests", time.Now()), Cost: 1, Limit: 1 << 62, Reset: time.Now().Add(time.Hour)}}
	used := make([]int64, 1)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Spend(ctx, "acme", items, used); err != nil {
			b.Fatal(err)
		}
	}
}

// A replica's quota store: counters shared through Redis, leased ten units at
// a time; quotas marked fail-open are counted per replica while Redis is
// down, the others answer 503 until it is back.
func ExampleNewResilient() {
	client := redis.NewClient(RedisOptions("127.0.0.1:6379"))
	defer client.Close()
	leased := NewLeased(LeasedOptions{Client: client, LeaseSize: 10})
	store := NewResilient(leased, NewMemory(nil), ResilientOptions{
		OnMode: func(mode string) { fmt.Println("quota store mode:", mode) },
	})

	now := time.Now()
	start, reset := period.Window(period.Month, now, time.Time{})
	items := []Item{{Key: Key("acme", "requests", start), Cost: 1, Limit: 10000, Reset: reset, FailOpen: true}}
	used := make([]int64, len(items))
	denied, err := store.Spend(context.Background(), "acme", items, used)
	switch {
	case err != nil:
		fmt.Println("503 entitlements_unavailable:", err)
	case denied >= 0:
		fmt.Println("402 quota_exhausted, used", used[denied])
	default:
		fmt.Println("allowed, used", used[0])
	}

	// On drain, hand unspent leases back.
	_ = leased.Release(context.Background())
}
