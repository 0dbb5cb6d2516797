package quota

import (
	"context"
	"hash/maphash"
	"strings"
	"sync"
	"time"
)

const memShards = 64

// Memory is a Store for one replica. Expired counters are dropped by a sweep
// that runs at most once a second, under the shard's own lock.
type Memory struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [memShards]memShard
}

type memShard struct {
	mu        sync.Mutex
	counters  map[string]*counter
	nextSweep time.Time
}

type counter struct {
	used   int64 // below 0 only after a top-up
	reset  time.Time
	topped int64 // units added by TopUp: releases stop at −topped (topup.go)
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty store; now defaults to time.Now.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	m := &Memory{now: now, seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].counters = map[string]*counter{}
	}
	return m
}

// maxItems is how many items a Spend looks up only once (on the stack);
// beyond it, counters are looked up again to apply the spend.
const maxItems = 8

// Spend implements Store.
func (m *Memory) Spend(_ context.Context, group string, items []Item, used []int64) (int, error) {
	sh := &m.shards[maphash.String(m.seed, group)%memShards]
	now := m.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.sweep(now)
	var found [maxItems]*counter // each item's live counter, nil if none
	denied := -1
	for i, it := range items {
		c := sh.counters[it.Key]
		if c != nil && !now.Before(c.reset) {
			c = nil // expired: the window starts over
		}
		if i < maxItems {
			found[i] = c
		}
		var u int64
		if c != nil {
			u = c.used
		}
		used[i] = u
		// Checked, never wrapped: a huge cost must not fit by overflowing.
		if denied < 0 && !Fits(u, keyCost(items, i), it.Limit) {
			denied = i
		}
	}
	if denied >= 0 {
		return denied, nil
	}
	for i, it := range items {
		var c *counter
		if i < maxItems {
			c = found[i]
		}
		if c == nil {
			// Not found above, or not remembered: look again, for a counter
			// an earlier item with the same key has just started.
			if c = sh.counters[it.Key]; c != nil && !now.Before(c.reset) {
				c = nil
			}
		}
		if c == nil {
			c = &counter{reset: it.Reset}
			// The map keeps its key: a copy, as the caller may reuse
			// it.Key's memory (see Store).
			sh.counters[strings.Clone(it.Key)] = c
		}
		// Every key's total fits its limits (checked above): no overflow.
		c.used += max(it.Cost, 0)
		used[i] = c.used
	}
	return -1, nil
}

// Peek returns an item's counter use without spending, for `tollgate check`.
func (m *Memory) Peek(_ context.Context, group string, it Item) (int64, error) {
	return m.Used(group, it.Key), nil
}

// Used returns a counter's use, for `tollgate check` and tests.
func (m *Memory) Used(group, key string) int64 {
	sh := &m.shards[maphash.String(m.seed, group)%memShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if c := sh.counters[key]; c != nil && m.now().Before(c.reset) {
		return c.used
	}
	return 0
}

func (sh *memShard) sweep(now time.Time) {
	if now.Before(sh.nextSweep) {
		return
	}
	sh.nextSweep = now.Add(time.Second)
	for k, c := range sh.counters {
		if !now.Before(c.reset) {
			delete(sh.counters, k)
		}
	}
}
