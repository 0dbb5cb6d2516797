package app

import (
	"context"
	"math"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/quota"
)

// QuotaState is one counter as a dry run found it (what `tollgate check`
// prints).
type QuotaState struct {
	Key     string `json:"counter"`
	Limit   int64  `json:"limit"`
	Used    int64  `json:"used"`
	Cost    int64  `json:"cost"`
	Fits    bool   `json:"fits"`
	ResetAt string `json:"resets_at"`
}

// DryQuotas answers Spend from the counters' current use in Store and
// spends nothing, recording each counter's state in State: `tollgate check`
// shows quota state without consuming any. Not safe for concurrent use.
type DryQuotas struct {
	Store authz.Quotas
	State []QuotaState
}

func (d *DryQuotas) Spend(ctx context.Context, group string, items []quota.Item, used []int64) (int, error) {
	denied := -1
	pk, _ := d.Store.(quota.Peeker)
	for i, it := range items {
		var u int64
		if pk != nil {
			var err error
			if u, err = pk.Peek(ctx, group, it); err != nil {
				return -1, err
			}
		}
		used[i] = u
		// The server spends items naming one counter as one summed cost
		// (saturating), so check that sum, not each item's own cost.
		fits := quota.Fits(u, counterCost(items, it.Key), it.Limit)
		if !fits && denied < 0 {
			denied = i
		}
		d.State = append(d.State, QuotaState{
			Key: strings.ReplaceAll(it.Key, "\x00", "/"), Limit: it.Limit, Used: u, Cost: it.Cost, Fits: fits,
			ResetAt: it.Reset.UTC().Format(time.RFC3339),
		})
	}
	return denied, nil
}

// counterCost is the summed cost of the items naming counter key, each
// negative cost counting as 0, saturating at math.MaxInt64: what a store
// spends on that counter for the request.
func counterCost(items []quota.Item, key string) int64 {
	var c int64
	for _, it := range items {
		if it.Key != key {
			continue
		}
		if c += max(it.Cost, 0); c < 0 {
			return math.MaxInt64
		}
	}
	return c
}
