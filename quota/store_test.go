package quota

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testClock is a settable clock shared by a store and its test.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// storeFactory makes a fresh, empty store reading the given clock.
type storeFactory func(t *testing.T, now func() time.Time) Store

// testStoreBehaviour is the behaviour table every Store must pass.
func testStoreBehaviour(t *testing.T, newStore storeFactory) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	type spend struct {
		advance    time.Duration
		items      []Item
		wantDenied int
		wantUsed   []int64
	}
	// reset is relative to t0.
	item := func(key string, cost, limit int64, reset time.Duration) Item {
		return Item{Key: key, Cost: cost, Limit: limit, Reset: t0.Add(reset)}
	}
	tests := []struct {
		name   string
		spends []spend
	}{
		{"spends up to the limit, then refuses", []spend{
			{0, []Item{item("a", 3, 5, time.Hour)}, -1, []int64{3}},
			{0, []Item{item("a", 2, 5, time.Hour)}, -1, []int64{5}},
			{0, []Item{item("a", 1, 5, time.Hour)}, 0, []int64{5}},
		}},
		{"a refused spend consumes nothing", []spend{
			{0, []Item{item("a", 4, 5, time.Hour)}, -1, []int64{4}},
			{0, []Item{item("a", 2, 5, time.Hour)}, 0, []int64{4}},
			{0, []Item{item("a", 1, 5, time.Hour)}, -1, []int64{5}},
		}},
		{"all or nothing across items", []spend{
			{0, []Item{item("rate", 1, 10, time.Second), item("month", 1, 1, time.Hour)}, -1, []int64{1, 1}},
			{0, []Item{item("rate", 1, 10, time.Second), item("month", 1, 1, time.Hour)}, 1, []int64{1, 1}},
			{0, []Item{item("rate", 9, 10, time.Second)}, -1, []int64{10}},
		}},
		{"the first item that does not fit is reported", []spend{
			{0, []Item{item("x", 2, 1, time.Hour), item("y", 2, 1, time.Hour)}, 0, []int64{0, 0}},
		}},
		{"cost zero fits even when spent", []spend{
			{0, []Item{item("a", 5, 5, time.Hour)}, -1, []int64{5}},
			{0, []Item{item("a", 0, 5, time.Hour)}, -1, []int64{5}},
		}},
		{"cost zero is refused once the counter is over a lowered limit", []spend{
			{0, []Item{item("a", 5, 5, time.Hour)}, -1, []int64{5}},
			{0, []Item{item("a", 0, 3, time.Hour)}, 0, []int64{5}},
			{0, []Item{item("a", -1, 3, time.Hour)}, 0, []int64{5}},
			{0, []Item{item("b", 0, 3, time.Hour), item("a", 0, 3, time.Hour)}, 1, []int64{0, 5}},
			{0, []Item{item("a", 0, 5, time.Hour)}, -1, []int64{5}},
		}},
		{"cost above the limit never fits", []spend{
			{0, []Item{item("a", 6, 5, time.Hour)}, 0, []int64{0}},
		}},
		{"a huge cost is refused, never wrapped", []spend{
			{0, []Item{item("a", 2, 5, time.Hour)}, -1, []int64{2}},
			{0, []Item{item("a", math.MaxInt64, 5, time.Hour)}, 0, []int64{2}},
			{0, []Item{item("a", math.MaxInt64-1, 5, time.Hour)}, 0, []int64{2}},
			{0, []Item{item("a", 3, 5, time.Hour)}, -1, []int64{5}},
			{0, []Item{item("a", 1, 5, time.Hour)}, 0, []int64{5}},
			{0, []Item{item("a", math.MaxInt64, 5, time.Hour)}, 0, []int64{5}},
		}},
		{"a huge cost on an empty counter is refused", []spend{
			{0, []Item{item("a", math.MaxInt64, 5, time.Hour)}, 0, []int64{0}},
			{0, []Item{item("a", 5, 5, time.Hour)}, -1, []int64{5}},
		}},
		{"a negative cost counts as 0", []spend{
			{0, []Item{item("a", 5, 5, time.Hour)}, -1, []int64{5}},
			{0, []Item{item("a", -3, 5, time.Hour)}, -1, []int64{5}},
			{0, []Item{item("a", math.MinInt64, 5, time.Hour)}, -1, []int64{5}},
			{0, []Item{item("a", 1, 5, time.Hour)}, 0, []int64{5}},
		}},
		{"a negative limit admits nothing", []spend{
			{0, []Item{item("a", 1, -1, time.Hour)}, 0, []int64{0}},
			{0, []Item{item("a", 0, -1, time.Hour)}, 0, []int64{0}},
			{0, []Item{item("a", math.MaxInt64, math.MinInt64, time.Hour)}, 0, []int64{0}},
		}},
		{"one counter named twice in a spend is checked on the sum", []spend{
			{0, []Item{item("a", 3, 5, time.Hour), item("a", 3, 5, time.Hour)}, 0, []int64{0, 0}},
			{0, []Item{item("a", 1, 5, time.Hour), item("a", math.MaxInt64, 5, time.Hour)}, 0, []int64{0, 0}},
			{0, []Item{item("b", 1, 5, time.Hour), item("a", math.MaxInt64, 5, time.Hour), item("a", math.MaxInt64, 5, time.Hour)}, 1, []int64{0, 0, 0}},
			{0, []Item{item("a", 5, 5, time.Hour)}, -1, []int64{5}},
		}},
		{"the counter resets when its window ends", []spend{
			{0, []Item{item("a", 5, 5, time.Minute)}, -1, []int64{5}},
			{59 * time.Second, []Item{item("a", 1, 5, time.Minute)}, 0, []int64{5}},
			{time.Second, []Item{item("a", 1, 5, 2*time.Minute)}, -1, []int64{1}},
		}},
		{"counters are independent", []spend{
			{0, []Item{item("a", 5, 5, time.Hour)}, -1, []int64{5}},
			{0, []Item{item("b", 5, 5, time.Hour)}, -1, []int64{5}},
		}},
		{"a refusal by a later item leaves earlier counters as they stand", []spend{
			{0, []Item{item("a", 2, 10, time.Hour), item("b", 3, 3, time.Hour)}, -1, []int64{2, 3}},
			{0, []Item{item("a", 2, 10, time.Hour), item("b", 1, 3, time.Hour)}, 1, []int64{2, 3}},
			{0, []Item{item("a", 8, 10, time.Hour)}, -1, []int64{10}},
			{0, []Item{item("a", 1, 10, time.Hour)}, 0, []int64{10}},
		}},
		{"costs larger than a lease fill the counter exactly", []spend{
			{0, []Item{item("a", 15, 20, time.Hour)}, -1, []int64{15}},
			{0, []Item{item("a", 6, 20, time.Hour)}, 0, []int64{15}},
			{0, []Item{item("a", 5, 20, time.Hour)}, -1, []int64{20}},
			{0, []Item{item("a", 1, 20, time.Hour)}, 0, []int64{20}},
		}},
		{"an exhausted counter refuses until its reset, then counts from zero", []spend{
			{0, []Item{item("a", 3, 3, time.Minute)}, -1, []int64{3}},
			{time.Second, []Item{item("a", 1, 3, time.Minute)}, 0, []int64{3}},
			{time.Second, []Item{item("a", 1, 3, time.Minute)}, 0, []int64{3}},
			{time.Minute, []Item{item("a", 2, 3, 2*time.Minute)}, -1, []int64{2}},
			{0, []Item{item("a", 1, 3, 2*time.Minute)}, -1, []int64{3}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &testClock{t: t0}
			s := newStore(t, clk.Now)
			for i, sp := range tt.spends {
				clk.Add(sp.advance)
				used := make([]int64, len(sp.items))
				denied, err := s.Spend(context.Background(), "subject", sp.items, used)
				if err != nil {
					t.Fatalf("spend %d: %v", i, err)
				}
				if denied != sp.wantDenied || fmt.Sprint(used) != fmt.Sprint(sp.wantUsed) {
					t.Errorf("spend %d: denied=%d used=%v, want denied=%d used=%v", i, denied, used, sp.wantDenied, sp.wantUsed)
				}
			}
		})
	}

	t.Run("concurrent spends admit exactly the limit", func(t *testing.T) {
		clk := &testClock{t: t0}
		s := newStore(t, clk.Now)
		const limit = 500
		var admitted atomic.Int64
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				used := make([]int64, 1)
				for range 20 {
					d, err := s.Spend(context.Background(), "subject", []Item{item("shared", 1, limit, time.Hour)}, used)
					if err != nil {
						t.Error(err)
						return
					}
					if d < 0 {
						admitted.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if got := admitted.Load(); got != limit {
			t.Errorf("admitted %d, want %d", got, limit)
		}
	})
}

func TestMemoryStore(t *testing.T) {
	testStoreBehaviour(t, func(t *testing.T, now func() time.Time) Store { return NewMemory(now) })
}

func TestMemorySweepsExpired(t *testing.T) {
	clk := &testClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := NewMemory(clk.Now)
	used := make([]int64, 1)
	for i := range 1000 {
		m.Spend(context.Background(), "g", []Item{{Key: fmt.Sprint(i), Cost: 1, Limit: 1, Reset: clk.Now().Add(time.Second)}}, used)
	}
	clk.Add(2 * time.Second)
	m.Spend(context.Background(), "g", []Item{{Key: "new", Cost: 1, Limit: 1, Reset: clk.Now().Add(time.Second)}}, used)
	total := 0
	for i := range m.shards {
		total += len(m.shards[i].counters)
	}
	// The group's shard was swept; other shards hold nothing.
	if total != 1 {
		t.Errorf("counters held = %d, want 1 after the sweep", total)
	}
}

func BenchmarkMemorySpend(b *testing.B) {
	m := NewMemory(nil)
	items := []Item{{Key: Key("acme", "requests", time.Now()), Cost: 1, Limit: 1 << 62, Reset: time.Now().Add(time.Hour)}}
	used := make([]int64, 1)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		m.Spend(ctx, "acme", items, used)
	}
}
