package quota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// TopUpper adds prepaid units to a counter: credits bought by payment
// (x402), which count at once in tollgate's own ledger, before the billing
// system raises the balance (and so starts a new counter).
//
// A counter's use goes below 0 by what was topped up: with a limit of B
// (the balance) and use −N, spends admit B + N more units. Every store
// admits a spend while used + cost ≤ limit (Fits), so a negative use needs
// no other change to spending; leases (Leased) grant up to limit − u too.
// A store remembers the total topped up on a counter: a release (Adjust,
// Leased.Release) never takes the counter below minus that total (below 0
// without top-ups), so that releases of reservations made from bought
// credits give them back, and no release makes credits that nobody paid for.
type TopUpper interface {
	// TopUp lowers the use of counter key of group by n (> 0) units,
	// below zero if need be, creating the counter (expiring at reset) when
	// absent, and returns its use after. It is never floored; it saturates
	// instead of wrapping. A live counter keeps its own window end. A
	// window that has ended (reset not after now) returns ErrWindowEnded:
	// units added there would be lost with the counter. group and key are
	// borrowed, as for Spend (see Store).
	TopUp(ctx context.Context, group, key string, n int64, reset time.Time) (used int64, err error)
}

// ErrWindowEnded is returned by TopUp for a counter whose window has ended:
// nothing was added. The caller picks the current window's counter.
var ErrWindowEnded = errors.New("quota: the counter's window has ended")

// errTopUpAmount is returned by TopUp for n ≤ 0: a top-up only adds.
var errTopUpAmount = errors.New("quota: a top-up must add at least 1 unit")

var (
	_ TopUpper = (*Memory)(nil)
	_ TopUpper = (*Leased)(nil)
	_ TopUpper = (*Resilient)(nil)
)

// adjustTopped is used + delta for Adjust on a counter topped up by topped
// (≥ 0): saturating at both ends, and floored at −topped (at 0 without
// top-ups), or at used if it is already lower (a saturated top-up), so
// that a release never takes a counter below what was bought. For
// topped = 0 and used ≥ 0 it is addFloor.
func adjustTopped(used, delta, topped int64) int64 {
	s := addSigned(used, delta)
	if delta < 0 {
		s = max(s, min(-topped, used))
	}
	return s
}

// TopUp implements TopUpper under the subject's lock.
func (m *Memory) TopUp(_ context.Context, group, key string, n int64, reset time.Time) (int64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("%w: got %d", errTopUpAmount, n)
	}
	used, ok := m.topUp(group, key, n, reset, true)
	if !ok {
		return 0, ErrWindowEnded
	}
	return used, nil
}

// topUp lowers key's live counter by n > 0, saturating at math.MinInt64,
// and returns its use after and whether the counter was found (or made:
// only with create).
func (m *Memory) topUp(group, key string, n int64, reset time.Time, create bool) (int64, bool) {
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
		c = nil // expired: the top-up starts the window over
	}
	if c == nil {
		if !create {
			return 0, false
		}
		c = &counter{reset: reset}
		sh.counters[strings.Clone(key)] = c // the caller may reuse key (see Store)
	}
	c.used = addSigned(c.used, -n)
	c.topped = addSat(c.topped, n)
	return c.used, true
}

// topUpOp is one top-up on its way to Redis. With an id, Redis applies it
// at most once (Resilient sends it again after a lost reply).
type topUpOp struct {
	group, key string
	n          int64
	reset      time.Time
	id         string
}

// topUpResult is what Redis did with one topUpOp: the counter's use after
// (as this replica estimates it), or that its window had ended.
type topUpResult struct {
	used  int64
	ended bool
}

// topUpApplier is a primary that applies top-ups at most once per id (Leased).
type topUpApplier interface {
	applyTopUps(ctx context.Context, ops []topUpOp, wait time.Duration) ([]topUpResult, error)
}

// TopUp implements TopUpper with one round trip: one script lowers u in
// Redis, where every replica leases against limit − u, so any replica can
// then lease the units bought. It also records the total topped up ("t",
// for the window "tr"), the floor of later releases (adjustScript,
// releaseScript). This replica's cached refusal of the counter is lifted at
// once; another replica that cached the counter as spent keeps refusing
// for up to Recheck after its last round trip, as after a release.
//
// The admission bound becomes N + T (T: the units topped up in the window).
// Lua numbers are doubles: u and t are exact within 2^53 and saturate at
// ∓(2^63 − 1024).
//
// The wait is bounded by Timeout. An error wraps ErrUnavailable (or is
// the caller's context.Canceled), and then the top-up may or may not have
// been made: Resilient makes top-ups exactly once across outages.
func (s *Leased) TopUp(ctx context.Context, group, key string, n int64, reset time.Time) (int64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("%w: got %d", errTopUpAmount, n)
	}
	if !s.now().Before(reset) {
		return 0, ErrWindowEnded
	}
	res, err := s.applyTopUps(ctx, []topUpOp{{group: group, key: key, n: n, reset: reset}}, 0)
	if err != nil {
		return 0, err
	}
	if res[0].ended {
		return 0, ErrWindowEnded
	}
	return res[0].used, nil
}

// applyTopUps runs topUpScript for each op, in one round trip, waiting at
// most wait (Timeout if 0).
func (s *Leased) applyTopUps(ctx context.Context, ops []topUpOp, wait time.Duration) ([]topUpResult, error) {
	if wait <= 0 {
		wait = s.timeout
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	now := s.now()
	args := func(o topUpOp) []any {
		a := []any{o.n, o.reset.UnixMilli(), now.UnixMilli(), s.slack.Milliseconds()}
		if o.id != "" {
			a = append(a, "p:"+o.id)
		}
		return a
	}
	keys, argv := make([]string, len(ops)), make([][]any, len(ops))
	for i, o := range ops {
		keys[i], argv[i] = s.redisKey(o.group, o.key), args(o)
	}
	raw, err := s.evalEach(ctx, parent, topUpScript, "top-up", keys, argv, 3)
	if err != nil {
		return nil, err
	}
	out := make([]topUpResult, len(ops))
	for i, o := range ops {
		if raw[i][0] < 0 {
			out[i].ended = true
			continue
		}
		out[i].used = s.noteToppedUp(o.group, o.key, raw[i][1], raw[i][2])
	}
	return out, nil
}

// noteToppedUp records u, the counter in Redis right after a top-up, in
// this replica's lease of the counter (window end rMs), and returns this
// replica's estimate of the counter's use. u went down, so seen moves down
// only: a refusal cached on a higher seen would refuse units now bought.
func (s *Leased) noteToppedUp(group, key string, u, rMs int64) int64 {
	sh := &s.shards[maphash.String(s.seed, group)%leaseShards]
	g := sh.find(group)
	if g == nil {
		return u
	}
	defer g.refs.Add(-1)
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.live(key, s.now())
	if l == nil || l.reset.UnixMilli() != rMs {
		return u
	}
	l.seen = min(l.seen, u)
	return addSigned(l.seen, -l.avail)
}

// topUpScript lowers a counter by n, below 0 if need be.
//
// KEYS[1]: the counter. ARGV: n, reset_ms, now_ms, slack_ms, and optionally
// the op's id field. A live counter (r > now) is lowered whatever its
// window end, which it keeps: the key names the counter. One that does not
// exist, or whose window ended, is made, expiring at reset + slack like a
// lease's, unless reset ≤ now: then nothing changes and the script returns
// {-1, 0, 0}. u stays within [−top, top] and t, the total topped up in the
// window r (field tr), within [0, top] (top = 2^63 − 1024, see
// adjustScript). With an id field, an op whose field exists is skipped; the
// field lives and expires with the counter. Returns {applied (1 or 0), u
// after, r}.
var topUpScript = redis.NewScript(`
local n = tonumber(ARGV[1])
local reset = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local top = 9223372036854774784
local v = redis.call('HMGET', KEYS[1], 'u', 'r', 't', 'tr')
local r = tonumber(v[2])
local u, t = 0, 0
local live = r and r > now
if live then
  u = tonumber(v[1]) or 0
  if v[4] == v[2] then t = tonumber(v[3]) or 0 end
else
  if reset <= now then return {-1, 0, 0} end
  if v[2] then redis.call('DEL', KEYS[1]) end
  r = reset
end
if ARGV[5] and redis.call('HEXISTS', KEYS[1], ARGV[5]) == 1 then return {0, u, r} end
u = u - n
if u < -top then u = -top end
t = t + n
if t > top then t = top end
local rs = string.format('%.0f', r)
redis.call('HSET', KEYS[1], 'u', string.format('%.0f', u), 'r', rs, 't', string.format('%.0f', t), 'tr', rs)
if ARGV[5] then redis.call('HSET', KEYS[1], ARGV[5], '1') end
if not live then
  local ttl = reset - now + tonumber(ARGV[4])
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))
end
return {1, u, r}
`)

// topUpQueue holds a Resilient store's top-ups that the primary has not
// acknowledged, each under its own id, so that one sent again after a lost
// reply is applied once.
type topUpQueue struct {
	mu      sync.Mutex
	ops     []topUpOp
	dropped int64 // units of top-ups whose window ended before they were sent
}

// add queues o, with copies of its group and key: the caller of TopUp may
// reuse theirs (see Store).
func (q *topUpQueue) add(o topUpOp) {
	o.group, o.key = strings.Clone(o.group), strings.Clone(o.key)
	q.mu.Lock()
	q.ops = append(q.ops, o)
	q.mu.Unlock()
}

// take returns up to limit top-ups to send, oldest first, and drops those
// whose window ended by now.
func (q *topUpQueue) take(now time.Time, limit int) []topUpOp {
	q.mu.Lock()
	defer q.mu.Unlock()
	kept := q.ops[:0]
	for _, o := range q.ops {
		if now.Before(o.reset) {
			kept = append(kept, o)
		} else {
			q.dropped = addSat(q.dropped, o.n)
		}
	}
	clear(q.ops[len(kept):])
	q.ops = kept
	return append([]topUpOp(nil), q.ops[:min(limit, len(q.ops))]...)
}

// done removes the top-ups the primary acknowledged.
func (q *topUpQueue) done(sent []topUpOp) {
	ids := make(map[string]bool, len(sent))
	for _, o := range sent {
		ids[o.id] = true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	kept := q.ops[:0]
	for _, o := range q.ops {
		if !ids[o.id] {
			kept = append(kept, o)
		}
	}
	clear(q.ops[len(kept):])
	q.ops = kept
}

// pending is how many top-ups wait for the primary, and their units.
func (q *topUpQueue) pending() (ops int, units int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, o := range q.ops {
		units = addSat(units, o.n)
	}
	return len(q.ops), units
}

func newTopUpID() string {
	var id [12]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	return hex.EncodeToString(id[:])
}

// TopUp implements TopUpper, exactly once whatever the primary's state.
//
// Each top-up gets an id of its own. In primary mode it is sent at once,
// and TopUp returns the primary's answer. While degraded, or when the
// primary fails to answer (a timeout, a lost reply, a canceled caller), it
// is queued and copied into the primary, under the same id, with the other
// changes this replica owes it once the primary answers again (after a
// successful round trip): Redis skips an id it has applied, so a retry
// never counts twice. TopUp then returns nil and the local count (0 unless
// the counter was spent locally): the units are bought, not yet shared.
// Spends that need the counter meanwhile follow their failure policy
// (credits fail closed), as for any spend while Redis is down.
//
// A queued top-up is lost if this replica stops before Redis answers, as
// local spends and adjustments are, or if its window ends first
// (DroppedTopUps counts those units). Counters this replica spent locally
// (a fail-open quota while Redis was down) are lowered locally too.
//
// A primary that cannot take top-ups by id (not a Leased store) is asked
// directly; one that cannot take top-ups at all is an error.
func (r *Resilient) TopUp(ctx context.Context, group, key string, n int64, reset time.Time) (int64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("%w: got %d", errTopUpAmount, n)
	}
	ta, ok := r.primary.(topUpApplier)
	if !ok {
		if tu, ok := r.primary.(TopUpper); ok {
			return tu.TopUp(ctx, group, key, n, reset)
		}
		return 0, errors.New("quota: the primary store cannot top up counters")
	}
	if !r.now().Before(reset) {
		return 0, ErrWindowEnded
	}
	var local int64
	if r.local != nil {
		local, _ = r.local.topUp(group, key, n, reset, false)
	}
	op := topUpOp{group: group, key: key, n: n, reset: reset, id: newTopUpID()}
	if !r.degraded.Load() {
		res, err := ta.applyTopUps(ctx, []topUpOp{op}, 0)
		if err == nil {
			if res[0].ended {
				return 0, ErrWindowEnded
			}
			if r.dirty.Load() {
				r.writeBack()
			}
			return res[0].used, nil
		}
	}
	r.topUps.add(op)
	r.dirty.Store(true)
	return local, nil
}

// PendingTopUps is how many top-ups wait for the primary to answer again,
// and their units.
func (r *Resilient) PendingTopUps() (ops int, units int64) { return r.topUps.pending() }

// DroppedTopUps is how many units of queued top-ups were dropped because
// their window ended before the primary answered again.
func (r *Resilient) DroppedTopUps() int64 {
	r.topUps.mu.Lock()
	defer r.topUps.mu.Unlock()
	return r.topUps.dropped
}

// sendTopUps copies queued top-ups into the primary, in batches, until
// none is left; writeBack calls it. It reports false when a copy failed:
// the top-ups not acknowledged stay queued for the next try.
func (r *Resilient) sendTopUps() bool {
	ta, ok := r.primary.(topUpApplier)
	if !ok {
		return true
	}
	for {
		ops := r.topUps.take(r.now(), writeBackBatch)
		if len(ops) == 0 {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), writeBackTimeout)
		_, err := ta.applyTopUps(ctx, ops, writeBackTimeout)
		cancel()
		if r.onWriteBack != nil {
			var units int64
			for _, o := range ops {
				units = addSat(units, o.n)
			}
			r.onWriteBack(units, err)
		}
		if err != nil {
			return false
		}
		r.topUps.done(ops)
	}
}
