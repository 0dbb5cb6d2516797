// Package httpsource is the http entitlement source: it asks the team's own
// billing or entitlement service over a documented JSON contract
// (docs/openapi/entitlements.yaml, docs/sources-http.md).
//
//	GET {base}/v1/entitlements/subjects/{subject}   lookup by subject id (path-escaped)
//	GET {base}/v1/entitlements/api-keys/{sha256}    lookup by lower-case hex SHA-256 of an API key
//
// 200 with a valid record is an answer. 404 is "unknown": Lookup returns
// entitlement.ErrNotFound, and the cache stores it as a negative entry.
// Anything else (5xx, 429, 401/403, other statuses, timeouts, connection
// errors, malformed or invalid bodies) is a *LookupError that matches
// ErrUnavailable and never ErrNotFound, so the cache serves stale-if-error
// and never caches it as unknown.
//
// Costs and limits: one HTTP request per Lookup (the cache in front
// coalesces concurrent misses on a key), bounded by Options.Timeout (default
// 50 ms, under Envoy's 200 ms), by Options.MaxInFlight concurrent requests
// (over the bound, Lookup fails at once rather than queueing), and by a
// 64 KiB response body. Connections are kept alive and reused. A circuit
// breaker stops calling a failing service: while it is open, Lookup returns
// ErrBreakerOpen at once, without I/O.
//
// A Source is safe for concurrent use. An Observer's methods are called
// outside the Source's locks, but breaker transitions are reported one at a
// time, in order; an Observer must not call back into the Source.
package httpsource
