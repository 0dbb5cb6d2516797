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
// All stores are safe for concurrent use. Memory's Spend costs one mutex
// (sharded by subject) and a map lookup per item.
package quota
