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

// Outcome says how a lookup was answered.
type Outcome uint8

// The outcomes, as reported in metrics and the decision log.
const (
	Hit         Outcome = iota // a fresh record from the cache
	NegativeHit                // a fresh "not found" from the cache
	Miss                       // asked the source
	Stale                      // the source failed; an expired record was served
	Error                      // the source failed and nothing usable was cached
)

var outcomeNames = [...]string{"hit", "negative_hit", "miss", "stale", "error"}

// String is the outcome's label.
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// Outcomes lists every outcome, for pre-creating metric series.
var Outcomes = []Outcome{Hit, NegativeHit, Miss, Stale, Error}

// Options configure a Cache. Zero values take the defaults.
type Options struct {
	MaxEntries   int           // default 100000
	TTL          time.Duration // default 30s
	NegativeTTL  time.Duration // default 5s
	StaleIfError time.Duration // how long past expiry a record may serve during an outage; 0 disables
	Timeout      time.Duration // per source call; default 100ms, under Envoy's 200ms
	Now          func() time.Time
}

func (o *Options) defaults() {
	if o.MaxEntries <= 0 {
		o.MaxEntries = 100000
	}
	if o.TTL <= 0 {
		o.TTL = 30 * time.Second
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = 5 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 100 * time.Millisecond
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
}

// Cache is a read-through entitlement cache.
type Cache struct {
	src   entitlement.Source
	opts  Options
	lru   *lru.Cache[entitlement.Key, *entry]
	group singleflight.Group
	gen   atomic.Uint64 // bumped by every invalidation
}

var _ entitlement.Source = (*Cache)(nil)

// New wraps src.
func New(src entitlement.Source, opts Options) *Cache {
	opts.defaults()
	l, err := lru.New[entitlement.Key, *entry](opts.MaxEntries)
	if err != nil { // only for a non-positive size, which defaults() rules out
		panic(err)
	}
	return &Cache{src: src, opts: opts, lru: l}
}

// Lookup implements entitlement.Source.
func (c *Cache) Lookup(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, error) {
	e, _, err := c.Get(ctx, key)
	return e, err
}

type result struct {
	ent     *entitlement.Entitlement
	outcome Outcome
	err     error
}

// Get looks key up and says how it was answered. The error is
// entitlement.ErrNotFound for an unknown key, or the source's error when
// nothing usable was cached.
func (c *Cache) Get(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, Outcome, error) {
	now := c.opts.Now()
	if en, ok := c.lru.Get(key); ok && now.Before(en.expires) {
		if en.ent == nil {
			return nil, NegativeHit, entitlement.ErrNotFound
		}
		return en.ent, Hit, nil
	}
	ch := c.group.DoChan(flightKey(key), func() (any, error) {
		return c.fetch(ctx, key), nil
	})
	select {
	case r := <-ch:
		res := r.Val.(result)
		return res.ent, res.outcome, res.err
	case <-ctx.Done():
		return nil, Error, ctx.Err()
	}
}

func flightKey(k entitlement.Key) string {
	return string(rune('0'+k.Kind)) + k.ID
}

// fetch asks the source once for everyone waiting on key. It does not stop
// when the first caller gives up: the answer is worth caching for the rest.
func (c *Cache) fetch(ctx context.Context, key entitlement.Key) result {
	gen := c.gen.Load()
	// A caller can miss the cache just before another flight stores the
	// key, then start this flight just after that one ended: look again, so
	// the source is asked once however the callers interleave.
	if en, ok := c.lru.Peek(key); ok && c.opts.Now().Before(en.expires) {
		if en.ent == nil {
			return result{outcome: NegativeHit, err: entitlement.ErrNotFound}
		}
		return result{ent: en.ent, outcome: Hit}
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.Timeout)
	ent, err := c.src.Lookup(fctx, key)
	cancel()
	now := c.opts.Now()

	switch {
	case err == nil && ent != nil:
		c.store(gen, key, &entry{ent: ent, expires: now.Add(c.opts.TTL), usableUntil: now.Add(c.opts.TTL + c.opts.StaleIfError)})
		return result{ent: ent, outcome: Miss}
	case err == nil || errors.Is(err, entitlement.ErrNotFound):
		c.store(gen, key, &entry{expires: now.Add(c.opts.NegativeTTL), usableUntil: now.Add(c.opts.NegativeTTL + c.opts.StaleIfError)})
		return result{outcome: Miss, err: entitlement.ErrNotFound}
	}
	// The source failed: serve what we last knew, for a bounded time.
	if old, ok := c.lru.Peek(key); ok && now.Before(old.usableUntil) {
		if old.ent == nil {
			return result{outcome: Stale, err: entitlement.ErrNotFound}
		}
		return result{ent: old.ent, outcome: Stale}
	}
	return result{outcome: Error, err: err}
}

// store keeps e unless an invalidation happened since the fetch began. The
// key is copied: its ID may be a substring of a whole request (authz
// decodes a Check's strings as substrings of one copy of its bytes), which
// the cache must not keep alive.
func (c *Cache) store(gen uint64, key entitlement.Key, e *entry) {
	if c.gen.Load() == gen {
		key.ID = strings.Clone(key.ID)
		c.lru.Add(key, e)
	}
}

// Invalidate drops key, and the answer of any fetch of it now in flight.
func (c *Cache) Invalidate(key entitlement.Key) {
	c.gen.Add(1)
	c.lru.Remove(key)
	c.group.Forget(flightKey(key))
}

// InvalidateKey drops the record cached under an API-key digest, found or
// not found (for a key that was unknown and has just been issued). It
// returns how many records were dropped (0 or 1).
func (c *Cache) InvalidateKey(digest string) int {
	k := entitlement.Key{Kind: entitlement.ByAPIKey, ID: digest}
	had := c.lru.Contains(k)
	c.Invalidate(k)
	if had {
		return 1
	}
	return 0
}

// InvalidateSubject drops every record of subject, whichever key cached it
// (its subject id or any of its API-key digests), and the answer of any
// fetch now in flight. It scans the cache: O(entries), for rare events such
// as a billing change, not for the request path. It returns how many
// records were dropped.
func (c *Cache) InvalidateSubject(subject string) int {
	c.gen.Add(1)
	n := 0
	if c.lru.Remove(entitlement.Key{Kind: entitlement.BySubject, ID: subject}) {
		n++
	}
	for _, k := range c.lru.Keys() {
		if en, ok := c.lru.Peek(k); ok && en.ent != nil && en.ent.Subject == subject {
			if c.lru.Remove(k) {
				n++
			}
		}
	}
	c.group.Forget(flightKey(entitlement.Key{Kind: entitlement.BySubject, ID: subject}))
	return n
}

// Purge drops everything, for example after the source reloaded.
func (c *Cache) Purge() {
	c.gen.Add(1)
	c.lru.Purge()
}

// Len is the number of records held.
func (c *Cache) Len() int { return c.lru.Len() }
