package quota

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Adjuster changes a counter after a spend: settlement of a request whose
// actual cost differs from what its Check reserved.
type Adjuster interface {
	// Adjust adds delta (negative: a release) to the counter key of group,
	// whose window ends at reset, and returns its use after. A counter never
	// goes below 0, or below minus what was topped up (TopUpper). A
	// positive delta is added even past the limit (the
	// request has been served; the overage is recorded and later requests
	// are refused); the caller caps delta when the route says so. A counter
	// that no longer exists (its window ended, Redis lost it) is not created
	// by a negative delta; a positive delta creates it, expiring at reset.
	// group and key are borrowed, as for Spend (see Store).
	Adjust(ctx context.Context, group, key string, delta int64, reset time.Time) (used int64, err error)
}

// heldPayer is a primary that holds units locally (Leased's leases).
type heldPayer interface {
	payFromHeld(group, key string, reset time.Time, n int64) (took, used int64)
}

var (
	_ Adjuster = (*Memory)(nil)
	_ Adjuster = (*Leased)(nil)
	_ Adjuster = (*Resilient)(nil)
)

// addFloor is used + delta for used ≥ 0, floored at 0 and saturating at
// math.MaxInt64: checked, so that no delta wraps a counter.
func addFloor(used, delta int64) int64 {
	if delta >= 0 {
		return addSat(used, delta)
	}
	// used ≥ 0 > delta: the sum lies in [MinInt64, MaxInt64).
	return max(used+delta, 0)
}

// addSigned is a + b, saturating at math.MinInt64 and math.MaxInt64.
func addSigned(a, b int64) int64 {
	s := a + b
	switch {
	case b > 0 && s < a:
		return math.MaxInt64
	case b < 0 && s > a:
		return math.MinInt64
	}
	return s
}

// Adjust implements Adjuster. A window that has ended is left alone: its
// counter is gone or about to be.
func (m *Memory) Adjust(_ context.Context, group, key string, delta int64, reset time.Time) (int64, error) {
	used, _ := m.adjust(group, key, delta, reset, true)
	return used, nil
}

// adjust adds delta to key's live counter, floored at 0 and saturating, and
// returns its use after and whether it was found (or made). Only a positive
// delta with create set makes a counter that does not exist.
func (m *Memory) adjust(group, key string, delta int64, reset time.Time, create bool) (int64, bool) {
	now := m.now()
	if !now.Before(reset) {
		return 0, false
	}
	sh := &m.shards[maphash.String(m.seed, group)%memShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.sweep(now)
	c := sh.counters[key]
	if c != nil && !now.Before(c.reset) {
		c = nil // expired: a release must not bring it back
	}
	if c == nil {
		if delta <= 0 || !create {
			return 0, false
		}
		c = &counter{reset: reset}
		sh.counters[strings.Clone(key)] = c // the caller may reuse key (see Store)
	}
	c.used = adjustTopped(c.used, delta, c.topped)
	return c.used, true
}

// Adjust implements Adjuster with one round trip, which changes the counter
// in Redis, where every replica sees it at its next round trip.
//
// A release lowers u, the units handed out: they can be leased again by any
// replica. It is not given to this replica's local lease, for two reasons:
// a replica could then hold any number of released units that the others
// cannot lease (the admission bound counts on holdings below L), and units
// given to a lease after Release handed it back (a replica that drains
// while settlements still arrive) would be stranded. An overage is paid
// first from units this replica holds for the counter (they are counted in
// u already, so that costs no round trip), then raises u, past the limit
// if need be: later leases are then refused.
//
// A release larger than what requests spent on the counter (more than
// they reserved) is not a settlement: Redis floors u at 0, and units that
// replicas hold then count nowhere until Release.
//
// This replica's own knowledge of u (its cached refusals) follows the
// answer at once; other replicas learn of a release at their next round
// trip, at most Recheck after their last (see LeasedOptions.Recheck).
// The wait is bounded by Timeout. An error wraps ErrUnavailable (or is
// the caller's context.Canceled), and then the change may or may not have
// been made: Resilient makes adjustments exactly once across outages.
func (s *Leased) Adjust(ctx context.Context, group, key string, delta int64, reset time.Time) (int64, error) {
	if !s.now().Before(reset) {
		return 0, nil
	}
	if delta > 0 {
		took, used := s.payFromHeld(group, key, reset, delta)
		if delta -= took; delta == 0 {
			return used, nil
		}
	}
	used, err := s.applyDeltas(ctx, []Delta{{Group: group, Key: key, N: delta, Reset: reset}}, 0)
	if err != nil {
		return 0, err
	}
	return used[0], nil
}

// payFromHeld spends up to n units this replica holds for key's window,
// and returns how many and its estimate of the counter's use after.
func (s *Leased) payFromHeld(group, key string, reset time.Time, n int64) (took, used int64) {
	sh := &s.shards[maphash.String(s.seed, group)%leaseShards]
	g := sh.find(group)
	if g == nil {
		return 0, 0
	}
	defer g.refs.Add(-1)
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.live(key, s.now())
	if l == nil || l.reset.UnixMilli() != reset.UnixMilli() {
		return 0, 0
	}
	took = min(l.avail, max(n, 0))
	l.avail -= took
	return took, max(l.seen-l.avail, 0)
}

// applyDeltas adds each delta to its counter in Redis (adjustScript), in one
// round trip, waiting at most wait (Timeout if 0), and returns this
// replica's estimate of each counter's use after. A delta with a Writer is
// added at most once: a delta whose Seq is not above the last one applied
// for its Writer to that counter is skipped, so that a batch whose reply
// was lost can be sent again.
func (s *Leased) applyDeltas(ctx context.Context, ds []Delta, wait time.Duration) ([]int64, error) {
	if wait <= 0 {
		wait = s.timeout
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	now := s.now()
	args := func(d Delta) []any {
		a := []any{d.N, d.Reset.UnixMilli(), now.UnixMilli(), s.slack.Milliseconds()}
		if d.Writer != "" {
			a = append(a, "w:"+d.Writer, d.Seq)
		}
		return a
	}
	keys, argv := make([]string, len(ds)), make([][]any, len(ds))
	for i, d := range ds {
		keys[i], argv[i] = s.redisKey(d.Group, d.Key), args(d)
	}
	res, err := s.evalEach(ctx, parent, adjustScript, "adjust", keys, argv, 2)
	if err != nil {
		return nil, err
	}
	used := make([]int64, len(ds))
	for i, d := range ds {
		used[i] = s.noteAdjusted(d, res[i][1])
	}
	return used, nil
}

// evalEach runs script once per key (one round trip: alone, or pipelined)
// and checks that each run returned want numbers. An error wraps
// ErrUnavailable, or is the caller's (parent's) cancellation.
func (s *Leased) evalEach(ctx, parent context.Context, script *redis.Script, what string, keys []string, argv [][]any, want int) ([][]int64, error) {
	res := make([][]int64, len(keys))
	var err error
	if len(keys) == 1 {
		res[0], err = script.Run(ctx, s.client, keys[:1], argv[0]...).Int64Slice()
	} else {
		cmds := make([]*redis.Cmd, len(keys))
		_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range keys {
				cmds[i] = script.Eval(ctx, p, []string{k}, argv[i]...)
			}
			return nil
		})
		for i := 0; err == nil && i < len(cmds); i++ {
			res[i], err = cmds[i].Int64Slice()
		}
	}
	for i := 0; err == nil && i < len(res); i++ {
		if len(res[i]) != want {
			err = fmt.Errorf("%s script returned %d values, want %d", what, len(res[i]), want)
		}
	}
	if err != nil {
		if errors.Is(parent.Err(), context.Canceled) {
			return nil, fmt.Errorf("quota: redis %s: %w", what, parent.Err())
		}
		return nil, fmt.Errorf("%w: redis %s: %w", ErrUnavailable, what, err)
	}
	return res, nil
}

// noteAdjusted records u, d's counter in Redis right after d, in this
// replica's lease of the counter, and returns this replica's estimate of
// the counter's use (as Spend reports it). A round trip of this replica's
// may have seen u before or after this one, so seen moves only the way d
// moved u: after a release it is at most u (a refusal cached on the higher
// value would refuse units that are free), after an overage at least u.
func (s *Leased) noteAdjusted(d Delta, u int64) int64 {
	sh := &s.shards[maphash.String(s.seed, d.Group)%leaseShards]
	g := sh.find(d.Group)
	if g == nil {
		return u
	}
	defer g.refs.Add(-1)
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.live(d.Key, s.now())
	if l == nil || l.reset.UnixMilli() != d.Reset.UnixMilli() {
		return u
	}
	if d.N < 0 {
		l.seen = min(l.seen, u)
	} else {
		l.seen = max(l.seen, u)
	}
	return max(l.seen-l.avail, 0)
}

// find returns group's leases, counted as held, or nil if it has none.
func (sh *leaseShard) find(group string) *leaseGroup {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	g := sh.groups[group]
	if g != nil {
		g.refs.Add(1)
	}
	return g
}

// adjustScript adds a signed delta to a counter.
//
// KEYS[1]: the counter. ARGV: delta, reset_ms, now_ms, slack_ms, and
// optionally a writer field and its seq. A counter whose window is live
// (r > now) is changed only if it is the delta's window (r = reset). A
// counter that does not exist, or whose window ended, is made only by a
// positive delta whose window is live, expiring at reset + slack like a
// lease's. u stays within [0, 2^63 − 1024] (the largest double below 2^63,
// so that it reads back as an int64). With a writer field, the delta is
// skipped if the field already holds seq or more, and the field is set to
// seq when it is applied: the field lives and expires with the counter.
// Returns {applied (1 or 0), u after}.
var adjustScript = redis.NewScript(`
local d = tonumber(ARGV[1])
local reset = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local top = 9223372036854774784
local v = redis.call('HMGET', KEYS[1], 'u', 'r', 't', 'tr')
local r = tonumber(v[2])
local u = 0
local live = r and r > now
if live then
  u = tonumber(v[1]) or 0
  -- A live counter takes the adjustments of requests of its own life: a
  -- reservation's reset at or after the counter's own (in seconds: a
  -- reservation keeps whole seconds). A credits counter's reset moves
  -- with each request (now + a horizon), so a later one is the same
  -- counter; an earlier one is of a counter that expired since.
  if math.floor(reset / 1000) < math.floor(r / 1000) then return {0, u} end
else
  if d <= 0 or reset <= now then return {0, 0} end
  if v[2] then redis.call('DEL', KEYS[1]) end
end
if ARGV[5] then
  local w = tonumber(redis.call('HGET', KEYS[1], ARGV[5]))
  if w and w >= tonumber(ARGV[6]) then return {0, u} end
end
-- A release stops at minus what was topped up in this window (topUpScript).
local low = 0
if live and v[4] == v[2] then low = -(tonumber(v[3]) or 0) end
low = math.min(low, u)
u = u + d
if u < low then u = low elseif u > top then u = top end
redis.call('HSET', KEYS[1], 'u', string.format('%.0f', u), 'r', string.format('%.0f', reset))
if ARGV[5] then redis.call('HSET', KEYS[1], ARGV[5], ARGV[6]) end
if not live then
  local ttl = reset - now + tonumber(ARGV[4])
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))
end
return {1, u}
`)

// Adjust implements Adjuster, exactly once whatever the primary's state.
//
// Every adjustment goes into this replica's journal of changes for the
// primary (the one that already holds spends counted locally while the
// primary was down), and from there to the primary exactly once:
//
//   - In primary mode it is sent at once, and Adjust returns the primary's
//     answer. If another adjustment of the same counter is on its way, it
//     is sent right after that one, in the background.
//   - While degraded, or when the primary fails to answer, it stays in the
//     journal and is copied with the local spends when the primary answers
//     again (after a successful round trip). Adjust then returns nil, and
//     the use this replica counts locally.
//
// Each copy carries this replica's writer id and a sequence number per
// counter, and a counter is sent one batch at a time; the primary skips a
// batch it has already applied. So a reply lost to a timeout, a canceled
// caller or a broken connection is retried without counting the change
// twice, and changes are never lost while the replica runs (a replica that
// stops with changes not yet copied loses them, as it loses local spends).
// Only a Redis that loses its data can make a retried copy count again.
//
// An overage is paid first from units the Leased primary holds for the
// counter, as Leased.Adjust does, with or without Redis. Adjustments of
// counters that this replica spent locally (a fail-open quota while Redis
// was down) also change the local count, which decides local spends during
// the next outage of the window.
//
// A primary that is not a Leased store is asked directly, with no journal.
func (r *Resilient) Adjust(ctx context.Context, group, key string, delta int64, reset time.Time) (int64, error) {
	if r.applier == nil {
		if a, ok := r.primary.(Adjuster); ok {
			return a.Adjust(ctx, group, key, delta, reset)
		}
		return 0, errors.New("quota: the primary store cannot adjust counters")
	}
	if !r.now().Before(reset) {
		return 0, nil
	}
	var local int64
	if r.local != nil {
		local, _ = r.local.adjust(group, key, delta, reset, false)
	}
	if h, ok := r.primary.(heldPayer); ok && delta > 0 {
		took, used := h.payFromHeld(group, key, reset, delta)
		if delta -= took; delta == 0 {
			if r.degraded.Load() {
				return local, nil
			}
			return used, nil
		}
	}
	if r.degraded.Load() {
		r.j.add(group, key, reset, delta)
		r.dirty.Store(true)
		return local, nil
	}
	if delta == 0 {
		// Nothing to journal: just the counter's use.
		used, err := r.applier.applyDeltas(ctx, []Delta{{Group: group, Key: key, Reset: reset}}, 0)
		if err != nil {
			return local, nil
		}
		return addFloor(used[0], r.j.owed(group, key, reset)), nil
	}
	d, ok := r.j.addTake(group, key, reset, delta)
	if !ok {
		// Queued behind a batch of the same counter on its way, or netted
		// to nothing: the sender of that batch sends it next.
		return local, nil
	}
	used, err := r.applier.applyDeltas(ctx, []Delta{d}, 0)
	more := r.j.done([]Delta{d}, err == nil)
	if err != nil {
		// Kept in the journal: the next successful round trip copies it.
		r.dirty.Store(true)
		return local, nil
	}
	if more {
		r.dirty.Store(true)
		r.writeBack()
	}
	return used[0], nil
}
