package entitlement

import (
	"context"
	"errors"
	"time"
)

// Status is a subscription state, spelled as billing systems such as Stripe spell it.
type Status string

// The subscription states tollgate understands.
const (
	StatusActive     Status = "active"
	StatusTrialing   Status = "trialing"
	StatusPastDue    Status = "past_due"
	StatusUnpaid     Status = "unpaid"
	StatusCanceled   Status = "canceled"
	StatusIncomplete Status = "incomplete"
	// StatusIncompleteExpired is Stripe's state for a first payment that never succeeded.
	StatusIncompleteExpired Status = "incomplete_expired"
	StatusPaused            Status = "paused"
)

// Valid reports whether s is one of the known states.
func (s Status) Valid() bool {
	switch s {
	case StatusActive, StatusTrialing, StatusPastDue, StatusUnpaid,
		StatusCanceled, StatusIncomplete, StatusIncompleteExpired, StatusPaused:
		return true
	}
	return false
}

// Entitlement is what one subject (customer, tenant or app) has bought.
// Values handed out by a Source are shared and must not be modified.
type Entitlement struct {
	// Subject is the stable id of the customer, tenant or app.
	Subject string
	// Customer is the billing system's id for the subject (a Stripe
	// customer id), named in usage events; "" means the subject's own id.
	Customer string
	// Plan names a plan declared in the policy config.
	Plan string
	// Status is the subscription state.
	Status Status
	// Features are add-ons granted on top of the plan's own features.
	Features []string
	// Quotas override the plan's quota limits by quota name.
	Quotas map[string]int64
	// Credits is the prepaid balance, when the subject has one.
	Credits *int64
	// PeriodStart and PeriodEnd bound the current billing period; zero when unknown.
	PeriodStart time.Time
	PeriodEnd   time.Time
	// PastDueSince is when the subscription became past_due; zero when unknown.
	// It lets a grace period be counted from the failed payment.
	PastDueSince time.Time
}

// HasFeature reports whether f is one of the subject's add-on features.
func (e *Entitlement) HasFeature(f string) bool {
	for _, x := range e.Features {
		if x == f {
			return true
		}
	}
	return false
}

// KeyKind says what a lookup Key identifies.
type KeyKind uint8

const (
	// BySubject looks a record up by subject id (a JWT claim, an mTLS principal, a trusted header).
	BySubject KeyKind = iota + 1
	// ByAPIKey looks a record up by the lower-case hex SHA-256 digest of an API key.
	ByAPIKey
)

// String names the kind for logs and metrics.
func (k KeyKind) String() string {
	switch k {
	case BySubject:
		return "subject"
	case ByAPIKey:
		return "api_key"
	}
	return "unknown"
}

// Key is what a Source is asked to look up.
type Key struct {
	Kind KeyKind
	// ID is the subject id, or the hex SHA-256 digest of an API key. Never a raw key.
	ID string
}

// ErrNotFound is returned by a Source that does not know the key. It is an
// answer, not a fault: the cache stores it (briefly) and the caller gets 401.
var ErrNotFound = errors.New("entitlement: not found")

// ErrNotFoundUnconfirmed is a "not found" the source cannot vouch for: it
// may have lost its data (a Redis restarted empty) rather than the key having
// been deleted. It matches ErrNotFound. The cache believes it for a key it
// holds nothing for, and keeps serving a record it holds (cache.Options).
var ErrNotFoundUnconfirmed error = notFoundUnconfirmed{}

type notFoundUnconfirmed struct{}

func (notFoundUnconfirmed) Error() string {
	return "entitlement: not found, unconfirmed (the source may have lost its data)"
}

func (notFoundUnconfirmed) Is(target error) bool { return target == ErrNotFound }

// Source looks entitlements up. Any error other than ErrNotFound means the
// backend could not answer; the cache may then serve a stale record.
type Source interface {
	Lookup(ctx context.Context, key Key) (*Entitlement, error)
}
