// Package redissource is the redis entitlement source: records shared by
// every tollgate replica in one Redis, and a pub/sub channel on which each
// change is announced so that every replica drops its cached copy at once
// (docs/sources-redis.md).
//
// # Keys
//
// With the default prefix "tollgate:ent:":
//
//	tollgate:ent:subject:<subject>       STRING  the record, JSON (the http source's contract)
//	tollgate:ent:key:<sha256-hex>        STRING  the subject an API-key digest belongs to
//	tollgate:ent:subject-keys:<subject>  SET     the subject's digests, so that Put and Delete
//	                                             can remove index entries no longer listed
//	tollgate:ent:meta:dataset            STRING  the dataset marker (MarkerSuffix): set by
//	                                             deletes and key revocations, never expires
//
// A record is a JSON string rather than a hash because it is read whole on
// every lookup, it nests (features, quotas), and the same JSON is what the
// http source reads: one writer can feed both. JSON field names: subject,
// plan, status, features, quotas, credits, period_start, period_end,
// past_due_since. Unknown fields are ignored.
//
// # Lookups
//
// By subject: a GET of the record pipelined with a GET of the marker. By API
// key: one EVALSHA of a script that resolves the index and GETs the record,
// or the marker when either is missing. One round trip either way. A
// missing record or index entry is entitlement.ErrNotFound when the marker
// is set, and entitlement.ErrNotFoundUnconfirmed (Redis may have lost its
// data; the cache doubts it) when it is not. Everything else (a timeout, a
// refused connection, a reply such as LOADING, BUSY, MASTERDOWN, TRYAGAIN or
// CLUSTERDOWN from a Redis that cannot serve yet, a key of the wrong type,
// JSON that is malformed or not a valid record) is a *LookupError matching
// ErrUnavailable and never ErrNotFound, so the cache serves stale-if-error
// instead of caching "unknown". Each lookup is bounded by Options.Timeout (default 50 ms) when
// the client honours context deadlines (go-redis ContextTimeoutEnabled).
//
// # Writes and invalidation
//
// Put and Delete run one Lua script each: the record, its digest index and
// the PUBLISH of an invalidation happen together or not at all. The message
// on the channel (default "tollgate:invalidate") is JSON:
//
//	{"subject":"acme","api_key_sha256":["5c4a…","0f1e…"]}
//
// listing every digest whose answer may have changed (those listed before and
// after the write). Subscribe reads the channel and calls back per message.
// Redis pub/sub delivers at most once: a replica that is disconnected when a
// message is published never sees it. Subscribe therefore calls onResync
// every time its subscription is established (the first time included); the
// caller marks its whole cache for revalidation there (cache.Revalidate), so
// nothing published while it was away is served as fresh. It does not drop
// anything: a Redis that comes back still loading, or empty, must not take
// away the records stale-if-error serves. A deletion missed that way is
// still believed at the next lookup, thanks to the marker; an "unknown" from
// a Redis restarted empty (no marker) does not lock out a subject it knew.
//
// Redis Cluster: scripts touch keys they compute, so every key must live in
// one slot: give a prefix with a hash tag, for example "{tollgate:ent}:".
//
// A Source is safe for concurrent use. The Observer is called from the
// goroutines doing lookups; Subscribe's callbacks (and its log lines) run one
// at a time on the goroutine that called Subscribe.
package redissource
