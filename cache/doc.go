// Package cache is a read-through cache in front of any entitlement.Source,
// with the same interface, built on hashicorp/golang-lru/v2.
//
// What it promises:
//   - Bounded: at most MaxEntries records (found and not found) are held;
//     the least recently used is evicted first.
//   - Fresh for TTL, and an unknown credential for the shorter NegativeTTL,
//     so a flood of made-up keys cannot pin memory or hammer the source.
//   - One source call for any number of concurrent misses on the same key.
//   - Stale-if-error: when the source fails, a record that expired less than
//     StaleIfError ago is served instead of an error.
//   - Invalidate and Purge take effect at once, also for a fetch that is
//     already in flight: its answer is not stored.
//
// Costs: a hit is one LRU lookup under the LRU's mutex and a clock read; a
// miss adds the source call, and a copy of the key (which may be a
// substring of a whole request). All methods are safe for concurrent use.
package cache
