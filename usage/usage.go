// Package usage is what tollgate reports to billing: one Event per settled
// request, kept in a durable Outbox until an exporter has delivered it.
//
// Delivery is at least once; exactly once at the provider comes from the
// Event's deterministic ID, which every exporter sends as the provider's
// de-duplication key (Stripe's identifier, a CloudEvent's id). An event
// sent twice (a retry after a timeout, a restart after SIGKILL, two
// replicas that both settled it) is counted once.
//
// This package holds the shared types only; usage/outbox holds the
// stores and usage/export the exporters and the loop that drains a store
// into one.
package usage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"
)

// Event is one settled request. Nothing in it is secret: no credential, no
// key digest, no request content.
type Event struct {
	// ID is deterministic (see NewID): the provider's de-duplication key.
	ID string `json:"id"`
	// Subject is tollgate's subject; Customer the billing system's id for
	// it (a Stripe customer id), or Subject when the record names none.
	Subject  string `json:"subject"`
	Customer string `json:"customer"`
	// Route is the config's route name; Meter what the units are of (a
	// Stripe meter's event_name, for example "llm_tokens").
	Route string `json:"route"`
	Meter string `json:"meter"`
	// Units is what the request used and is billed for; Reserved what its
	// Check reserved.
	Units    int64 `json:"units"`
	Reserved int64 `json:"reserved"`
	// Status is the upstream's HTTP status (0 when the stream was
	// abandoned before a response).
	Status int `json:"status"`
	// Start is when the Check decided; End when the response ended.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// NewID is the event ID of the reservation id (settle passes the Check's
// decision id) within scope (its route and time): the same reservation
// gives the same ID on every replica and after every restart. It is 32 hex
// digits (128 bits of SHA-256), inside Stripe's 100-character identifier.
func NewID(id, scope string) string {
	h := sha256.New()
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(scope))
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// Outbox is a durable queue of events waiting to be exported. Every method
// is safe for concurrent use.
type Outbox interface {
	// Append stores events durably before it returns (written and synced
	// to disk, or acknowledged by Redis). An event whose ID is already
	// waiting is not stored again. When the bound is reached, it stores
	// none of events and returns an error matching ErrFull.
	Append(ctx context.Context, events []Event) error
	// Pending returns up to n events not yet acknowledged, oldest first.
	// An event stays pending (and is returned again by later calls) until
	// Ack; with several consumers sharing a store, each event is handed to
	// one at a time, and to another if its consumer dies without Ack.
	Pending(ctx context.Context, n int) ([]Event, error)
	// Ack removes delivered events. Unknown IDs are ignored.
	Ack(ctx context.Context, ids []string) error
	// Stats reports the backlog.
	Stats(ctx context.Context) (Stats, error)
	// Close releases the store. Events waiting stay stored.
	Close() error
}

// Stats is an Outbox's backlog.
type Stats struct {
	// Backlog is how many events wait for export.
	Backlog int
	// Oldest is when the oldest waiting event was appended; zero when none.
	Oldest time.Time
}

// ErrFull is returned by Append when the outbox holds its maximum.
var ErrFull = errors.New("usage outbox full")

// Exporter delivers events to one billing provider.
type Exporter interface {
	// Name says which provider, for logs and metrics ("stripe").
	Name() string
	// Export delivers events, all or none as far as the caller knows: on
	// error, every event is sent again later (the IDs make that safe). A
	// provider that asks to wait is reported as a *RetryAfterError.
	Export(ctx context.Context, events []Event) error
}

// RetryAfterError is a provider's refusal with a time to wait (HTTP 429 or
// 503 with Retry-After).
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }
