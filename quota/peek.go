package quota

import (
	"context"
	"fmt"
	"strconv"
)

// Peeker reads a counter's use without spending, for `tollgate check`.
// group and the Item's Key are borrowed, as for Spend (see Store).
type Peeker interface {
	Peek(ctx context.Context, group string, it Item) (int64, error)
}

var (
	_ Peeker = (*Memory)(nil)
	_ Peeker = (*Leased)(nil)
	_ Peeker = (*Resilient)(nil)
)

// Peek returns the counter's use in Redis: units spent or leased out to any
// replica in the current window.
func (s *Leased) Peek(ctx context.Context, group string, it Item) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := s.client.HMGet(ctx, s.redisKey(group, it.Key), "u", "r").Result()
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	num := func(x any) int64 {
		str, _ := x.(string)
		n, _ := strconv.ParseInt(str, 10, 64)
		return n
	}
	if len(v) != 2 || num(v[1]) <= s.now().UnixMilli() {
		return 0, nil // no counter, or its window ended
	}
	return num(v[0]), nil
}

// Peek reads the primary's counter, with what this replica still owes it
// (local spends and adjustments not yet copied), or the local count while
// degraded.
func (r *Resilient) Peek(ctx context.Context, group string, it Item) (int64, error) {
	if pk, ok := r.primary.(Peeker); ok && !r.degraded.Load() {
		u, err := pk.Peek(ctx, group, it)
		if err != nil {
			return u, err
		}
		return addFloor(u, r.j.owed(group, it.Key, it.Reset)), nil
	}
	if r.local == nil {
		return 0, errDegraded
	}
	return r.local.Peek(ctx, group, it)
}
