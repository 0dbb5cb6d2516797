package export

import (
	"context"
	"sync"
	"time"
)

// limiter is a token bucket: rate requests a second on average, up to
// burst at once. It is kept as the time the next request may go
// (GCRA): no ticker, one lock, one clock read per request.
type limiter struct {
	interval time.Duration // 1/rate
	slack    time.Duration // (burst-1) * interval
	now      func() time.Time
	after    func(time.Duration) <-chan time.Time

	mu   sync.Mutex
	next time.Time // when the bucket is empty again, were no request to come
}

// newLimiter returns nil (no limit) for a rate <= 0.
func newLimiter(rate float64, burst int, now func() time.Time, after func(time.Duration) <-chan time.Time) *limiter {
	if rate <= 0 {
		return nil
	}
	interval := time.Duration(float64(time.Second) / rate)
	if interval <= 0 {
		return nil
	}
	return &limiter{interval: interval, slack: time.Duration(max(burst, 1)-1) * interval, now: now, after: after}
}

// wait takes a token, waiting until one is due or ctx ends. A token taken
// by a wait that ctx ended is spent, which only errs on the slow side.
func (l *limiter) wait(ctx context.Context) error {
	if l == nil {
		return ctx.Err()
	}
	l.mu.Lock()
	now := l.now()
	tat := l.next
	if tat.Before(now) {
		tat = now
	}
	delay := tat.Sub(now) - l.slack
	l.next = tat.Add(l.interval)
	l.mu.Unlock()
	if delay <= 0 {
		return ctx.Err()
	}
	select {
	case <-l.after(delay):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
