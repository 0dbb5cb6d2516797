package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// topUpStore is a store that settles and takes top-ups.
type topUpStore interface {
	adjustStore
	TopUpper
}

func TestFitsBelowZero(t *testing.T) {
	const maxI, minI = math.MaxInt64, math.MinInt64
	cases := []struct {
		name              string
		used, cost, limit int64
		want              bool
	}{
		{"a top-up adds room", -5, 10, 5, true},
		{"one past the balance and the top-up", -5, 11, 5, false},
		{"a zero balance, topped up", -3, 3, 0, true},
		{"a zero balance, topped up, one past", -3, 4, 0, false},
		{"the lowest use and the largest cost", minI, maxI, -1, true},
		{"the lowest use and the largest cost, one past", minI, maxI, -2, false},
		{"the largest cost on a huge limit", -1, maxI, maxI, true},
		{"cost 0 under a negative limit", -3, 0, -4, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Fits(c.used, c.cost, c.limit); got != c.want {
				t.Errorf("Fits(%d, %d, %d) = %v, want %v", c.used, c.cost, c.limit, got, c.want)
			}
		})
	}
}

func TestAdjustTopped(t *testing.T) {
	const maxI, minI = math.MaxInt64, math.MinInt64
	cases := []struct{ used, delta, topped, want int64 }{
		{5, -3, 0, 2}, {5, -8, 0, 0}, // without top-ups: addFloor
		{-90, -7, 100, -97},     // a release after a top-up gives back
		{-90, -1000, 100, -100}, // never below what was bought
		{-90, 5, 100, -85},      // an overage
		{minI, -1, maxI, minI},  // already below the floor: stays
		{minI, maxI, maxI, -1},  // saturated, then raised
		{maxI, 1, 0, maxI},      // saturates up
		{-5, minI, 10, -10},     // the smallest delta
		{-5, minI, maxI, -maxI}, // floored at −topped, never wrapped
		{3, -2, 10, 1},          // above 0 after a top-up and spends
		{0, 0, 0, 0},
	}
	for _, c := range cases {
		if got := adjustTopped(c.used, c.delta, c.topped); got != c.want {
			t.Errorf("adjustTopped(%d, %d, %d) = %d, want %d", c.used, c.delta, c.topped, got, c.want)
		}
	}
}

// TestTopUp is the contract every store keeps: a top-up lowers the use by
// what was bought, spends then admit the balance plus that, releases give
// back reservations made from it but never more, and windows are kept.
// Leased reports Spend's and Adjust's use floored at 0 (its estimate may
// run below u), so there a negative want is compared as 0; TopUp and Peek
// report the counter as it is.
func TestTopUp(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	const hour = time.Hour
	type step struct {
		op      byte // 's' spend, 't' top-up, 'a' adjust
		advance time.Duration
		n       int64 // cost, units or delta
		limit   int64
		reset   time.Duration
		denied  int
		used    int64
		err     error
	}
	sp := func(limit, cost int64, denied int, used int64) step {
		return step{op: 's', n: cost, limit: limit, reset: hour, denied: denied, used: used}
	}
	top := func(n, used int64) step { return step{op: 't', n: n, reset: hour, used: used} }
	adj := func(delta, used int64) step { return step{op: 'a', n: delta, reset: hour, used: used} }
	cases := []struct {
		name  string
		steps []step
	}{
		{"a top-up admits the balance and the units bought", []step{
			sp(5, 5, -1, 5), sp(5, 1, 0, 5), top(10, -5), sp(5, 10, -1, 5), sp(5, 1, 0, 5),
		}},
		{"a zero balance admits what was bought, a cost above the balance too", []step{
			sp(0, 1, 0, 0), top(10, -10), sp(0, 7, -1, -3), sp(0, 4, 0, -3), sp(0, 3, -1, 0), sp(0, 1, 0, 0),
		}},
		{"top-ups add up", []step{
			top(2, -2), top(3, -5), sp(1, 6, -1, 1), sp(1, 1, 0, 1),
		}},
		{"a release gives back what was reserved from bought units, never more", []step{
			top(100, -100), sp(0, 10, -1, -90), adj(-7, -97), adj(-1000, -100), adj(math.MinInt64, -100),
			sp(0, 100, -1, 0), sp(0, 1, 0, 0),
		}},
		{"a release after spends past the top-up stops at what was bought", []step{
			sp(10, 10, -1, 10), top(5, 5), sp(10, 5, -1, 10), adj(-12, -2), adj(-4, -5), sp(10, 15, -1, 10), sp(10, 1, 0, 10),
		}},
		{"an overage spends bought units", []step{
			top(10, -10), sp(0, 4, -1, -6), adj(3, -3), sp(0, 3, -1, 0), sp(0, 1, 0, 0),
		}},
		{"a counter whose window ended starts over with the top-up", []step{
			{op: 's', n: 5, limit: 5, reset: time.Minute, denied: -1, used: 5},
			{op: 't', advance: time.Minute, n: 4, reset: 2 * time.Minute, used: -4},
			{op: 's', n: 9, limit: 5, reset: 2 * time.Minute, denied: -1, used: 5},
			{op: 's', n: 1, limit: 5, reset: 2 * time.Minute, denied: 0, used: 5},
		}},
		{"a live counter keeps its own window end", []step{
			sp(5, 5, -1, 5),
			{op: 't', n: 3, reset: 2 * hour, used: 2},
			{op: 's', advance: hour, n: 5, limit: 5, reset: 2 * hour, denied: -1, used: 5},
		}},
		{"a window that has ended takes nothing", []step{
			{op: 't', n: 5, reset: 0, err: ErrWindowEnded},
			{op: 't', n: 5, reset: -hour, err: ErrWindowEnded},
			sp(5, 5, -1, 5), sp(5, 1, 0, 5),
			{op: 't', advance: hour, n: 5, reset: hour, err: ErrWindowEnded},
		}},
		{"only a positive top-up is taken", []step{
			{op: 't', n: 0, reset: hour, err: errTopUpAmount},
			{op: 't', n: -5, reset: hour, err: errTopUpAmount},
			{op: 't', n: math.MinInt64, reset: hour, err: errTopUpAmount},
			sp(5, 5, -1, 5), sp(5, 1, 0, 5),
		}},
	}
	for _, v := range adjustVariants(t) {
		t.Run(v.name, func(t *testing.T) {
			memory := v.top == math.MaxInt64
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					clk := &testClock{t: t0}
					s := v.make(t, clk.Now).(topUpStore)
					ctx := context.Background()
					var peekWant int64 // the counter as it is
					for i, st := range tc.steps {
						clk.Add(st.advance)
						want := st.used
						if st.op != 't' && !memory {
							want = max(want, 0)
						}
						it := Item{Key: "k", Cost: st.n, Limit: st.limit, Reset: t0.Add(st.reset)}
						var (
							got    int64
							denied = -1
							err    error
						)
						switch st.op {
						case 's':
							used := make([]int64, 1)
							denied, err = s.Spend(ctx, "g", []Item{it}, used)
							got = used[0]
						case 't':
							got, err = s.TopUp(ctx, "g", "k", st.n, it.Reset)
						case 'a':
							got, err = s.Adjust(ctx, "g", "k", st.n, it.Reset)
						}
						if st.err != nil {
							if !errors.Is(err, st.err) || got != 0 {
								t.Fatalf("step %d: %c(%d) = %d, %v; want 0, %v", i, st.op, st.n, got, err, st.err)
							}
							continue
						}
						if st.op != 's' {
							st.denied = -1
						}
						if err != nil || denied != st.denied || got != want {
							t.Fatalf("step %d: %c(%d) = %d (denied %d), %v; want %d (denied %d)", i, st.op, st.n, got, denied, err, want, st.denied)
						}
						peekWant = st.used
						if !v.exactPeek {
							continue
						}
						if got, err := s.Peek(ctx, "g", it); err != nil || got != peekWant {
							t.Errorf("step %d: Peek = %d, %v; want %d", i, got, err, peekWant)
						}
					}
				})
			}
		})
	}
}

// TestTopUpOverflow: every sequence of three extreme top-ups and
// adjustments (after a spend of the whole limit) leaves a counter within
// the store's bounds, never wrapped. Memory is exact within int64; Redis
// computes in doubles, so Leased is exact within 2^53, saturates at
// ∓(2^63 − 1024), and is near the model in between.
func TestTopUpOverflow(t *testing.T) {
	type op struct {
		topUp bool
		n     int64
	}
	ops := []op{
		{true, math.MaxInt64}, {true, 1}, {true, 1 << 53}, {true, math.MaxInt64 - 1},
		{false, math.MinInt64}, {false, math.MaxInt64}, {false, -1}, {false, 1}, {false, -(1 << 53)},
	}
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(time.Hour)
	for _, v := range adjustVariants(t) {
		t.Run(v.name, func(t *testing.T) {
			memory := v.top == math.MaxInt64
			lo, hi := -v.top, v.top
			if memory {
				lo = math.MinInt64
			}
			s := v.make(t, func() time.Time { return t0 }).(topUpStore)
			ctx := context.Background()
			n := 0
			for _, a := range ops {
				for _, b := range ops {
					for _, c := range ops {
						if n++; !memory && n%3 != 0 {
							continue // Redis: a third of the sequences is enough
						}
						seq := []op{a, b, c}
						key := fmt.Sprint("k", n)
						if d, err := s.Spend(ctx, "g", []Item{{Key: key, Cost: 10, Limit: 10, Reset: reset}}, make([]int64, 1)); d != -1 || err != nil {
							t.Fatalf("spend: %d %v", d, err)
						}
						used, topped, exact := int64(10), int64(0), true
						for _, o := range seq {
							var got int64
							var err error
							if o.topUp {
								used = max(addSigned(used, -o.n), lo)
								topped = min(addSat(topped, o.n), hi)
								got, err = s.TopUp(ctx, "g", key, o.n, reset)
							} else {
								used = min(max(adjustTopped(used, o.n, topped), lo), hi)
								got, err = s.Adjust(ctx, "g", key, o.n, reset)
							}
							if err != nil {
								t.Fatalf("%v: %v: %v", seq, o, err)
							}
							exact = exact && o.n <= 1<<53 && o.n >= -(1<<53) && topped <= 1<<53 && used <= 1<<53 && used >= -(1<<53)
							want := used
							if !o.topUp && !memory {
								want = max(want, 0) // Leased's Adjust reports its estimate floored at 0
							}
							switch {
							case got < lo || got > hi:
								t.Fatalf("%v: %v = %d, outside [%d, %d]", seq, o, got, lo, hi)
							case memory || exact || used == lo || used == hi:
								if got != want {
									t.Fatalf("%v: %v = %d, want %d", seq, o, got, want)
								}
							case math.Abs(float64(got)-float64(want)) > 1<<14:
								t.Fatalf("%v: %v = %d, want about %d", seq, o, got, want)
							}
						}
					}
				}
			}
		})
	}
}

// drainLeased spends cost on each replica in turn, one round per Recheck
// (so that every refusal is Redis's answer, not one cached before a
// top-up), until a round where both refuse. It returns what they admitted.
func drainLeased(t *testing.T, clk *testClock, rs []*Leased, item Item) int64 {
	t.Helper()
	var admitted int64
	for round := 0; ; round++ {
		if round == 10000 {
			t.Fatal("still admitting after 10,000 rounds")
		}
		refused := 0
		for _, r := range rs {
			d, err := r.Spend(context.Background(), "g", []Item{item}, make([]int64, 1))
			if err != nil {
				t.Fatal(err)
			}
			if d >= 0 {
				refused++
			} else {
				admitted += item.Cost
			}
		}
		if refused == len(rs) {
			return admitted
		}
		clk.Add(DefaultRecheck)
	}
}

// TestLeasedTopUpReplicas: two replicas on one Redis, each leasing units
// against limit − u. After a top-up of n on either, together they admit
// exactly the balance + n, never more, whatever each held or had cached
// as spent; at a cost above 1, within the documented bound. Handed back,
// Redis holds exactly what was spent less the top-up.
func TestLeasedTopUpReplicas(t *testing.T) {
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(24 * time.Hour)
	cases := []struct {
		name          string
		balance, n    int64
		lease         int64
		before        int64 // units spent (on replica 0) before the top-up
		toppedOn      int   // the replica that tops up
		cost          int64 // of the spends after it
		releaseBefore bool  // replica 0 hands its leases back right after the top-up
	}{
		{"top-up on a fresh counter", 25, 37, 10, 0, 0, 1, false},
		{"top-up after the balance is spent, on the replica that cached the refusal", 25, 37, 10, 25, 0, 1, false},
		{"top-up after the balance is spent, on the other replica", 25, 37, 10, 25, 1, 1, false},
		{"top-up half-way, leases held", 40, 13, 10, 17, 1, 1, false},
		{"exact leases", 8, 5, 1, 3, 0, 1, false},
		{"a zero balance, a cost above it, on a replica that never saw the counter", 0, 50, 10, 0, 0, 20, false},
		{"costs larger than a lease", 10, 100, 10, 4, 1, 15, false},
		{"a replica drains after the top-up, its leases below 0", 0, 50, 10, 0, 0, 1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := &testClock{t: t0}
			prefix := fmt.Sprintf("topup%d:", testPrefixes.Add(1))
			rs := make([]*Leased, 2)
			for i := range rs {
				rs[i] = NewLeased(LeasedOptions{Client: c, Prefix: prefix, LeaseSize: tc.lease, Timeout: time.Minute, Now: clk.Now})
			}
			ctx := context.Background()
			item := func(cost int64) Item { return Item{Key: "k", Cost: cost, Limit: tc.balance, Reset: reset} }
			for i := range tc.before {
				if d, err := rs[0].Spend(ctx, "g", []Item{item(1)}, make([]int64, 1)); d != -1 || err != nil {
					t.Fatalf("spend %d before the top-up: %d %v", i, d, err)
				}
			}
			if tc.before == tc.balance {
				// Cache the refusal on replica 0, and on 1 if it saw it.
				for _, r := range rs {
					if d, _ := r.Spend(ctx, "g", []Item{item(1)}, make([]int64, 1)); d != 0 {
						t.Fatalf("spend past the balance admitted")
					}
				}
			}
			if _, err := rs[tc.toppedOn].TopUp(ctx, "g", "k", tc.n, reset); err != nil {
				t.Fatal(err)
			}
			if tc.releaseBefore {
				if d, err := rs[0].Spend(ctx, "g", []Item{item(1)}, make([]int64, 1)); d != -1 || err != nil {
					t.Fatalf("spend after the top-up: %d %v", d, err)
				}
				tc.before++
				if err := rs[0].Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			// The replica that tops up sees the units at once, a cost above
			// the balance included.
			if tc.cost <= tc.n {
				if d, err := rs[tc.toppedOn].Spend(ctx, "g", []Item{item(tc.cost)}, make([]int64, 1)); d != -1 || err != nil {
					t.Fatalf("first spend of %d after the top-up, on the replica that topped up: %d %v", tc.cost, d, err)
				}
				tc.before += tc.cost
			}
			clk.Add(DefaultRecheck)
			atCost := drainLeased(t, clk, rs, item(tc.cost))
			left := tc.balance + tc.n - tc.before - atCost
			if bound := (tc.cost - 1) + (tc.lease - 1); left < 0 || left > bound {
				t.Fatalf("at cost %d: %d left unadmitted, want within [0, %d]", tc.cost, left, bound)
			}
			clk.Add(DefaultRecheck)
			ones := drainLeased(t, clk, rs, item(1))
			if got, want := tc.before+atCost+ones, tc.balance+tc.n; got != want {
				t.Errorf("admitted %d in all, want the balance %d + the top-up %d", got, tc.balance, tc.n)
			}
			for _, r := range rs {
				if err := r.Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if got := redisUsed(t, c, rs[0], "g", "k"); got != tc.balance {
				t.Errorf("redis counter after release %d, want spent − topped up = %d", got, tc.balance)
			}
		})
	}
}

// TestTopUpConcurrent: top-ups and spends race on every store; in the end
// the stores admitted exactly the balance plus every top-up, never more.
func TestTopUpConcurrent(t *testing.T) {
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(24 * time.Hour)
	const (
		balance  = 30
		toppers  = 3
		topUps   = 20 // each
		units    = 7  // each top-up
		spenders = 4
		attempts = 150 // each: more than the balance and all top-ups, so that spends run out while top-ups come
	)
	leased := func(size int64) func(clk *testClock) []Store {
		return func(clk *testClock) []Store {
			prefix := fmt.Sprintf("topconc%d:", testPrefixes.Add(1))
			var out []Store
			for range 2 {
				out = append(out, NewLeased(LeasedOptions{Client: c, Prefix: prefix, LeaseSize: size, Timeout: time.Minute, Now: clk.Now}))
			}
			return out
		}
	}
	cases := []struct {
		name     string
		replicas func(clk *testClock) []Store
	}{
		{"memory", func(clk *testClock) []Store { return []Store{NewMemory(clk.Now)} }},
		{"leased lease=1, two replicas", leased(1)},
		{"leased lease=10, two replicas", leased(10)},
		{"resilient over leased lease=10, two replicas", func(clk *testClock) []Store {
			var out []Store
			for _, s := range leased(10)(clk) {
				out = append(out, NewResilient(s, NewMemory(clk.Now), ResilientOptions{Now: clk.Now}))
			}
			return out
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := &testClock{t: t0}
			rs := tc.replicas(clk)
			ctx := context.Background()
			item := Item{Key: "k", Cost: 1, Limit: balance, Reset: reset}
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				admitted int64
				errs     []error
			)
			fail := func(err error) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			for i := range toppers {
				wg.Go(func() {
					for range topUps {
						if _, err := rs[i%len(rs)].(TopUpper).TopUp(ctx, "g", "k", units, reset); err != nil {
							fail(err)
						}
					}
				})
			}
			for i := range spenders {
				wg.Go(func() {
					for j := range attempts {
						d, err := rs[i%len(rs)].Spend(ctx, "g", []Item{item}, make([]int64, 1))
						if err != nil {
							fail(err)
						} else if d < 0 {
							mu.Lock()
							admitted++
							mu.Unlock()
						}
						if j%10 == 0 {
							clk.Add(DefaultRecheck / 4)
						}
					}
				})
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Fatal(errs[0])
			}
			// Drain what is left, each refusal Redis's answer.
			for round := 0; ; round++ {
				if round == 10000 {
					t.Fatal("still admitting after 10,000 rounds")
				}
				clk.Add(DefaultRecheck)
				refused := 0
				for _, r := range rs {
					d, err := r.Spend(ctx, "g", []Item{item}, make([]int64, 1))
					if err != nil {
						t.Fatal(err)
					}
					if d >= 0 {
						refused++
					} else {
						admitted++
					}
				}
				if refused == len(rs) {
					break
				}
			}
			if want := int64(balance + toppers*topUps*units); admitted != want {
				t.Errorf("admitted %d, want the balance %d + every top-up %d", admitted, balance, toppers*topUps*units)
			}
		})
	}
}

// TestLeasedTopUpInRedis checks what TopUp leaves in Redis: the counter it
// makes expires with its window, an id is applied once, and a window that
// ended makes nothing, even past the client's own check.
func TestLeasedTopUpInRedis(t *testing.T) {
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	reset := t0.Add(time.Hour)
	ctx := context.Background()
	newStore := func() *Leased {
		return NewLeased(LeasedOptions{Client: c, Prefix: fmt.Sprintf("topredis%d:", testPrefixes.Add(1)), LeaseSize: 10, Timeout: time.Minute,
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

	t.Run("a top-up makes the counter, expiring with its window", func(t *testing.T) {
		s := newStore()
		if got, err := s.TopUp(ctx, "g", "k", 7, reset); got != -7 || err != nil {
			t.Fatalf("TopUp = %d, %v; want -7", got, err)
		}
		ttl, err := c.PTTL(ctx, s.redisKey("g", "k")).Result()
		if want := reset.Sub(t0) + defaultSlack; err != nil || ttl <= want-time.Minute || ttl > want {
			t.Errorf("PTTL = %v, %v; want about %v (the window, plus the slack)", ttl, err, want)
		}
		if got := redisUsed(t, c, s, "g", "k"); got != -7 {
			t.Errorf("u = %d, want -7", got)
		}
	})

	t.Run("a counter lingering after its window starts over", func(t *testing.T) {
		// Within the expiry slack: r has passed, the key is still there,
		// with a top-up of its own window. The next window is started by
		// a top-up (which makes the counter anew) or by a lease (which
		// keeps the fields): either way, releases stop at the new
		// window's top-ups, not the old one's.
		cases := []struct {
			name  string
			start func(s *Leased) error
			floor int64
		}{
			{"by a top-up", func(s *Leased) error { _, err := s.TopUp(ctx, "g", "k", 3, reset); return err }, -3},
			{"by a spend", func(s *Leased) error {
				_, err := s.Spend(ctx, "g", []Item{{Key: "k", Cost: 4, Limit: 10, Reset: reset}}, make([]int64, 1))
				return err
			}, 0},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				s := newStore()
				if err := c.HSet(ctx, s.redisKey("g", "k"), "u", -50, "r", t0.UnixMilli(), "t", 50, "tr", t0.UnixMilli(), "p:old", 1).Err(); err != nil {
					t.Fatal(err)
				}
				if err := tc.start(s); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Adjust(ctx, "g", "k", -100, reset); err != nil {
					t.Fatal(err)
				}
				if got := redisUsed(t, c, s, "g", "k"); got != tc.floor {
					t.Errorf("u = %d after a large release, want %d (the floor of this window)", got, tc.floor)
				}
			})
		}
	})

	t.Run("an id is applied once", func(t *testing.T) {
		s := newStore()
		op := topUpOp{group: "g", key: "k", n: 5, reset: reset, id: "once"}
		for range 3 {
			if _, err := s.applyTopUps(ctx, []topUpOp{op}, 0); err != nil {
				t.Fatal(err)
			}
		}
		other := op
		other.id = "twice"
		res, err := s.applyTopUps(ctx, []topUpOp{op, other}, 0)
		if err != nil || len(res) != 2 || res[1].used != -10 {
			t.Fatalf("applyTopUps = %+v, %v; want the second at -10", res, err)
		}
		if got := redisUsed(t, c, s, "g", "k"); got != -10 {
			t.Errorf("u = %d, want -10: each id once", got)
		}
	})

	t.Run("a window that ended makes nothing", func(t *testing.T) {
		s := newStore()
		if got, err := s.TopUp(ctx, "g", "ended", 5, t0); !errors.Is(err, ErrWindowEnded) || got != 0 || exists(s, "ended") {
			t.Errorf("TopUp on a window ending now: %d, %v, exists %v", got, err, exists(s, "ended"))
		}
		// The script's own guard, for a queued top-up whose window ended
		// on the way.
		res, err := s.applyTopUps(ctx, []topUpOp{{group: "g", key: "ended", n: 5, reset: t0, id: "x"}}, 0)
		if err != nil || !res[0].ended || exists(s, "ended") {
			t.Errorf("applyTopUps on a window ending now: %+v, %v, exists %v", res, err, exists(s, "ended"))
		}
	})

	t.Run("redis not answering is unavailable, a caller gone is not", func(t *testing.T) {
		s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("topredis%d:", testPrefixes.Add(1)),
			Timeout: 100 * time.Millisecond})
		reset := time.Now().Add(time.Hour)
		for i := 0; ; i++ {
			if _, err := s.TopUp(ctx, "g", "k", 1, reset); err == nil {
				break
			} else if i == 10 {
				t.Fatalf("warm-up: %v", err)
			}
		}
		srv.Pause()
		_, err := s.TopUp(ctx, "g", "k", 1, reset)
		srv.Resume()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("TopUp with redis paused: %v, want ErrUnavailable", err)
		}
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.TopUp(canceled, "g", "k", 1, reset); !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
			t.Errorf("TopUp with a canceled context: %v, want context.Canceled, not ErrUnavailable", err)
		}
	})
}

// TestResilientTopUpRedisDown: a top-up made while Redis does not answer
// is not lost: it is queued and reaches the counter exactly once when Redis
// answers again, even when the first send did reach it; one whose window
// ended meanwhile is dropped and counted.
func TestResilientTopUpRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	setup := func(clk *testClock, timeout time.Duration) (*Leased, *Resilient) {
		s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("topdown%d:", testPrefixes.Add(1)),
			LeaseSize: 1, Timeout: timeout, LateReply: 10 * time.Minute, Now: clk.Now})
		return s, NewResilient(s, NewMemory(clk.Now), ResilientOptions{RetryEvery: time.Second, FailAfter: 1, Now: clk.Now})
	}
	spend := func(r *Resilient, key string, cost, limit int64, reset time.Time) error {
		d, err := r.Spend(ctx, "g", []Item{{Key: key, Cost: cost, Limit: limit, Reset: reset}}, make([]int64, 1))
		if err == nil && d >= 0 {
			err = errRefused
		}
		return err
	}
	// untilRoundTrip spends until a round trip succeeds (one try per
	// RetryEvery): the next successful one copies what is queued.
	untilRoundTrip := func(r *Resilient, clk *testClock, reset time.Time) {
		t.Helper()
		for i := 0; ; i++ {
			if i == 100 {
				t.Fatalf("still %s after %d tries", r.Mode(), i)
			}
			clk.Add(time.Second)
			if spend(r, fmt.Sprint("probe", i), 1, 1000, reset) == nil && r.Mode() == ModePrimary {
				return
			}
		}
	}
	c := srv.Client()

	t.Run("a reply lost to a timeout is applied once", func(t *testing.T) {
		clk := &testClock{t: time.Now()}
		reset := clk.Now().Add(time.Hour)
		s, r := setup(clk, time.Second)
		for i := 0; spend(r, "warm", 1, 1000, reset) != nil; i++ {
			if i == 10 {
				t.Fatal("no round trip succeeded")
			}
		}
		// Load the script, so that the call the pause stalls is the
		// script itself (EVALSHA), not a lookup that fails.
		if _, err := r.TopUp(ctx, "g", "warm", 1, reset); err != nil {
			t.Fatal(err)
		}
		srv.Pause()
		got, err := r.TopUp(ctx, "g", "k", 40, reset)
		srv.Resume()
		if err != nil || got != 0 {
			t.Fatalf("TopUp with redis paused: %d, %v; want 0, nil (queued)", got, err)
		}
		if ops, units := r.PendingTopUps(); ops != 1 || units != 40 {
			t.Fatalf("pending %d top-ups of %d units, want 1 of 40", ops, units)
		}
		// The script was sent before the wait ran out: Redis runs it now.
		for deadline := time.Now().Add(time.Minute); redisUsed(t, c, s, "g", "k") != -40; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("redis never ran the top-up sent while it was paused: u = %d", redisUsed(t, c, s, "g", "k"))
			}
		}
		// The next round trip copies the queue: the same id, skipped.
		if err := spend(r, "x", 1, 1000, reset); err != nil {
			t.Fatal(err)
		}
		r.WaitWriteBack()
		if got := redisUsed(t, c, s, "g", "k"); got != -40 {
			t.Errorf("u = %d after the top-up was sent again, want -40 (applied once)", got)
		}
		if ops, _ := r.PendingTopUps(); ops != 0 {
			t.Errorf("%d top-ups still pending", ops)
		}
	})

	t.Run("made while redis is down, copied when it answers", func(t *testing.T) {
		clk := &testClock{t: time.Now()}
		reset := clk.Now().Add(time.Hour)
		s, r := setup(clk, 2*time.Second)
		const balance, n = 5, 30
		if err := spend(r, "k", 2, balance, reset); err != nil {
			t.Fatal(err)
		}
		srv.Kill()
		if err := spend(r, "k", 1, balance, reset); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("spend with redis down: %v, want ErrUnavailable", err)
		}
		if got, err := r.TopUp(ctx, "g", "k", n, reset); err != nil || got != 0 {
			t.Fatalf("TopUp with redis down: %d, %v; want 0, nil (queued)", got, err)
		}
		if got, err := r.TopUp(ctx, "g", "k", 0, reset); !errors.Is(err, errTopUpAmount) || got != 0 {
			t.Errorf("TopUp(0) with redis down: %d, %v", got, err)
		}
		if ops, units := r.PendingTopUps(); ops != 1 || units != n {
			t.Fatalf("pending %d top-ups of %d units, want 1 of %d", ops, units, n)
		}
		// Restarted without persistence: the spend before the outage is
		// lost with Redis's data, the top-up is not.
		srv.Restart()
		untilRoundTrip(r, clk, reset)
		r.WaitWriteBack()
		if got := redisUsed(t, c, s, "g", "k"); got != -n {
			t.Fatalf("u = %d after the copy, want %d", got, -n)
		}
		var admitted int64
		for {
			err := spend(r, "k", 1, balance, reset)
			if errors.Is(err, errRefused) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			admitted++
		}
		if admitted != balance+n {
			t.Errorf("admitted %d after the return, want the balance %d + the top-up %d", admitted, balance, n)
		}
		if ops, _ := r.PendingTopUps(); ops != 0 || r.DroppedTopUps() != 0 {
			t.Errorf("pending %d, dropped %d; want none", ops, r.DroppedTopUps())
		}
	})

	t.Run("a window that ends before redis answers drops the top-up, counted", func(t *testing.T) {
		clk := &testClock{t: time.Now()}
		s, r := setup(clk, 2*time.Second)
		reset := clk.Now().Add(time.Minute)
		if err := spend(r, "warm", 1, 1000, clk.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		srv.Kill()
		if _, err := r.TopUp(ctx, "g", "k", 9, reset); err != nil {
			t.Fatal(err)
		}
		clk.Add(2 * time.Minute)
		if got, err := r.TopUp(ctx, "g", "k", 9, reset); !errors.Is(err, ErrWindowEnded) || got != 0 {
			t.Errorf("TopUp on an ended window with redis down: %d, %v; want ErrWindowEnded", got, err)
		}
		srv.Restart()
		untilRoundTrip(r, clk, clk.Now().Add(time.Hour))
		r.WaitWriteBack()
		if got := r.DroppedTopUps(); got != 9 {
			t.Errorf("dropped %d units, want 9", got)
		}
		if n, err := c.Exists(ctx, s.redisKey("g", "k")).Result(); err != nil || n != 0 {
			t.Errorf("the ended window's counter exists (%d, %v)", n, err)
		}
	})
}

var errRefused = errors.New("refused")
