package quota

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Leased is a Store whose counters are shared by every replica through Redis,
// while most spends are answered from memory.
//
// # Algorithm
//
// Redis holds one hash per counter, {u: units handed out, r: window end in
// Unix ms}, which expires ExpirySlack after the window ends. A replica never
// spends from Redis directly: it leases units in batches and spends them
// locally under the subject's lock.
//
//   - A spend that the subject's local leases cover makes no round trip.
//   - Otherwise one Lua script (EVALSHA) asks, for every item short of units,
//     need = cost − leased; Redis grants need (when need ≥ LeaseSize) or
//     min(LeaseSize, limit − u), all or nothing across the items: if one item
//     cannot get its need, nothing is granted. A counter whose stored window
//     ended by now (the injected clock, sent as an argument) counts as 0.
//   - The replica remembers u as Redis last reported it ("seen"). Spends
//     only raise u, so an item whose need exceeds limit − seen is refused
//     locally, with no round trip: an exhausted counter is cached, and so is
//     a cost that can no longer fit. But u also goes down: a settlement
//     releases what a request reserved and did not use (Adjust), and a
//     draining replica hands its leases back (Release). So a cached refusal
//     holds for Recheck (default 1 s) after the round trip that saw u; the
//     next spend after that asks Redis again. A flood on an exhausted
//     counter costs each replica one round trip per Recheck. The check
//     uses the request's Limit, so a raised limit is asked about at once.
//     When an item is refused this way, Redis is not asked about the others:
//     the index returned is the first item known not to fit.
//   - Adjust changes u in Redis directly, with one round trip: a release
//     lowers it, so that any replica can lease the units again, and an
//     overage raises it, past the limit if need be.
//   - A lease whose window ended is dropped. Unspent units of a window that
//     ended are simply forgotten; they counted against a window that is over.
//
// All or nothing holds across items: a refused request spends nothing
// locally, and since the script grants nothing when any item falls short, it
// leases nothing either. Units leased by an earlier allowed request stay
// leased for later ones.
//
// # Reported use
//
// used[i] is this replica's estimate of the counter's global use:
// seen − leased, where seen is u as Redis reported it at this replica's last
// round trip for the key and leased is what the replica still holds unspent.
// It counts this replica's spends exactly, counts units other replicas held
// at that round trip as spent, and misses what others leased since. A counter
// this replica never leased reports 0 until it asks Redis.
//
// # Admission bounds
//
// Let N be the limit, R the replicas spending on a counter, L the lease size
// and c a request's cost (1 for per-request quotas).
//
//   - Never over: Redis grants at most N − u, so Σ granted ≤ N, and a replica
//     spends only what it was granted. Admitted ≤ N in every window.
//   - Little under: after a lease a replica holds at most L − 1 unspent units
//     (a grant g ≥ need leaves g − need ≤ L − 1, and a grant of exactly need
//     leaves 0), and holdings only shrink between leases. A request on replica
//     r is refused only when c > leased_r + (N − u) (the cached refusal implies
//     this, as u ≥ seen), so at any refusal
//     admitted = u − Σ leased ≥ N − (c − 1) − (R − 1)(L − 1).
//     An exact counter also refuses a cost-c request with c − 1 units left;
//     leasing adds at most (R − 1)(L − 1): the other replicas' holdings.
//   - Slow Redis: a spend waits for a round trip at most Timeout. The round
//     trip runs on for up to LateReply more; if its reply then shows that
//     Redis granted units, the replica keeps them as leases, as if the
//     spend had waited (LeasedStats.Abandoned, Adopted): a reply that came
//     too late strands nothing. (Handing them back to Redis instead would
//     lower u below what other replicas saw, and their cached refusals
//     would then strand the units.) While such a reply is on its way its
//     units count as neither spent nor held; once it lands, they are held
//     like any lease, so a replica may then hold more than L − 1 until it
//     spends them. A round trip that gets no reply within LateReply
//     (LeasedStats.Unanswered) may strand up to max(L, c) units of each
//     counter it asked for, for its window, as a replica loss does.
//   - Replica loss: a replica that stops without Release strands what it held,
//     at most L − 1 per counter; with K such stops in a window the floor drops
//     by K(L − 1). Release (on drain) hands the units back to Redis, where
//     the next replica to ask can lease them (a replica that already cached
//     the counter as spent keeps refusing for up to Recheck: never over N).
//   - Redis data loss (restart without persistence, failover losing writes)
//     resets the counters it lost: the window may then admit up to N more.
//     Replicas keep refusing what they cached as exhausted for up to Recheck.
//   - Settlement: admitted counts what requests were finally charged
//     (reservations adjusted to their actual cost). A release lowers u at
//     once, and no replica holds more than before, so the floor stands, but
//     for refusals cached from a u seen before the release: for Recheck
//     after a release, a replica may refuse up to the released units too
//     early. An overage raises u past what was admitted at the door: the
//     ceiling becomes N plus the overages recorded in the window (a route
//     that caps them keeps N).
//
// So, in a window with K replica losses and U unanswered round trips, at
// any refusal when no late reply is in flight, no replica holds units
// adopted from one, and no release happened within Recheck before it:
//
//	N − (c − 1) − (R − 1)(L − 1) − K(L − 1) − U·max(L, c) ≤ admitted ≤ N + overages,
//
// and with adopted units still held elsewhere the floor is lower by those.
// Adopted units are spent by the next requests on their replica.
//
// LeaseSize 1 makes the store exact (refusals happen at exactly N) at one
// round trip per spend.
//
// Costs are checked, never wrapped: a cost above what is left (in
// particular above the limit) is refused, whatever its size, and items of
// one spend that name the same counter are spent as one item of their
// summed cost.
//
// # Failure
//
// Every Redis error, including a timeout, is returned wrapping
// ErrUnavailable; Resilient turns that into the quota's failure policy. A
// caller whose context was canceled gets context.Canceled instead: a client
// that went away is not an outage.
// A spend waits for a round trip at most Timeout (default 50 ms), or until
// its own deadline if that is nearer, whatever the client's own timeouts. A
// request fails only for its own round trip: one that timed out fails its
// requester alone, and requests of any subject (those queued for the same
// subject's lock included) still make their own. A wait cut short by the
// caller's own deadline is the caller running out of time, not Redis
// failing: it returns ErrUnavailable but does not count as a failed round
// trip (Resilient's mode does not move).
//
// Counters of one subject share a Redis Cluster slot (the subject is the
// key's hash tag), so the script may touch several of them at once.
// Limits above 2^53 are handled approximately (Lua numbers are doubles).
type Leased struct {
	client    redis.UniversalClient
	prefix    string
	leaseSize int64
	timeout   time.Duration
	slack     time.Duration
	recheck   time.Duration
	now       func() time.Time
	seed      maphash.Seed
	lateReply time.Duration
	// Round trips given up by their requester: how many, how many got no
	// reply, the units their late replies granted, and how many still run.
	abandoned, unanswered, adopted atomic.Uint64
	late                           atomic.Int64
	shards                         [leaseShards]leaseShard
}

// LeasedOptions configures a Leased store. Only Client is required.
type LeasedOptions struct {
	// Client reaches Redis (a *redis.Client, *redis.ClusterClient, ...).
	// RedisOptions gives options that fail fast.
	Client redis.UniversalClient
	// Prefix starts every Redis key; default "tollgate:q:". It must not
	// contain '{' (the subject is the key's Cluster hash tag).
	Prefix string
	// LeaseSize is how many units a replica takes from Redis at once; default
	// 10. Larger leases mean fewer round trips and a wider admission bound.
	LeaseSize int64
	// Timeout bounds how long a spend waits for a round trip; default 50 ms,
	// well under Envoy's 200 ms.
	Timeout time.Duration
	// LateReply is how much longer than Timeout a round trip may still
	// run after its requester gave up, so that units Redis granted to it
	// are kept as leases instead of stranded; default 1 s. The client's own
	// read timeout must not be shorter than Timeout + LateReply for this to
	// work (RedisOptions's is not).
	LateReply time.Duration
	// ExpirySlack keeps a counter in Redis this long after its window ends,
	// covering clock skew between replicas; default 2 s.
	ExpirySlack time.Duration
	// Recheck is how long a replica refuses, without asking Redis, a counter
	// it saw too spent for a request; default 1 s (DefaultRecheck). Counters
	// go down when settlements release units (Adjust) or replicas hand
	// their leases back (Release): a replica learns of it within Recheck.
	// Measured on Now.
	Recheck time.Duration
	// Now is the clock; default time.Now. It decides windows, not timeouts.
	Now func() time.Time
}

// LeasedStats counts what a Leased store did, since it was made.
type LeasedStats struct {
	// RoundTrips is how many spends ran the lease script on Redis.
	RoundTrips uint64
	// Local is how many spends were answered without Redis, from leases
	// or from a counter known to be spent (CachedRefusals is part of Local).
	Local uint64
	// CachedRefusals is how many spends were refused without Redis because
	// a counter was known to be too spent for them.
	CachedRefusals uint64
	// Errors is how many round trips failed (timeouts included). A wait
	// cut short by the caller's own deadline or cancellation is not one.
	Errors uint64
	// Abandoned is how many round trips ran past their requester's wait
	// (Timeout, or the caller's deadline or cancellation).
	Abandoned uint64
	// Adopted is how many units late replies to abandoned round trips
	// granted, kept as leases.
	Adopted uint64
	// Unanswered is how many abandoned round trips got no reply within
	// LateReply: each may have stranded up to max(LeaseSize, cost) units
	// per counter (see the admission bounds).
	Unanswered uint64
}

const leaseShards = 64

type leaseShard struct {
	mu        sync.Mutex
	groups    map[string]*leaseGroup
	nextSweep time.Time

	roundTrips, local, cachedRefusals, errors atomic.Uint64
	_                                         [64]byte // keep shards' hot words apart
}

// leaseGroup is one subject's leases. refs is changed under the shard's lock
// (up) or atomically after the group is unlocked (down); the sweep only drops
// a group nobody holds.
type leaseGroup struct {
	refs   atomic.Int32
	mu     sync.Mutex
	leases map[string]*lease
}

type lease struct {
	rkey   string    // the Redis key
	reset  time.Time // window end, as Redis stores it
	avail  int64     // leased and not yet spent here
	seen   int64     // u at this replica's last round trip for the key
	seenAt time.Time // when seen was read: refusals cached on it hold for Recheck
}

var _ Store = (*Leased)(nil)

// Default Leased settings.
const (
	DefaultLeasePrefix = "tollgate:q:"
	DefaultLeaseSize   = 10
	DefaultTimeout     = 50 * time.Millisecond
	// DefaultLateReply is how long after Timeout a round trip's reply is
	// still awaited, to hand back what it granted.
	DefaultLateReply = time.Second
	// DefaultRecheck is how long a refusal is cached (LeasedOptions.Recheck).
	DefaultRecheck = time.Second
	defaultSlack   = 2 * time.Second
)

// NewLeased returns a Leased store. It panics without a Client.
func NewLeased(o LeasedOptions) *Leased {
	if o.Client == nil {
		panic("quota: NewLeased needs a Redis client")
	}
	s := &Leased{
		client:    o.Client,
		prefix:    o.Prefix,
		leaseSize: o.LeaseSize,
		timeout:   o.Timeout,
		lateReply: o.LateReply,
		slack:     o.ExpirySlack,
		recheck:   o.Recheck,
		now:       o.Now,
		seed:      maphash.MakeSeed(),
	}
	if s.prefix == "" {
		s.prefix = DefaultLeasePrefix
	}
	if s.leaseSize <= 0 {
		s.leaseSize = DefaultLeaseSize
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.lateReply <= 0 {
		s.lateReply = DefaultLateReply
	}
	if s.slack <= 0 {
		s.slack = defaultSlack
	}
	if s.recheck <= 0 {
		s.recheck = DefaultRecheck
	}
	if s.now == nil {
		s.now = time.Now
	}
	for i := range s.shards {
		s.shards[i].groups = map[string]*leaseGroup{}
	}
	return s
}

// RedisOptions returns go-redis options for addr that fail fast, so a dead
// Redis costs a request at most about DefaultTimeout: 50 ms to dial or
// write, one dial attempt, no command retries, and context deadlines
// honoured. The read timeout is DefaultTimeout + DefaultLateReply: a request
// waits no longer than its context (Leased bounds its wait by Timeout), but
// a reply that comes late is still read, so that Leased can keep what it
// granted.
func RedisOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		DialTimeout:           DefaultTimeout,
		ReadTimeout:           DefaultTimeout + DefaultLateReply,
		WriteTimeout:          DefaultTimeout,
		PoolTimeout:           DefaultTimeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialerRetries:         1,
		DisableIdentity:       true,
	}
}

// Stats returns the store's counters.
func (s *Leased) Stats() LeasedStats {
	var st LeasedStats
	for i := range s.shards {
		sh := &s.shards[i]
		st.RoundTrips += sh.roundTrips.Load()
		st.Local += sh.local.Load()
		st.CachedRefusals += sh.cachedRefusals.Load()
		st.Errors += sh.errors.Load()
	}
	st.Abandoned, st.Adopted, st.Unanswered = s.abandoned.Load(), s.adopted.Load(), s.unanswered.Load()
	return st
}

// Spend implements Store. It makes a round trip only when a lease runs short
// and the counter is not known to be spent.
func (s *Leased) Spend(ctx context.Context, group string, items []Item, used []int64) (int, error) {
	d, _, err := s.spend(ctx, group, items, used, true)
	return d, err
}

// trip says whether a spend asked Redis, and how that went. Resilient
// changes its mode on round trips only: an answer from a local lease says
// nothing about Redis.
type trip uint8

const (
	tripNone   trip = iota // answered without a round trip
	tripOK                 // Redis answered
	tripFailed             // a round trip failed or got no reply in time
)

// spendTrip is Spend that also says whether it made a round trip.
func (s *Leased) spendTrip(ctx context.Context, group string, items []Item, used []int64) (int, trip, error) {
	return s.spend(ctx, group, items, used, true)
}

// errNeedsRedis is what spendCached returns when leases do not cover a spend.
var errNeedsRedis = fmt.Errorf("%w: spend needs a lease from redis", ErrUnavailable)

// spendCached is Spend without Redis: it answers from leases and cached
// refusals, or returns errNeedsRedis. Resilient uses it while Redis is down,
// so units already leased (and so already counted globally) keep serving.
func (s *Leased) spendCached(ctx context.Context, group string, items []Item, used []int64) (int, error) {
	d, _, err := s.spend(ctx, group, items, used, false)
	return d, err
}

func (s *Leased) spend(ctx context.Context, group string, items []Item, used []int64, remote bool) (int, trip, error) {
	if hasDuplicateKeys(items) {
		return s.spendMerged(ctx, group, items, used, remote)
	}
	sh := &s.shards[maphash.String(s.seed, group)%leaseShards]
	now := s.now()
	g := sh.acquire(group, now)
	defer g.refs.Add(-1)
	g.mu.Lock()
	defer g.mu.Unlock()

	denied, short := -1, false
	for i := range items {
		it := &items[i]
		cost := max(it.Cost, 0)
		var avail, seen int64
		fresh := false // seen is recent enough to refuse on
		if l := g.live(it.Key, now); l != nil {
			avail, seen = l.avail, l.seen
			fresh = now.Before(l.seenAt.Add(s.recheck))
		}
		used[i] = max(seen-avail, 0)
		if cost == 0 {
			// Admits nothing, and fits only a counter within its limit
			// (as far as this replica knows), as in Fits.
			if !Fits(used[i], 0, it.Limit) && denied < 0 {
				denied = i
			}
			continue
		}
		if cost <= avail {
			continue
		}
		// Spends only raise u, so Redis cannot give more than Limit − seen
		// unless units were released since: refuse without asking while
		// seen is fresh. (A cost above the limit may fit a counter topped
		// up below 0, so it is asked about too.) Checked arithmetic, so
		// that no cost fits by overflowing.
		if !Fits(seen, cost-avail, it.Limit) && fresh {
			if denied < 0 {
				denied = i
			}
			continue
		}
		short = true
	}
	if denied >= 0 {
		sh.local.Add(1)
		sh.cachedRefusals.Add(1)
		return denied, tripNone, nil
	}
	t := tripNone
	if short {
		if !remote {
			return -1, tripNone, errNeedsRedis
		}
		sh.roundTrips.Add(1)
		d, tr, err := s.lease(ctx, group, g, items, used, now)
		if err != nil {
			if tr == tripFailed {
				sh.errors.Add(1)
			}
			return -1, tr, err
		}
		if d >= 0 {
			return d, tr, nil
		}
		t = tr
	} else {
		sh.local.Add(1)
	}
	for i := range items {
		cost := max(items[i].Cost, 0)
		if cost == 0 {
			continue
		}
		l := g.leases[items[i].Key]
		l.avail -= cost
		used[i] = max(l.seen-l.avail, 0)
	}
	return -1, t, nil
}

// hasDuplicateKeys reports whether two items name the same counter.
func hasDuplicateKeys(items []Item) bool {
	for i := 1; i < len(items); i++ {
		for j := range i {
			if items[i].Key == items[j].Key {
				return true
			}
		}
	}
	return false
}

// spendMerged spends items that name some counter twice as one item per
// counter: the costs summed (saturating) under the smallest of the limits,
// so the counter stays within every item's limit. Each item reports its
// counter's use; a refusal names the first item on the counter refused.
func (s *Leased) spendMerged(ctx context.Context, group string, items []Item, used []int64, remote bool) (int, trip, error) {
	var merged []Item
	at := make([]int, len(items)) // items[i] is merged[at[i]]
	for i, it := range items {
		j := slices.IndexFunc(merged, func(m Item) bool { return m.Key == it.Key })
		if j < 0 {
			j = len(merged)
			it.Cost = max(it.Cost, 0)
			merged = append(merged, it)
		} else {
			merged[j].Cost = addSat(merged[j].Cost, max(it.Cost, 0))
			merged[j].Limit = min(merged[j].Limit, it.Limit)
		}
		at[i] = j
	}
	mused := make([]int64, len(merged))
	d, t, err := s.spend(ctx, group, merged, mused, remote)
	for i := range items {
		used[i] = mused[at[i]]
	}
	if d >= 0 {
		d = slices.Index(at, d)
	}
	return d, t, err
}

// acquire returns group's leases, counted as held until refs is decremented.
// It also sweeps the shard, at most once a second.
func (sh *leaseShard) acquire(group string, now time.Time) *leaseGroup {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.sweep(now)
	g := sh.groups[group]
	if g == nil {
		g = &leaseGroup{leases: map[string]*lease{}}
		sh.groups[strings.Clone(group)] = g // the caller may reuse group (see Store)
	}
	g.refs.Add(1)
	return g
}

// sweep drops leases whose window ended, and groups left empty, skipping
// groups in use (whose lock may be held across a round trip).
func (sh *leaseShard) sweep(now time.Time) {
	if now.Before(sh.nextSweep) {
		return
	}
	sh.nextSweep = now.Add(time.Second)
	for name, g := range sh.groups {
		if g.refs.Load() != 0 {
			continue
		}
		// No Spend holds g, and none can take it while we hold sh.mu
		// (Release may; it only zeroes leases).
		g.mu.Lock()
		for k, l := range g.leases {
			if !now.Before(l.reset) {
				delete(g.leases, k)
			}
		}
		empty := len(g.leases) == 0
		g.mu.Unlock()
		if empty {
			delete(sh.groups, name)
		}
	}
}

// live returns key's lease unless its window ended, which drops it.
func (g *leaseGroup) live(key string, now time.Time) *lease {
	l := g.leases[key]
	if l != nil && !now.Before(l.reset) {
		delete(g.leases, key)
		return nil
	}
	return l
}

// redisKey is prefix{group}:key. The braces make the subject the Redis
// Cluster hash tag, so one script can touch all of a subject's counters.
func (s *Leased) redisKey(group, key string) string {
	if group == "" {
		group = "_" // "{}" is no hash tag at all
	}
	return s.prefix + "{" + group + "}:" + key
}

// keyOf returns key as the tail of rkey, its Redis key (redisKey): the
// same bytes, held by rkey's memory rather than the caller's, so that a
// lease keeps its key at no extra allocation.
func keyOf(rkey, key string) string {
	return rkey[len(rkey)-len(key):]
}

// lease runs the lease script for every item its leases do not cover, under
// g's lock, and records what Redis granted and reported. It returns the
// index of the first item Redis could not cover, or -1.
//
// The caller waits for the reply at most Timeout (or its own deadline). The
// script itself runs on: when its reply comes after the caller gave up, the
// units Redis granted are kept as leases (see adopt), so a slow Redis does
// not strand them.
func (s *Leased) lease(ctx context.Context, group string, g *leaseGroup, items []Item, used []int64, now time.Time) (int, trip, error) {
	if err := ctx.Err(); err != nil {
		// Nothing was asked: no failure of Redis.
		if errors.Is(err, context.Canceled) {
			return -1, tripNone, fmt.Errorf("quota: redis lease: %w", err)
		}
		return -1, tripNone, fmt.Errorf("%w: redis lease: %w", ErrUnavailable, err)
	}
	idx := make([]int, 0, len(items))
	keys := make([]string, 0, len(items))
	args := make([]any, 0, 2+4*len(items))
	args = append(args, now.UnixMilli(), s.slack.Milliseconds())
	for i := range items {
		it := &items[i]
		cost := max(it.Cost, 0)
		l := g.leases[it.Key]
		var avail int64
		if l != nil {
			avail = l.avail
		}
		if cost <= avail {
			continue
		}
		idx = append(idx, i)
		if l != nil {
			keys = append(keys, l.rkey)
		} else {
			keys = append(keys, s.redisKey(group, it.Key))
		}
		args = append(args, cost-avail, s.leaseSize, it.Limit, it.Reset.UnixMilli())
	}

	wait := s.timeout
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	// cut: the caller's deadline, not Timeout, bounds the wait.
	cut := wait < s.timeout
	// The counters' keys in g.leases, for this call and for a reply that
	// comes after it returned: the tails of the Redis keys, not the
	// caller's Keys, whose memory the caller may reuse (see Store).
	lkeys := make([]string, len(idx))
	for j, i := range idx {
		lkeys[j] = keyOf(keys[j], items[i].Key)
	}
	c := &leaseCall{done: make(chan struct{})}
	g.refs.Add(1)
	go s.runLease(ctx, c, g, lkeys, keys, args)
	timer := time.NewTimer(wait)
	select {
	case <-c.done:
	case <-timer.C:
	case <-ctx.Done():
	}
	timer.Stop()
	res, err, ok := s.claim(c)
	if !ok {
		// A caller that went away (Envoy reset the stream) says nothing
		// about Redis: no failure policy, no failed round trip.
		if errors.Is(ctx.Err(), context.Canceled) {
			return -1, tripNone, fmt.Errorf("quota: redis lease: %w", ctx.Err())
		}
		if cut {
			// The caller ran out of its own time before Timeout: Redis was
			// not given its Timeout, so this says nothing about it. The
			// timer fires no earlier than the deadline, so the caller's
			// time is up either way.
			return -1, tripNone, fmt.Errorf("%w: redis lease: no reply before the caller's deadline (%v): %w", ErrUnavailable, wait, context.DeadlineExceeded)
		}
		return -1, tripFailed, fmt.Errorf("%w: redis lease: no reply within %v", ErrUnavailable, wait)
	}
	if err != nil {
		return -1, tripFailed, fmt.Errorf("%w: redis lease: %w", ErrUnavailable, err)
	}

	for j, i := range idx {
		u, reset, granted := res[1+3*j], res[2+3*j], res[3+3*j]
		key := lkeys[j]
		l := g.leases[key]
		if l == nil {
			l = &lease{rkey: keys[j]}
			g.leases[key] = l
		}
		l.seen, l.reset, l.seenAt = u, time.UnixMilli(reset), now
		l.avail += granted
		used[i] = max(l.seen-l.avail, 0)
	}
	if d := res[0]; d > 0 {
		return idx[d-1], tripOK, nil
	}
	return -1, tripOK, nil
}

// leaseCall is one run of the lease script. It may outlive the request that
// started it: then abandoned is set, and the run adopts what Redis granted.
type leaseCall struct {
	done chan struct{} // closed when the reply (or the error) is in
	mu   sync.Mutex
	res  []int64
	err  error
	// finished: res and err are set. abandoned: the requester gave up first.
	finished, abandoned bool
}

// claim returns the call's reply if it is in, or marks the call abandoned.
func (s *Leased) claim(c *leaseCall) ([]int64, error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return c.res, c.err, true
	}
	c.abandoned = true
	s.late.Add(1)
	s.abandoned.Add(1)
	return nil, nil, false
}

// runLease runs the lease script for c, for g's counters lkeys (Redis keys
// keys). Its context keeps the caller's values but not its cancellation,
// and allows Timeout + LateReply. It holds a reference to g, taken by the
// caller, so that a late reply finds g still in its shard.
func (s *Leased) runLease(ctx context.Context, c *leaseCall, g *leaseGroup, lkeys, keys []string, args []any) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout+s.lateReply)
	defer cancel()
	res, err := leaseScript.Run(rctx, s.client, keys, args...).Int64Slice()
	if err == nil && len(res) != 1+3*len(keys) {
		err = fmt.Errorf("lease script returned %d values for %d keys", len(res), len(keys))
	}
	c.mu.Lock()
	c.res, c.err, c.finished = res, err, true
	abandoned := c.abandoned
	c.mu.Unlock()
	if !abandoned {
		// The requester records the reply; by the time it sees done, g is
		// no longer held here.
		g.refs.Add(-1)
		close(c.done)
		return
	}
	close(c.done)
	defer s.late.Add(-1)
	defer g.refs.Add(-1)
	if err != nil {
		// No reply: Redis may have granted units nobody holds. They are
		// lost for their window (see the admission bounds).
		s.unanswered.Add(1)
		return
	}
	s.adopt(g, lkeys, keys, res)
}

// adopt records as leases the units a reply granted after its requester
// gave up, as if it had waited: they are counted in Redis, so they must be
// spendable here rather than stranded. Units of a window older than the
// lease's are dropped: that window is over.
func (s *Leased) adopt(g *leaseGroup, keys, rkeys []string, res []int64) {
	if res[0] != 0 {
		return // refused: nothing was granted
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := s.now()
	var units int64
	for j, key := range keys {
		u, reset, granted := res[1+3*j], time.UnixMilli(res[2+3*j]), res[3+3*j]
		if granted <= 0 {
			continue
		}
		l := g.leases[key]
		switch {
		case l == nil:
			l = &lease{rkey: rkeys[j], reset: reset}
			g.leases[key] = l
		case reset.After(l.reset):
			*l = lease{rkey: rkeys[j], reset: reset}
		case reset.Before(l.reset):
			continue
		}
		if u >= l.seen {
			l.seen, l.seenAt = u, now
		}
		l.avail += granted
		units += granted
	}
	s.adopted.Add(uint64(units))
}

// leaseScript grants leases, all or nothing.
//
// KEYS: the counters. ARGV: now_ms, slack_ms, then per key need, lease,
// limit, reset_ms. Each counter is a hash {u, r}; one whose r ≤ now counts
// as 0 and takes the request's reset. Returns {denied, u1, r1, g1, u2, ...}:
// denied is the 1-based index of the first key that cannot give need (and
// then every g is 0), else 0; u is the counter after the grant g.
var leaseScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local slack = tonumber(ARGV[2])
local out = {0}
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 4
  local need = tonumber(ARGV[a + 1])
  local size = tonumber(ARGV[a + 2])
  local limit = tonumber(ARGV[a + 3])
  local v = redis.call('HMGET', KEYS[i], 'u', 'r')
  local u = 0
  local r = tonumber(v[2])
  if r and r > now then
    u = tonumber(v[1]) or 0
  else
    r = tonumber(ARGV[a + 4])
  end
  local free = limit - u
  local g = 0
  if need > free then
    if out[1] == 0 then out[1] = i end
  else
    g = need
    if g < size then g = math.min(size, free) end
  end
  out[#out + 1] = u
  out[#out + 1] = r
  out[#out + 1] = g
end
for i = 1, #KEYS do
  local g = out[3 * i + 1]
  if out[1] ~= 0 then
    out[3 * i + 1] = 0
  elseif g > 0 then
    local u = out[3 * i - 1] + g
    local r = out[3 * i]
    redis.call('HSET', KEYS[i], 'u', string.format('%.0f', u), 'r', string.format('%.0f', r))
    local ttl = r - now + slack
    if ttl < 1 then ttl = 1 end
    redis.call('PEXPIRE', KEYS[i], string.format('%.0f', ttl))
    out[3 * i - 1] = u
  end
end
return out
`)

// releaseScript hands n units back to a counter, if it is still the window
// they were leased from. KEYS[1]: the counter. ARGV: n, reset_ms.
var releaseScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'u', 'r', 't', 'tr')
if tonumber(v[2]) == tonumber(ARGV[2]) then
  local low = 0
  if v[4] == v[2] then low = -(tonumber(v[3]) or 0) end
  low = math.min(low, tonumber(v[1]) or 0)
  local u = (tonumber(v[1]) or 0) - tonumber(ARGV[1])
  if u < low then u = low end
  redis.call('HSET', KEYS[1], 'u', string.format('%.0f', u))
end
return 0
`)

// Release hands every unspent leased unit back to Redis, so a replica that
// drains does not strand them (see the admission bounds). The store stays
// usable. Units whose hand-back fails are lost for their window, as they
// would be had the replica crashed; the error wraps ErrUnavailable.
func (s *Leased) Release(ctx context.Context) error {
	type back struct {
		rkey  string
		n     int64
		reset time.Time
	}
	var backs []back
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		groups := make([]*leaseGroup, 0, len(sh.groups))
		for _, g := range sh.groups {
			groups = append(groups, g)
		}
		sh.mu.Unlock()
		for _, g := range groups {
			g.mu.Lock()
			for _, l := range g.leases {
				if l.avail > 0 {
					backs = append(backs, back{l.rkey, l.avail, l.reset})
					// seen stays a lower bound of u for cached refusals.
					l.seen -= l.avail
					l.avail = 0
				}
			}
			g.mu.Unlock()
		}
	}
	if len(backs) == 0 {
		return nil
	}
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, b := range backs {
			releaseScript.Eval(ctx, p, []string{b.rkey}, b.n, b.reset.UnixMilli())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: redis release: %w", ErrUnavailable, err)
	}
	return nil
}
