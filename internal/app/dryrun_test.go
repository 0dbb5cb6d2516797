package app

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/quota"
)

// peekStore is a quota store whose counters stand at fixed uses.
type peekStore map[string]int64

func (p peekStore) Spend(context.Context, string, []quota.Item, []int64) (int, error) {
	panic("tollgate check must not spend")
}

func (p peekStore) Peek(_ context.Context, _ string, it quota.Item) (int64, error) {
	return p[it.Key], nil
}

// TestDryQuotasSumsCounterCosts: tollgate check answers as the server
// would: items naming one counter are checked on their summed cost.
func TestDryQuotasSumsCounterCosts(t *testing.T) {
	reset := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	item := func(key string, cost, limit int64) quota.Item {
		return quota.Item{Key: key, Cost: cost, Limit: limit, Reset: reset}
	}
	store := peekStore{"a": 5, "b": 1, "over": 7}
	cases := []struct {
		name       string
		items      []quota.Item
		wantDenied int
		wantFits   []bool
	}{
		{"one item fits", []quota.Item{item("a", 3, 10)}, -1, []bool{true}},
		{"distinct counters each fit", []quota.Item{item("a", 3, 10), item("b", 3, 10)}, -1, []bool{true, true}},
		{"one counter twice: the sum does not fit", []quota.Item{item("a", 3, 10), item("a", 3, 10)}, 0, []bool{false, false}},
		{"one counter twice, another between", []quota.Item{item("b", 1, 10), item("a", 3, 10), item("a", 3, 10)}, 1, []bool{true, false, false}},
		{"huge costs on one counter never wrap", []quota.Item{item("a", math.MaxInt64, 10), item("a", math.MaxInt64, 10)}, 0, []bool{false, false}},
		{"negative costs count as 0", []quota.Item{item("a", 5, 10), item("a", -3, 10)}, -1, []bool{true, true}},
		{"cost 0 on a counter over its limit", []quota.Item{item("over", 0, 5)}, 0, []bool{false}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &DryQuotas{Store: store}
			denied, err := d.Spend(context.Background(), "g", c.items, make([]int64, len(c.items)))
			if err != nil {
				t.Fatal(err)
			}
			var fits []bool
			for _, s := range d.State {
				fits = append(fits, s.Fits)
			}
			if got, want := fmt.Sprint(denied, fits), fmt.Sprint(c.wantDenied, c.wantFits); got != want {
				t.Errorf("denied, fits = %s, want %s", got, want)
			}
		})
	}
}
