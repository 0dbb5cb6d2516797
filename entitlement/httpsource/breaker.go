package httpsource

import (
	"sync"
	"time"
)

// Breaker states, as reported to Observer.BreakerState.
const (
	BreakerClosed   = "closed"    // calls go through
	BreakerOpen     = "open"      // calls fail at once with ErrBreakerOpen
	BreakerHalfOpen = "half_open" // one probe call goes through; the rest fail at once
)

// BreakerStates lists every breaker state, for pre-creating metric series.
var BreakerStates = []string{BreakerClosed, BreakerOpen, BreakerHalfOpen}

// verdict is what one call says about the service's health.
type verdict uint8

const (
	neutral verdict = iota // says nothing: the caller gave up, or the call never left
	healthy                // the service answered (200, 404, or a per-request 4xx)
	failed                 // timeout, connection error, 5xx, 429, 401/403
)

// breaker is a consecutive-failure circuit breaker.
//
// Closed: every call goes through; a healthy answer resets the count, a
// failure adds one, and the threshold (or a failure carrying Retry-After)
// opens it. Open: calls fail at once until the cool-down ends; then the next
// call becomes the single probe (half-open). The probe's success closes the
// breaker, its failure opens it for another cool-down, and a neutral probe
// (cancelled by its caller) hands the probe to the next call. Results of
// calls that started before the breaker opened are ignored.
type breaker struct {
	threshold     int // <= 0: disabled
	cooldown      time.Duration
	maxRetryAfter time.Duration // < 0: Retry-After is ignored
	now           func() time.Time
	// notify reports a transition; it runs outside mu, serialised by notifyMu
	// so that transitions are reported in the order they happened.
	notify   func(from, to string, openFor time.Duration, failures int)
	notifyMu sync.Mutex

	mu        sync.Mutex
	state     string
	failures  int // consecutive, while closed
	openUntil time.Time
	probing   bool // half-open: the probe is out
}

func newBreaker(o BreakerOptions, now func() time.Time, notify func(from, to string, openFor time.Duration, failures int)) *breaker {
	return &breaker{
		threshold:     o.Failures,
		cooldown:      o.Cooldown,
		maxRetryAfter: o.MaxRetryAfter,
		now:           now,
		notify:        notify,
		state:         BreakerClosed,
	}
}

// allow says whether a call may go out, and whether it is the half-open probe.
// A probe must be reported to record with probe set.
func (b *breaker) allow() (ok, probe bool) {
	if b.threshold <= 0 {
		return true, false
	}
	b.mu.Lock()
	switch b.state {
	case BreakerClosed:
		b.mu.Unlock()
		return true, false
	case BreakerOpen:
		if b.now().Before(b.openUntil) {
			b.mu.Unlock()
			return false, false
		}
		b.probing = true
		b.setLocked(BreakerHalfOpen, 0)
		return true, true
	default: // half-open
		if b.probing {
			b.mu.Unlock()
			return false, false
		}
		b.probing = true
		b.mu.Unlock()
		return true, true
	}
}

// record takes a call's verdict. retryAfter is the service's Retry-After on
// a failure, or 0.
func (b *breaker) record(probe bool, v verdict, retryAfter time.Duration) {
	if b.threshold <= 0 {
		return
	}
	b.mu.Lock()
	switch {
	case probe:
		b.probing = false
		switch v {
		case healthy:
			b.failures = 0
			b.setLocked(BreakerClosed, 0)
			return
		case failed:
			b.setLocked(BreakerOpen, b.openFor(retryAfter))
			return
		}
	case b.state == BreakerClosed:
		switch v {
		case healthy:
			b.failures = 0
		case failed:
			b.failures++
			if b.failures >= b.threshold || b.honours(retryAfter) {
				b.setLocked(BreakerOpen, b.openFor(retryAfter))
				return
			}
		}
	}
	b.mu.Unlock()
}

func (b *breaker) honours(retryAfter time.Duration) bool {
	return retryAfter > 0 && b.maxRetryAfter >= 0
}

// openFor is the cool-down, stretched to the service's Retry-After (capped).
func (b *breaker) openFor(retryAfter time.Duration) time.Duration {
	d := b.cooldown
	if b.honours(retryAfter) {
		d = max(d, min(retryAfter, b.maxRetryAfter))
	}
	return d
}

// setLocked moves to state to and releases mu. openFor applies to BreakerOpen.
func (b *breaker) setLocked(to string, openFor time.Duration) {
	from, failures := b.state, b.failures
	b.state = to
	if to == BreakerOpen {
		b.openUntil = b.now().Add(openFor)
	}
	if to != BreakerClosed {
		b.failures = 0
	}
	if b.notify == nil || from == to {
		b.mu.Unlock()
		return
	}
	// Take notifyMu before releasing mu: the next transition cannot be
	// reported before this one, and no caller waits on mu while we notify.
	b.notifyMu.Lock()
	b.mu.Unlock()
	b.notify(from, to, openFor, failures)
	b.notifyMu.Unlock()
}

// State is the current state.
func (b *breaker) State() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}
