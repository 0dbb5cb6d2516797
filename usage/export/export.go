package export

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// Kind says why events were not delivered. One set of constants is both
// what the code returns (KindOf) and the label a metric carries.
type Kind string

// Failure kinds. Only KindRejected and KindTooOld are permanent: the loop
// acknowledges those events (after DeadLetter, when set) and never sends
// them again. Every other kind is retried until it succeeds; a fault of
// configuration (a wrong key, a wrong URL) is retried too, never a reason
// to drop billable events.
const (
	KindRateLimited Kind = "rate_limited" // 429: the provider asks to slow down
	KindUnavailable Kind = "unavailable"  // 5xx, 408, 409, timeouts, connection errors
	KindAuth        Kind = "auth"         // 401, 403, 407: the key is wrong, revoked or lacks permission
	KindEndpoint    Kind = "endpoint"     // 404, 405, 415, 3xx: the URL or format is wrong
	KindRejected    Kind = "rejected"     // permanent: the provider refuses this event (400, 422, 413 for one event)
	KindTooOld      Kind = "too_old"      // permanent: older than the provider accepts (Stripe: 35 days)
	KindOutbox      Kind = "outbox"       // the outbox failed Pending, Ack or Stats
)

// Kinds lists every Kind, for pre-creating metric series.
var Kinds = []Kind{KindRateLimited, KindUnavailable, KindAuth, KindEndpoint, KindRejected, KindTooOld, KindOutbox}

// Permanent says whether events that failed with k are never sent again.
func (k Kind) Permanent() bool { return k == KindRejected || k == KindTooOld }

// Error is one failed delivery: a refusal by the provider or a request that
// got no answer. Nothing in it is secret: the provider's message is
// scrubbed of the key and of anything key-shaped, and the URL it names has
// neither userinfo nor query.
type Error struct {
	Provider string // "stripe", "openmeter", or the HTTP exporter's name
	Kind     Kind
	Status   int    // HTTP status; 0 when no answer came
	Code     string // the provider's error code (or type, or rate-limit reason)
	Message  string // the provider's message, or ours
	Err      error  // the cause: a network error, the context's error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Provider)
	b.WriteString(": ")
	b.WriteString(string(e.Kind))
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d", e.Status)
		if e.Code != "" {
			b.WriteString(" ")
			b.WriteString(e.Code)
		}
		b.WriteString(")")
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// PartialError is what Export returns when a batch was neither all
// delivered nor all to be sent again. Events named in neither Retry nor
// Permanent were delivered (or were already held by the provider: a
// duplicate is a delivery). It unwraps to Err, so errors.As finds a
// *usage.RetryAfterError in it.
//
// A caller that knows nothing of PartialError and retries the whole batch
// stays correct (the IDs make a re-send harmless); it only retries the
// permanent failures forever.
type PartialError struct {
	// Retry lists the events to send again, in batch order.
	Retry []string
	// Permanent maps events the provider will never take to why.
	Permanent map[string]error
	// Err is why Retry's events failed: a *usage.RetryAfterError when the
	// provider named a time to wait. Nil when Retry is empty.
	Err error
}

func (e *PartialError) Error() string {
	var b strings.Builder
	if len(e.Retry) > 0 {
		fmt.Fprintf(&b, "%d events to retry", len(e.Retry))
		if e.Err != nil {
			b.WriteString(" (")
			b.WriteString(e.Err.Error())
			b.WriteString(")")
		}
	}
	if len(e.Permanent) > 0 {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		ids := make([]string, 0, len(e.Permanent))
		for id := range e.Permanent {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		fmt.Fprintf(&b, "%d events refused for good (%s: %v", len(ids), ids[0], e.Permanent[ids[0]])
		if len(ids) > 1 {
			b.WriteString(", …")
		}
		b.WriteString(")")
	}
	return b.String()
}

func (e *PartialError) Unwrap() error { return e.Err }

// KindOf is the Kind of an error from Export: of its retryable cause for a
// *PartialError, or of a refusal when it has nothing to retry. An error it
// does not recognise is KindUnavailable: retried.
func KindOf(err error) Kind {
	var pe *PartialError
	if errors.As(err, &pe) {
		switch {
		case pe.Err != nil:
			err = pe.Err
		case len(pe.Permanent) > 0:
			// Nothing to retry: the kind of a refusal (the first by ID).
			ids := make([]string, 0, len(pe.Permanent))
			for id := range pe.Permanent {
				ids = append(ids, id)
			}
			err = pe.Permanent[slices.Min(ids)]
		}
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	var ra *usage.RetryAfterError
	if errors.As(err, &ra) {
		return KindRateLimited
	}
	return KindUnavailable
}

// outcome gathers the fate of each event of one Export.
type outcome struct {
	retry     []string
	permanent map[string]error
	cause     error // the retryable error to report
	delivered int
}

func (o *outcome) deliver(n int) { o.delivered += n }

func (o *outcome) refuse(id string, err error) {
	if o.permanent == nil {
		o.permanent = make(map[string]error)
	}
	o.permanent[id] = err
}

// fail records events to retry and keeps the cause that asks to wait the
// longest (a Retry-After beats none).
func (o *outcome) fail(err error, ids ...string) {
	o.retry = append(o.retry, ids...)
	if o.cause == nil || retryAfter(err) > retryAfter(o.cause) {
		o.cause = err
	}
}

func retryAfter(err error) time.Duration {
	var ra *usage.RetryAfterError
	if errors.As(err, &ra) {
		return ra.After
	}
	return 0
}

// err is Export's answer: nil when all was delivered, the cause alone when
// every event is to be retried (the Exporter contract's "none"), else a
// *PartialError.
func (o *outcome) err(total int) error {
	if len(o.retry) == 0 && len(o.permanent) == 0 {
		return nil
	}
	if len(o.retry) == total && o.cause != nil {
		return o.cause
	}
	return &PartialError{Retry: o.retry, Permanent: o.permanent, Err: o.cause}
}

// Observer is told what the loop does, for metrics. Its methods are called
// from Run's goroutines (Backlog from another one than the rest): they must
// be safe for concurrent use and must not block.
type Observer interface {
	// Delivered reports n events the provider now holds (accepted, or
	// already held: a duplicate), at the loop clock's time: the last
	// success time is the latest at.
	Delivered(n int, at time.Time)
	// Failed reports n events that failed one attempt, by kind. Permanent
	// kinds were acknowledged and dropped (or dead-lettered); the rest
	// will be sent again.
	Failed(kind Kind, n int)
	// Backlog reports the outbox's Stats, read every StatsInterval.
	Backlog(s usage.Stats)
	// OutboxError reports a failed outbox call: op is "pending", "ack" or
	// "stats".
	OutboxError(op string, err error)
}

// NopObserver ignores everything; embed it to implement only some methods.
type NopObserver struct{}

func (NopObserver) Delivered(int, time.Time)  {}
func (NopObserver) Failed(Kind, int)          {}
func (NopObserver) Backlog(usage.Stats)       {}
func (NopObserver) OutboxError(string, error) {}

// Refused is an event the provider will never take, handed to
// RunOptions.DeadLetter.
type Refused struct {
	Event usage.Event
	Err   error
}

// Nudge wakes an idle Run: the caller calls Notify after each Append, and
// passes C as RunOptions.Wake. Notifications coalesce; Notify never blocks.
type Nudge struct{ c chan struct{} }

// NewNudge returns a Nudge.
func NewNudge() *Nudge { return &Nudge{c: make(chan struct{}, 1)} }

// Notify wakes the loop if it waits for events; it never blocks.
func (n *Nudge) Notify() {
	select {
	case n.c <- struct{}{}:
	default:
	}
}

// C is the channel to pass as RunOptions.Wake.
func (n *Nudge) C() <-chan struct{} { return n.c }
