// Package quota counts what subjects spend: per-period allowances (month,
// day, hour), short-window rate limits (minute, second) and prepaid credits.
//
// A Store spends on several counters at once, all or nothing, so a request
// refused by one limit consumes none of the others. Counters are keyed by
// subject, quota name and window start, and expire when their window ends.
//
// Two stores implement the same behaviour: Memory, for one replica, and
// Leased (see redis.go), which shares counters across replicas through Redis
// while spending locally from small leases, so that well-behaved traffic
// makes no Redis round trip.
//
// Every store admits a spend only if used + cost ≤ limit, computed without
// overflow (see Fits): no sequence of costs, however large or negative,
// takes a counter past its limit.
//
// A spend may be a reservation, settled when the request ends (Adjuster):
// the unused part is released, or an overage is recorded, past the limit
// if need be (later spends are then refused). Adjustments are checked too:
// a counter saturates instead of wrapping and never goes below 0 (below
// minus its top-ups, see TopUpper), and a release never brings back a
// counter whose window ended. Memory adjusts
// under the subject's lock; Leased changes the counter in Redis, where
// every replica sees it (a release is not kept in the settling replica's
// lease, so no replica holds more than a lease); Resilient copies
// adjustments made while Redis is down into it afterwards, exactly once.
//
// All stores are safe for concurrent use. Memory's Spend costs one mutex
// (sharded by subject) and a map lookup per item.
//
// Keys are borrowed: the Check path builds them with AppendKey into a
// buffer it reuses, and no store keeps a key (or a group) past the call
// that passed it. A store copies a key only when it keeps it (a new
// counter, lease, journal entry or queued top-up), so a spend on counters
// that exist copies nothing.
package quota
