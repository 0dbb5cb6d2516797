package cache

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/tollgate-authz/tollgate/entitlement"
)

// Options configure a Cache. Zero values take the defaults.
type Options struct {
	MaxEntries int // records of known subjects; default DefaultMaxEntries
	// NegativeMaxEntries bounds the "unknown" answers, held apart so that a
	// flood of made-up keys cannot evict known subjects; default
	// DefaultNegativeMaxEntries.
	NegativeMaxEntries int
	TTL                time.Duration // default DefaultTTL
	NegativeTTL        time.Duration // default DefaultNegativeTTL
	StaleIfError       time.Duration // how long past expiry a record may serve during an outage; 0 disables
	// Timeout bounds each source call; default DefaultTimeout. Keep it
	// under Envoy's ext_authz timeout: config checks it against
	// server.envoy_timeout, and New trusts that.
	Timeout time.Duration
	Now     func() time.Time
}

// Defaults for zero Options fields, and for the config's
// entitlements.cache block: each is defined here only.
const (
	DefaultMaxEntries         = 100000
	DefaultNegativeMaxEntries = 10000
	DefaultTTL                = 30 * time.Second
	DefaultNegativeTTL        = 5 * time.Second
	// DefaultTimeout is well under Envoy's default ext_authz timeout,
	// 200ms, leaving time to decide and answer.
	DefaultTimeout = 50 * time.Millisecond
)

func (o *Options) defaults() {
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.NegativeMaxEntries <= 0 {
		o.NegativeMaxEntries = DefaultNegativeMaxEntries
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = DefaultNegativeTTL
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

type entry struct {
	ent     *entitlement.Entitlement // nil: the source said not found
	expires time.Time
	// usableUntil bounds stale-if-error; it equals expires when disabled.
	usableUntil time.Time
	// epoch is Cache.epoch when the source was asked. An entry from an
	// older epoch is not fresh: it waits for the source to confirm it.
	epoch uint64
}

// fresh reports whether e may answer without asking the source.
func (e *entry) fresh(now time.Time, epoch uint64) bool {
	return e.epoch == epoch && now.Before(e.expires)
}

// Cache is a read-through entitlement cache.
type Cache struct {
	src   entitlement.Source
	opts  Options
	pos   *lru.Cache[entitlement.Key, *entry] // records of known subjects
	neg   *lru.Cache[entitlement.Key, *entry] // "unknown" answers
	group singleflight.Group
	gen   atomic.Uint64 // bumped by every invalidation: in-flight answers are dropped
	epoch atomic.Uint64 // bumped by Revalidate: older entries are not fresh
}

var _ entitlement.Source = (*Cache)(nil)

// New wraps src.
func New(src entitlement.Source, opts Options) *Cache {
	opts.defaults()
	pos, err := lru.New[entitlement.Key, *entry](opts.MaxEntries)
	if err != nil { // only for a non-positive size, which defaults() rules out
		panic(err)
	}
	neg, err := lru.New[entitlement.Key, *entry](opts.NegativeMaxEntries)
	if err != nil {
		panic(err)
	}
	return &Cache{src: src, opts: opts, pos: pos, neg: neg}
}

// Lookup implements entitlement.Source.
func (c *Cache) Lookup(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, error) {
	e, _, err := c.Get(ctx, key)
	return e, err
}

type result struct {
	ent     *entitlement.Entitlement
	outcome entitlement.CacheOutcome
	err     error
}

// Get looks key up and says how it was answered. The error is
// entitlement.ErrNotFound for an unknown key, or the source's error when
// nothing usable was cached.
func (c *Cache) Get(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, entitlement.CacheOutcome, error) {
	now, epoch := c.opts.Now(), c.epoch.Load()
	if en, ok := c.pos.Get(key); ok && en.fresh(now, epoch) {
		return en.ent, entitlement.CacheHit, nil
	}
	if en, ok := c.neg.Get(key); ok && en.fresh(now, epoch) {
		return nil, entitlement.CacheNegativeHit, entitlement.ErrNotFound
	}
	ch := c.group.DoChan(flightKey(key), func() (any, error) {
		return c.fetch(ctx, key), nil
	})
	select {
	case r := <-ch:
		res := r.Val.(result)
		return res.ent, res.outcome, res.err
	case <-ctx.Done():
		return nil, entitlement.CacheError, ctx.Err()
	}
}

func flightKey(k entitlement.Key) string {
	return string(rune('0'+k.Kind)) + k.ID
}

// fetch asks the source once for everyone waiting on key. It does not stop
// when the first caller gives up: the answer is worth caching for the rest.
func (c *Cache) fetch(ctx context.Context, key entitlement.Key) result {
	gen, epoch := c.gen.Load(), c.epoch.Load()
	// A caller can miss the cache just before another flight stores the
	// key, then start this flight just after that one ended: look again, so
	// that it does not ask the source a second time (doc.go, "Single flight").
	now := c.opts.Now()
	if en, ok := c.pos.Peek(key); ok && en.fresh(now, epoch) {
		return result{ent: en.ent, outcome: entitlement.CacheHit}
	}
	if en, ok := c.neg.Peek(key); ok && en.fresh(now, epoch) {
		return result{outcome: entitlement.CacheNegativeHit, err: entitlement.ErrNotFound}
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.Timeout)
	ent, err := c.src.Lookup(fctx, key)
	cancel()
	now = c.opts.Now()

	switch {
	case err == nil && ent != nil:
		c.store(gen, key, &entry{ent: ent, expires: now.Add(c.opts.TTL), usableUntil: now.Add(c.opts.TTL + c.opts.StaleIfError), epoch: epoch})
		return result{ent: ent, outcome: entitlement.CacheMiss}
	case err == nil || errors.Is(err, entitlement.ErrNotFound):
		if old, ok := c.pos.Peek(key); ok && errors.Is(err, entitlement.ErrNotFoundUnconfirmed) && now.Before(old.usableUntil) {
			// Known a moment ago, and the source cannot say whether the
			// key was deleted or its data was lost (a Redis restarted
			// empty): treat it like an outage. A "not found" it vouches
			// for is believed at once, announced or not.
			return result{ent: old.ent, outcome: entitlement.CacheSuspectNotFound}
		}
		c.store(gen, key, &entry{expires: now.Add(c.opts.NegativeTTL), usableUntil: now.Add(c.opts.NegativeTTL + c.opts.StaleIfError), epoch: epoch})
		return result{outcome: entitlement.CacheMiss, err: entitlement.ErrNotFound}
	}
	// The source failed: serve what we last knew, for a bounded time.
	if old, ok := c.pos.Peek(key); ok && now.Before(old.usableUntil) {
		return result{ent: old.ent, outcome: entitlement.CacheStale}
	}
	if old, ok := c.neg.Peek(key); ok && now.Before(old.usableUntil) {
		return result{outcome: entitlement.CacheStale, err: entitlement.ErrNotFound}
	}
	return result{outcome: entitlement.CacheError, err: err}
}

// store keeps e, in the LRU of its kind, unless an invalidation happened
// since the fetch began. The key is copied: its ID may be a substring of a
// whole request (authz decodes a Check's strings as substrings of one copy
// of its bytes), which the cache must not keep alive.
func (c *Cache) store(gen uint64, key entitlement.Key, e *entry) {
	if c.gen.Load() != gen {
		return
	}
	key.ID = strings.Clone(key.ID)
	if e.ent != nil {
		c.pos.Add(key, e)
		c.neg.Remove(key)
	} else {
		c.neg.Add(key, e)
		c.pos.Remove(key)
	}
}

// Invalidate drops key, and the answer of any fetch of it now in flight.
// Unlike Revalidate, the record is gone: its subject changed, and the old
// record is not served even if the source then fails.
func (c *Cache) Invalidate(key entitlement.Key) {
	c.gen.Add(1)
	c.pos.Remove(key)
	c.neg.Remove(key)
	c.group.Forget(flightKey(key))
}

// InvalidateKey drops the record cached under an API-key digest, found or
// not found (for a key that was unknown and has just been issued). It
// returns how many records were dropped (0 or 1).
func (c *Cache) InvalidateKey(digest string) int {
	k := entitlement.Key{Kind: entitlement.ByAPIKey, ID: digest}
	had := c.pos.Contains(k) || c.neg.Contains(k)
	c.Invalidate(k)
	if had {
		return 1
	}
	return 0
}

// InvalidateSubject drops every record of subject, whichever key cached it
// (its subject id or any of its API-key digests), and the answer of any
// fetch now in flight. It scans the known records: O(MaxEntries), for rare
// events such as a billing change, not for the request path. It returns how
// many records were dropped.
func (c *Cache) InvalidateSubject(subject string) int {
	c.gen.Add(1)
	n := 0
	sk := entitlement.Key{Kind: entitlement.BySubject, ID: subject}
	if c.pos.Remove(sk) {
		n++
	}
	if c.neg.Remove(sk) {
		n++
	}
	for _, k := range c.pos.Keys() {
		if en, ok := c.pos.Peek(k); ok && en.ent != nil && en.ent.Subject == subject {
			if c.pos.Remove(k) {
				n++
			}
		}
	}
	c.group.Forget(flightKey(sk))
	return n
}

// Revalidate marks every record as no longer fresh, for example after a
// config reload, a source reload, or a pub/sub resubscription that may have
// missed changes: the next lookup of each key asks the source. Nothing is
// dropped. Until the source answers, a record serves as if expired: under
// StaleIfError while the source fails. An answer from the source replaces
// it ("unknown" too, unless the source cannot vouch for it:
// entitlement.ErrNotFoundUnconfirmed). A fetch in flight still
// stores its answer, marked for revalidation. O(1).
func (c *Cache) Revalidate() {
	c.epoch.Add(1)
}

// Purge drops everything, the records stale_if_error would serve included,
// and the answers of fetches in flight. For tests and tools: a reload or a
// reconnect calls Revalidate instead.
func (c *Cache) Purge() {
	c.gen.Add(1)
	c.pos.Purge()
	c.neg.Purge()
}

// Len is the number of records held, known and unknown.
func (c *Cache) Len() int { return c.pos.Len() + c.neg.Len() }
