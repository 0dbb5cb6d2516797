// Package cache is a read-through cache in front of any entitlement.Source,
// with the same interface, built on hashicorp/golang-lru/v2.
//
// What it promises:
//   - Bounded: at most MaxEntries records of known subjects and, apart from
//     them, at most NegativeMaxEntries "unknown" answers; in each, the least
//     recently used is evicted first. A flood of made-up keys only evicts
//     other unknown keys: it never pushes a known subject's record out.
//   - Fresh for TTL, and an unknown credential for the shorter NegativeTTL,
//     so a flood of made-up keys cannot pin memory or hammer the source.
//   - Stale-if-error: when the source fails, a record that expired less than
//     StaleIfError ago is served instead of an error.
//   - A record is only ever dropped by an answer from the source that
//     replaces it, by Invalidate, by eviction, or when its stale-if-error
//     window ends. Revalidate (config reload, source reload, pub/sub
//     resubscription) marks records for revalidation and drops nothing, so
//     it never takes away what stale-if-error serves. A "not found" the
//     source cannot vouch for (entitlement.ErrNotFoundUnconfirmed: a Redis
//     that may have lost its data) does not replace a known key's record
//     before the window ends either (outcome
//     entitlement.CacheSuspectNotFound): a source that comes back empty is
//     treated as down. A plain "not found" (a deletion) replaces the record
//     at once.
//   - Invalidate takes effect at once, also for a fetch that is already in
//     flight: its answer is not stored.
//
// # Single flight
//
// The precise rule: while a source call for a key is in flight, every
// lookup of that key waits for that call, so any number of concurrent
// lookups make one call. A lookup that starts after the call ended is
// answered from the cache if the call stored a fresh answer, including a
// lookup that missed the cache just before the answer was stored and
// started its own flight just after the first ended: the flight looks in
// the cache again before calling. So a key gets a second source call only
// when the first stored nothing fresh:
//   - it failed (errors are never cached), and that includes a call cut off
//     by Timeout; the source may still be working on it when the second
//     call arrives;
//   - an Invalidate of the key, or a Revalidate, happened while it was in
//     flight;
//   - its answer expired or was evicted before the later lookup.
//
// A caller that gives up (its context ends) does not end the call: the
// others still get, and the cache still stores, its answer.
//
// Costs: a hit is one LRU lookup under that LRU's mutex, an atomic load and
// a clock read (an unknown key: two LRU lookups); a miss adds the source
// call, and a copy of the key (which may be a substring of a whole request).
// Revalidate is O(1); InvalidateSubject scans the known records. All methods
// are safe for concurrent use.
package cache
