package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// luaTop is where a counter in Redis saturates: the largest double below
// 2^63 (see adjustScript).
const luaTop = 9223372036854774784

// adjustStore is a store that settles.
type adjustStore interface {
	Store
	Adjuster
	Peeker
}

// adjustVariant is one store the adjustment table runs on.
type adjustVariant struct {
	name string
	// exactPeek: Peek reports what the store's own Spend and Adjust report
	// (Leased with leases above 1 reports units held by replicas too).
	exactPeek bool
	top       int64 // where a counter saturates
	make      func(t *testing.T, now func() time.Time) adjustStore
}

// adjustVariants are Memory, Leased (exact and with leases) and Resilient
// over Leased, all on one Redis.
func adjustVariants(t *testing.T) []adjustVariant {
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	leased := func(size int64, now func() time.Time) *Leased {
		return NewLeased(LeasedOptions{Client: c, Prefix: fmt.Sprintf("adj%d:", testPrefixes.Add(1)), LeaseSize: size, Timeout: time.Minute, Now: now})
	}
	return []adjustVariant{
		{"memory", true, math.MaxInt64, func(t *testing.T, now func() time.Time) adjustStore { return NewMemory(now) }},
		{"leased lease=1", true, luaTop, func(t *testing.T, now func() time.Time) adjustStore { return leased(1, now) }},
		{"leased lease=10", false, luaTop, func(t *testing.T, now func() time.Time) adjustStore { return leased(10, now) }},
		{"resilient lease=1", true, luaTop, func(t *testing.T, now func() time.Time) adjustStore {
			return NewResilient(leased(1, now), NewMemory(now), ResilientOptions{Now: now})
		}},
		{"resilient lease=10", false, luaTop, func(t *testing.T, now func() time.Time) adjustStore {
			return NewResilient(leased(10, now), NewMemory(now), ResilientOptions{Now: now})
		}},
	}
}

// sat in a want stands for the store's saturated counter.
const sat = math.MinInt64

func TestAdjust(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	type step struct {
		advance time.Duration
		spend   bool  // else adjust
		n       int64 // cost or delta
		reset   time.Duration
		denied  int   // of a spend
		used    int64 // Spend's used[0], or Adjust's answer
	}
	const hour = time.Hour
	sp := func(cost int64, denied int, used int64) step {
		return step{spend: true, n: cost, reset: hour, denied: denied, used: used}
	}
	adj := func(delta, used int64) step { return step{n: delta, reset: hour, used: used} }
	cases := []struct {
		name  string
		steps []step
	}{
		{"a release makes room again", []step{
			sp(5, -1, 5), adj(-3, 2), sp(8, -1, 10), sp(1, 0, 10),
		}},
		{"an overage goes past the limit and later spends are refused", []step{
			sp(8, -1, 8), adj(5, 13), sp(1, 0, 13), sp(0, 0, 13),
			adj(-4, 9), sp(1, -1, 10), sp(1, 0, 10),
		}},
		{"a counter never goes below 0", []step{
			sp(10, -1, 10), adj(-15, 0), adj(math.MinInt64, 0), sp(10, -1, 10), sp(1, 0, 10),
		}},
		{"a release does not bring back a window that ended", []step{
			{spend: true, n: 5, reset: time.Minute, denied: -1, used: 5},
			{advance: time.Minute, n: -3, reset: time.Minute, used: 0},
			{n: 2, reset: time.Minute, used: 0},
			// The same counter named with a later window: still gone.
			{n: -3, reset: 2 * time.Minute, used: 0},
			{spend: true, n: 4, reset: 2 * time.Minute, denied: -1, used: 4},
		}},
		{"a release of a counter never spent makes nothing", []step{
			adj(-3, 0), sp(10, -1, 10), sp(1, 0, 10),
		}},
		{"an overage makes the counter", []step{
			adj(7, 7), sp(3, -1, 10), sp(1, 0, 10),
		}},
		{"zero changes nothing", []step{
			sp(4, -1, 4), adj(0, 4), sp(6, -1, 10),
		}},
		{"huge deltas saturate, never wrap", []step{
			sp(5, -1, 5), adj(math.MaxInt64, sat), adj(math.MaxInt64, sat), adj(1, sat), sp(0, 0, sat),
			adj(math.MinInt64, 0), sp(10, -1, 10), adj(math.MaxInt64-1, sat), adj(-math.MaxInt64, 0), sp(10, -1, 10),
		}},
	}
	for _, v := range adjustVariants(t) {
		t.Run(v.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					clk := &testClock{t: t0}
					s := v.make(t, clk.Now)
					ctx := context.Background()
					for i, st := range tc.steps {
						clk.Add(st.advance)
						want := st.used
						if want == sat {
							want = v.top
						}
						it := Item{Key: "k", Cost: st.n, Limit: 10, Reset: t0.Add(st.reset)}
						if st.spend {
							used := make([]int64, 1)
							d, err := s.Spend(ctx, "g", []Item{it}, used)
							if err != nil || d != st.denied || used[0] != want {
								t.Fatalf("step %d: Spend(%d) = %d, used %d, %v; want %d, used %d", i, st.n, d, used[0], err, st.denied, want)
							}
						} else {
							got, err := s.Adjust(ctx, "g", "k", st.n, it.Reset)
							if err != nil || got != want {
								t.Fatalf("step %d: Adjust(%d) = %d, %v; want %d", i, st.n, got, err, want)
							}
						}
						if !v.exactPeek {
							continue
						}
						if got, err := s.Peek(ctx, "g", it); err != nil || got != want {
							t.Errorf("step %d: Peek = %d, %v; want %d", i, got, err, want)
						}
					}
				})
			}
		})
	}
}

// TestMemoryAdjustMakesNothing: a release neither makes a counter nor
// keeps an expired one, and no adjustment outlives its window.
func TestMemoryAdjustMakesNothing(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	clk := &testClock{t: t0}
	m := NewMemory(clk.Now)
	held := func() int {
		n := 0
		for i := range m.shards {
			n += len(m.shards[i].counters)
		}
		return n
	}
	ctx := context.Background()
	m.Adjust(ctx, "g", "never", -5, t0.Add(time.Hour))
	m.Adjust(ctx, "g", "never", 0, t0.Add(time.Hour))
	m.Adjust(ctx, "g", "ended", 5, t0) // its window ends now
	if got := held(); got != 0 {
		t.Errorf("counters held after releases and an ended window = %d, want 0", got)
	}
	if got, _ := m.Adjust(ctx, "g", "k", 5, t0.Add(time.Hour)); got != 5 || held() != 1 {
		t.Errorf("an overage: used %d, %d counters; want 5, 1", got, held())
	}
	// A counter whose window ended between two sweeps (once a second) is
	// gone, even named with a later window.
	m.Spend(ctx, "g", []Item{{Key: "short", Cost: 5, Limit: 10, Reset: t0.Add(time.Minute)}}, make([]int64, 1))
	clk.Add(time.Minute - 500*time.Millisecond)
	m.Spend(ctx, "g", []Item{{Key: "sweep", Cost: 1, Limit: 10, Reset: t0.Add(time.Hour)}}, make([]int64, 1))
	clk.Add(500 * time.Millisecond)
	if got, _ := m.Adjust(ctx, "g", "short", -3, t0.Add(2*time.Minute)); got != 0 {
		t.Errorf("release of a counter whose window ended, unswept: used %d, want 0", got)
	}
}

// TestAdjustOverflow: every sequence of three extreme deltas (after a
// spend of the whole limit) leaves a counter within [0, top], never wrapped. Memory is
// exact (saturating at MaxInt64, floored at 0); Redis computes in doubles,
// so Leased is exact within 2^53 and saturates at the same places.
func TestAdjustOverflow(t *testing.T) {
	deltas := []int64{math.MaxInt64, math.MinInt64, math.MaxInt64 - 1, math.MinInt64 + 1, -1, 1, 0, 1 << 53, -(1 << 53)}
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(time.Hour)
	for _, v := range adjustVariants(t) {
		t.Run(v.name, func(t *testing.T) {
			s := v.make(t, func() time.Time { return t0 })
			ctx := context.Background()
			n := 0
			for _, a := range deltas {
				for _, b := range deltas {
					for _, c := range deltas {
						if n++; v.top != math.MaxInt64 && n%3 != 0 {
							continue // Redis: a third of the sequences is enough
						}
						key := fmt.Sprint("k", n)
						// The whole limit, so that no replica holds units
						// (releasing more than was spent is not settling).
						if d, err := s.Spend(ctx, "g", []Item{{Key: key, Cost: 10, Limit: 10, Reset: reset}}, make([]int64, 1)); d != -1 || err != nil {
							t.Fatalf("spend: %d %v", d, err)
						}
						model, exact := int64(10), true
						for _, delta := range []int64{a, b, c} {
							// The model saturates where the store does.
							model = min(addFloor(model, delta), v.top)
							exact = exact && delta <= 1<<53 && delta >= -(1<<53) && model <= 1<<53
							got, err := s.Adjust(ctx, "g", key, delta, reset)
							if err != nil {
								t.Fatalf("%v: Adjust(%d): %v", []int64{a, b, c}, delta, err)
							}
							switch {
							case got < 0 || got > v.top:
								t.Fatalf("%v: Adjust(%d) = %d, outside [0, %d]", []int64{a, b, c}, delta, got, v.top)
							case v.top == math.MaxInt64 || exact || model == 0 || model == v.top:
								if got != model {
									t.Fatalf("%v: Adjust(%d) = %d, want %d", []int64{a, b, c}, delta, got, model)
								}
							case (got > 1<<62) != (model > 1<<62):
								t.Fatalf("%v: Adjust(%d) = %d, want about %d", []int64{a, b, c}, delta, got, model)
							}
						}
					}
				}
			}
		})
	}
}

// settleRun is a run of reserve-then-settle requests with random actual
// costs, in the style of an LLM route: the estimate is max_tokens, the
// actual cost anything from nothing to half again as much.
type settleRun struct {
	rnd *rand.Rand
}

func (r settleRun) next() (estimate, actual int64) {
	estimate = 20 + r.rnd.Int64N(100)
	return estimate, r.rnd.Int64N(estimate * 3 / 2)
}

// TestAdjustSumsToActuals is the settlement property: whatever the
// sequence of reservations, refusals and settlements, the counter ends at
// the sum of what the admitted requests actually cost. Memory is exact at
// every step; Leased (two replicas on one Redis, each request reserved on
// one and settled on either) is exact once their leases are handed back.
func TestAdjustSumsToActuals(t *testing.T) {
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(time.Hour)
	const limit = 3000
	type open struct{ estimate, actual int64 }
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			clk := &testClock{t: t0}
			prefix := fmt.Sprintf("sum%d:", testPrefixes.Add(1))
			replicas := []*Leased{
				NewLeased(LeasedOptions{Client: c, Prefix: prefix, LeaseSize: 10, Timeout: time.Minute, Now: clk.Now}),
				NewLeased(LeasedOptions{Client: c, Prefix: prefix, LeaseSize: 10, Timeout: time.Minute, Now: clk.Now}),
			}
			mem := NewMemory(clk.Now)
			stores := []adjustStore{mem, replicas[0], replicas[1]}
			run := settleRun{rand.New(rand.NewPCG(seed, 14))}
			ctx := context.Background()
			item := func(cost int64) []Item { return []Item{{Key: "k", Cost: cost, Limit: limit, Reset: reset}} }
			// Each store has its own open reservations and sum of actuals;
			// the two replicas share theirs.
			var memOpen, sharedOpen []open
			var memSum, sharedSum int64
			settleOne := func(s adjustStore, opens *[]open, sum *int64) {
				i := run.rnd.IntN(len(*opens))
				o := (*opens)[i]
				*opens = append((*opens)[:i], (*opens)[i+1:]...)
				if _, err := s.Adjust(ctx, "g", "k", o.actual-o.estimate, reset); err != nil {
					t.Fatal(err)
				}
				*sum += o.actual
			}
			for range 400 {
				e, a := run.next()
				if d, err := mem.Spend(ctx, "g", item(e), make([]int64, 1)); err != nil {
					t.Fatal(err)
				} else if d < 0 {
					memOpen = append(memOpen, open{e, a})
				}
				if d, err := stores[1+run.rnd.IntN(2)].Spend(ctx, "g", item(e), make([]int64, 1)); err != nil {
					t.Fatal(err)
				} else if d < 0 {
					sharedOpen = append(sharedOpen, open{e, a})
				}
				// Settle some of what is open, in any order, on either replica.
				for len(memOpen) > 0 && run.rnd.IntN(3) > 0 {
					settleOne(mem, &memOpen, &memSum)
				}
				for len(sharedOpen) > 0 && run.rnd.IntN(3) > 0 {
					settleOne(stores[1+run.rnd.IntN(2)], &sharedOpen, &sharedSum)
				}
				var reserved int64
				for _, o := range memOpen {
					reserved += o.estimate
				}
				if got, want := mem.Used("g", "k"), memSum+reserved; got != want {
					t.Fatalf("memory counter %d, want settled %d + reserved %d", got, memSum, reserved)
				}
				clk.Add(time.Second)
			}
			for len(memOpen) > 0 {
				settleOne(mem, &memOpen, &memSum)
			}
			for len(sharedOpen) > 0 {
				settleOne(stores[1+run.rnd.IntN(2)], &sharedOpen, &sharedSum)
			}
			if got := mem.Used("g", "k"); got != memSum {
				t.Errorf("memory counter %d, want the sum of actual costs %d", got, memSum)
			}
			for _, r := range replicas {
				if err := r.Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if got := redisUsed(t, c, replicas[0], "g", "k"); got != sharedSum {
				t.Errorf("redis counter after release %d, want the sum of actual costs %d", got, sharedSum)
			}
			if memSum < limit/2 || sharedSum < limit/2 {
				t.Errorf("sums %d and %d: the run did not get near the limit %d", memSum, sharedSum, limit)
			}
		})
	}
}

// TestLeasedSettleBound: one replica reserves, and the settlement reaches
// either the same replica or another one. Over a run with random actual
// costs, every refusal comes within the documented bound of the limit, on
// what was finally charged:
//
//	N − (c − 1) − (R − 1)(L − 1) ≤ charged ≤ N + overages,
//
// and, the leases handed back, Redis holds exactly the actual costs.
// Settled on the same replica, its own refusals follow the release at
// once; settled on another, a replica's cached refusal holds for Recheck,
// which passes here between requests.
func TestLeasedSettleBound(t *testing.T) {
	const (
		limit     = 5000
		leaseSize = 10
		replicas  = 2
	)
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(24 * time.Hour)
	cases := []struct {
		name    string
		settler int           // the replica that settles (0 reserves)
		tick    time.Duration // between requests
	}{
		{"settled where reserved, no time passing", 0, 0},
		{"settled on the other replica", 1, DefaultRecheck},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for seed := range uint64(4) {
				clk := &testClock{t: t0}
				prefix := fmt.Sprintf("bound%d:", testPrefixes.Add(1))
				rs := make([]*Leased, replicas)
				for i := range rs {
					rs[i] = NewLeased(LeasedOptions{Client: c, Prefix: prefix, LeaseSize: leaseSize, Timeout: time.Minute, Now: clk.Now})
				}
				run := settleRun{rand.New(rand.NewPCG(seed, 99))}
				ctx := context.Background()
				var charged, overages int64
				refusals := 0
				for range 300 {
					e, a := run.next()
					d, err := rs[0].Spend(ctx, "g", []Item{{Key: "k", Cost: e, Limit: limit, Reset: reset}}, make([]int64, 1))
					if err != nil {
						t.Fatal(err)
					}
					if d >= 0 {
						refusals++
						if floor := int64(limit - (e - 1) - (replicas-1)*(leaseSize-1)); charged < floor {
							t.Fatalf("seed %d: refused a cost of %d with %d charged, below the floor %d", seed, e, charged, floor)
						}
					} else {
						if _, err := rs[tc.settler].Adjust(ctx, "g", "k", a-e, reset); err != nil {
							t.Fatal(err)
						}
						charged += a
						overages += max(a-e, 0)
						if charged > limit+overages {
							t.Fatalf("seed %d: charged %d, over the limit %d + overages %d", seed, charged, limit, overages)
						}
					}
					clk.Add(tc.tick)
				}
				if refusals == 0 {
					t.Fatalf("seed %d: nothing refused; the run did not reach the limit", seed)
				}
				for _, r := range rs {
					if err := r.Release(ctx); err != nil {
						t.Fatal(err)
					}
				}
				if got := redisUsed(t, c, rs[0], "g", "k"); got != charged {
					t.Errorf("seed %d: redis counter after release %d, want the actual costs %d", seed, got, charged)
				}
			}
		})
	}
}

// TestLeasedAdjustInRedis checks what Adjust leaves in Redis, and its errors.
func TestLeasedAdjustInRedis(t *testing.T) {
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(time.Hour)
	ctx := context.Background()
	newStore := func() *Leased {
		return NewLeased(LeasedOptions{Client: c, Prefix: fmt.Sprintf("inredis%d:", testPrefixes.Add(1)), LeaseSize: 10, Timeout: time.Minute,
			Now: func() time.Time { return t0 }})
	}
	exists := func(s *Leased, key string) bool {
		t.Helper()
		n, err := c.Exists(ctx, s.redisKey("g", key)).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}

	t.Run("a release makes no counter, even one redis lost", func(t *testing.T) {
		s := newStore()
		if got, err := s.Adjust(ctx, "g", "never", -3, reset); got != 0 || err != nil || exists(s, "never") {
			t.Errorf("release of a counter never spent: %d, %v, exists %v", got, err, exists(s, "never"))
		}
		if d, err := s.Spend(ctx, "g", []Item{{Key: "lost", Cost: 4, Limit: 100, Reset: reset}}, make([]int64, 1)); d != -1 || err != nil {
			t.Fatal(d, err)
		}
		if err := c.Del(ctx, s.redisKey("g", "lost")).Err(); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Adjust(ctx, "g", "lost", -3, reset); got != 0 || err != nil || exists(s, "lost") {
			t.Errorf("release of a counter redis lost: %d, %v, exists %v", got, err, exists(s, "lost"))
		}
	})

	t.Run("a credits counter settles with its requests' later resets", func(t *testing.T) {
		// Credits without a period end reset at now + a horizon, so every
		// request names a later reset than the one the counter was made with.
		s := newStore()
		first := reset.Add(123 * time.Millisecond)
		if d, err := s.Spend(ctx, "g", []Item{{Key: "credits", Cost: 10, Limit: 100, Reset: first}}, make([]int64, 1)); d != -1 || err != nil {
			t.Fatal(d, err)
		}
		tests := []struct {
			name  string
			reset time.Time
			delta int64
			want  int64
		}{
			{"its own reservation (whole seconds)", first.Truncate(time.Second), -3, 7},
			{"a later request's", first.Add(5 * time.Second), -2, 5},
			{"a counter's that expired before this one", first.Add(-time.Hour), -5, 5},
		}
		for _, tt := range tests {
			if _, err := s.Adjust(ctx, "g", "credits", tt.delta, tt.reset); err != nil {
				t.Fatal(err)
			}
			if got := redisUsed(t, c, s, "g", "credits"); got != tt.want {
				t.Errorf("%s: u = %d, want %d", tt.name, got, tt.want)
			}
		}
	})

	t.Run("an overage makes the counter, expiring with its window", func(t *testing.T) {
		s := newStore()
		if got, err := s.Adjust(ctx, "g", "k", 7, reset); got != 7 || err != nil {
			t.Fatalf("overage: %d, %v", got, err)
		}
		ttl, err := c.PTTL(ctx, s.redisKey("g", "k")).Result()
		if want := reset.Sub(t0) + defaultSlack; err != nil || ttl <= want-time.Minute || ttl > want {
			t.Errorf("PTTL = %v, %v; want about %v (the window, plus the slack)", ttl, err, want)
		}
		if got := redisUsed(t, c, s, "g", "k"); got != 7 {
			t.Errorf("u = %d, want 7", got)
		}
		// A further overage leaves the expiry alone.
		if err := c.PExpire(ctx, s.redisKey("g", "k"), time.Hour*5).Err(); err != nil {
			t.Fatal(err)
		}
		s.Adjust(ctx, "g", "k", 1, reset)
		if ttl, _ := c.PTTL(ctx, s.redisKey("g", "k")).Result(); ttl <= 4*time.Hour {
			t.Errorf("PTTL after a second overage = %v, want the 5 h it had", ttl)
		}
	})

	t.Run("a window that ended is not made again", func(t *testing.T) {
		s := newStore()
		for _, delta := range []int64{5, -5} {
			if got, err := s.Adjust(ctx, "g", "ended", delta, t0); got != 0 || err != nil || exists(s, "ended") {
				t.Errorf("Adjust(%d) on a window ending now: %d, %v, exists %v", delta, got, err, exists(s, "ended"))
			}
		}
		// The script's own guard, for copies whose window ended on the way.
		if _, err := s.applyDeltas(ctx, []Delta{{Group: "g", Key: "ended", N: 5, Reset: t0}}, 0); err != nil || exists(s, "ended") {
			t.Errorf("applyDeltas on a window ending now: %v, exists %v", err, exists(s, "ended"))
		}
	})

	t.Run("a counter of another window is left alone", func(t *testing.T) {
		s := newStore()
		other := reset.Add(time.Minute).UnixMilli()
		if err := c.HSet(ctx, s.redisKey("g", "k"), "u", 9, "r", other).Err(); err != nil {
			t.Fatal(err)
		}
		for _, delta := range []int64{-4, 4} {
			s.Adjust(ctx, "g", "k", delta, reset)
			if got := redisUsed(t, c, s, "g", "k"); got != 9 {
				t.Errorf("Adjust(%d) on another window's counter: u = %d, want 9", delta, got)
			}
		}
	})

	t.Run("a copy is applied once per writer and sequence", func(t *testing.T) {
		s := newStore()
		d := Delta{Group: "g", Key: "k", N: 5, Reset: reset, Writer: "w1", Seq: 3}
		for range 2 {
			if _, err := s.applyDeltas(ctx, []Delta{d}, 0); err != nil {
				t.Fatal(err)
			}
		}
		older := d
		older.Seq, older.N = 2, 100
		other := d
		other.Writer = "w2"
		s.applyDeltas(ctx, []Delta{older, other}, 0)
		if got := redisUsed(t, c, s, "g", "k"); got != 10 {
			t.Errorf("u = %d, want 10: w1's 5 once, w2's 5, w1's older copy skipped", got)
		}
		next := d
		next.Seq, next.N = 4, -7
		s.applyDeltas(ctx, []Delta{next}, 0)
		if got := redisUsed(t, c, s, "g", "k"); got != 3 {
			t.Errorf("u = %d, want 3 after w1's next copy", got)
		}
	})

	t.Run("redis not answering in time is unavailable, a caller gone is not", func(t *testing.T) {
		s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("inredis%d:", testPrefixes.Add(1)),
			Timeout: 100 * time.Millisecond})
		reset := time.Now().Add(time.Hour)
		// Open the connection the pause will stall (a busy machine may time
		// out a first try).
		for i := 0; ; i++ {
			if _, err := s.Adjust(ctx, "g", "k", 1, reset); err == nil {
				break
			} else if i == 10 {
				t.Fatalf("warm-up: %v", err)
			}
		}
		srv.Pause()
		_, err := s.Adjust(ctx, "g", "k", 1, reset)
		srv.Resume()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("Adjust with redis paused: %v, want ErrUnavailable", err)
		}
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Adjust(canceled, "g", "k", 1, reset); !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
			t.Errorf("Adjust with a canceled context: %v, want context.Canceled, not ErrUnavailable", err)
		}
	})
}

func TestAdjustArithmetic(t *testing.T) {
	const maxI, minI = math.MaxInt64, math.MinInt64
	floor := []struct{ used, delta, want int64 }{
		{5, 3, 8}, {5, -3, 2}, {5, -5, 0}, {5, -6, 0}, {5, minI, 0}, {0, minI, 0},
		{5, maxI, maxI}, {maxI, 1, maxI}, {maxI, minI, 0}, {maxI, -maxI, 0}, {maxI, -1, maxI - 1},
	}
	for _, c := range floor {
		if got := addFloor(c.used, c.delta); got != c.want {
			t.Errorf("addFloor(%d, %d) = %d, want %d", c.used, c.delta, got, c.want)
		}
	}
	signed := []struct{ a, b, want int64 }{
		{5, -8, -3}, {maxI, 1, maxI}, {maxI, maxI, maxI}, {minI, -1, minI}, {minI, minI, minI}, {maxI, minI, -1}, {-5, 5, 0},
	}
	for _, c := range signed {
		if got := addSigned(c.a, c.b); got != c.want {
			t.Errorf("addSigned(%d, %d) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
	// What OnWriteBack reports (a Prometheus counter): never negative.
	moved := []struct {
		ns   []int64
		want int64
	}{
		{[]int64{-5, 3}, 8}, {[]int64{minI}, maxI}, {[]int64{maxI, 1}, maxI}, {nil, 0},
	}
	for _, c := range moved {
		var ds []Delta
		for _, n := range c.ns {
			ds = append(ds, Delta{N: n})
		}
		if got := units(ds); got != c.want {
			t.Errorf("units(%v) = %d, want %d", c.ns, got, c.want)
		}
	}
}
