// Package export delivers usage events from an Outbox to a billing
// provider: three exporters (usage.Exporter) and Run, the loop that drains
// an outbox into one.
//
//   - Stripe: Stripe Billing meter events, POST /v1/billing/meter_events,
//     one form-encoded request per event (event_name, identifier = the
//     event's ID, payload[stripe_customer_id], payload[value], timestamp),
//     within a token bucket (default 100 requests a second with a live key,
//     10 with a test key) and Concurrency requests in flight. Stripe
//     answers a second event with the same identifier (within at least 24
//     hours) with a 400 "An event already exists with identifier …": that
//     is a delivery. An event older than Stripe's 35 days is refused for
//     good without a request (KindTooOld).
//   - OpenMeter: CloudEvents 1.0 in batch mode, POST /api/v1/events as
//     application/cloudevents-batch+json, one request per Export; OpenMeter
//     de-duplicates by source and id.
//   - HTTP: JSON lines (application/x-ndjson), one usage.Event a line, to a
//     team's own endpoint, which de-duplicates by the event's id.
//
// Delivery is at least once and exactly once at the provider: every
// request carries the event's deterministic ID as the provider's
// de-duplication key, so a re-send (after a timeout, a lost answer, a
// failed Ack, a restart) is counted once. The window is the provider's: 24
// hours for Stripe's identifiers and OpenMeter's default; an event
// delivered but not acknowledged, then re-sent after that, would count
// twice. Acks are made even when the loop is stopping, to keep that rare.
//
// Failures have a Kind. Permanent ones (KindRejected: the provider refuses
// the event; KindTooOld) are acknowledged after RunOptions.DeadLetter, or
// logged, counted and dropped: never retried forever. Every other failure
// is retried with backoff, including a wrong key (KindAuth) or URL
// (KindEndpoint): a configuration fault never drops billable events, it
// leaves them in the outbox, where its backlog metric and bound alert.
// A batch exporter refused for good splits the batch to find the events
// refused, so one bad event does not hold back the rest.
//
// Nothing secret leaves the package: keys and tokens go only in the
// Authorization header; errors and logs name a URL without userinfo or
// query, and a provider's message is scrubbed of the token and of anything
// key-shaped.
//
// Exporters and Nudge are safe for concurrent use. Run uses one goroutine
// for the loop and one for Stats (plus one per Export, for its timeout);
// all its waits use RunOptions.After, so tests drive it with a fake clock.
package export
