package export

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// Defaults for RunOptions.
const (
	DefaultBatch         = 100
	DefaultPollInterval  = 10 * time.Second
	DefaultMinBackoff    = time.Second
	DefaultMaxBackoff    = time.Minute
	DefaultExportTimeout = time.Minute
	DefaultStatsInterval = 15 * time.Second
)

// RunOptions configure Run. Zero values take the defaults.
type RunOptions struct {
	// Batch is how many events one Export gets. Default 100.
	Batch int
	// Wake, when set, ends an idle wait at once: pass a Nudge's C and
	// Notify it after each Append. Without it (or besides it), an idle
	// loop looks again every PollInterval (default 10s).
	Wake         <-chan struct{}
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait after a retryable failure:
	// it doubles from MinBackoff with each failure in a row, up to
	// MaxBackoff, and is drawn between half and all of that (jitter). A
	// provider's Retry-After is waited exactly instead. Defaults 1s, 1m.
	MinBackoff, MaxBackoff time.Duration
	// ExportTimeout bounds one Export call. Default 1m.
	ExportTimeout time.Duration
	// StatsInterval is how often the outbox's Stats go to
	// Observer.Backlog (and once at start). Default 15s; negative: never.
	StatsInterval time.Duration
	// DrainTimeout: when ctx ends, Run goes on exporting what is pending,
	// for at most this long, and stops at the first failure. Zero (the
	// default): Run stops at once; what is pending stays in the outbox.
	DrainTimeout time.Duration
	// DeadLetter, when set, receives the events a provider refused for
	// good before they are acknowledged; if it fails, they stay in the
	// outbox (and are sent, refused and handed to it again later). Unset,
	// they are logged, counted (Observer.Failed) and dropped.
	DeadLetter func(ctx context.Context, refused []Refused) error
	// Observer is told what happens, for metrics.
	Observer Observer
	// Logger logs failures: never a secret, never an event's content
	// beyond its ID, customer, meter and units. Default: discard.
	Logger *slog.Logger
	// Now, After and Jitter are the clock and the randomness, for tests.
	// Jitter returns a number in [0, n). Defaults time.Now, time.After,
	// math/rand/v2's Int64N.
	Now    func() time.Time
	After  func(time.Duration) <-chan time.Time
	Jitter func(n int64) int64
}

func (o *RunOptions) defaults() {
	if o.Batch <= 0 {
		o.Batch = DefaultBatch
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.ExportTimeout <= 0 {
		o.ExportTimeout = DefaultExportTimeout
	}
	if o.StatsInterval == 0 {
		o.StatsInterval = DefaultStatsInterval
	}
	if o.Observer == nil {
		o.Observer = NopObserver{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.Jitter == nil {
		o.Jitter = rand.Int64N
	}
}

// Run drains box into exp until ctx ends: Pending, Export, Ack, again.
//
// Delivered events are acknowledged; so are the events the provider
// refused for good (a permanent Kind), after DeadLetter, or logged and
// dropped: they are never retried forever. Events that failed otherwise
// stay in the outbox and are sent again after a backoff (doubling from
// MinBackoff to MaxBackoff, with jitter; a Retry-After is waited exactly).
// An Ack interrupted by ctx's end is still made, so a stop does not cause
// a re-send; a failed Ack does (the provider de-duplicates by ID).
//
// When the outbox is empty Run waits for Wake or PollInterval. When ctx
// ends, Run returns at once (an Export in flight is cancelled), or after a
// final drain bounded by DrainTimeout. It returns nil: failures are
// retried, never returned. Run may be called again with the same outbox
// after it returns.
func Run(ctx context.Context, box usage.Outbox, exp usage.Exporter, opts RunOptions) error {
	opts.defaults()
	r := &runner{box: box, exp: exp, o: opts, log: opts.Logger.With("provider", exp.Name())}
	statsDone := make(chan struct{})
	go r.stats(ctx, statsDone)
	r.loop(ctx)
	if opts.DrainTimeout > 0 {
		r.drain(ctx)
	}
	<-statsDone
	return nil
}

type runner struct {
	box usage.Outbox
	exp usage.Exporter
	o   RunOptions
	log *slog.Logger
}

// result is what one round did.
type result struct {
	idle     bool  // the outbox had nothing
	retryErr error // something is to be retried, because of this
	progress bool  // some events were acknowledged
}

func (r *runner) loop(ctx context.Context) {
	attempt := 0
	for ctx.Err() == nil {
		res := r.round(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case res.idle:
			attempt = 0
			select {
			case <-ctx.Done():
			case <-r.o.Wake:
			case <-r.o.After(r.o.PollInterval):
			}
		case res.retryErr != nil:
			if res.progress {
				attempt = 0
			}
			d := r.backoff(res.retryErr, attempt)
			attempt++
			r.log.Warn("usage export: retrying", "in", d, "kind", KindOf(res.retryErr), "error", res.retryErr)
			select {
			case <-ctx.Done():
			case <-r.o.After(d):
			}
		default:
			attempt = 0
		}
	}
}

// drain exports what is pending after ctx ended, until the outbox is
// empty, a round fails, or DrainTimeout passes.
func (r *runner) drain(parent context.Context) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-r.o.After(r.o.DrainTimeout):
			cancel()
		case <-done:
		}
	}()
	for ctx.Err() == nil {
		res := r.round(ctx)
		if res.idle || res.retryErr != nil {
			return
		}
	}
}

// backoff is how long to wait after err, the attempt-th failure in a row
// (from 0): the provider's Retry-After when it gave one, else an
// exponential backoff with "equal jitter" (half fixed, half random).
func (r *runner) backoff(err error, attempt int) time.Duration {
	var ra *usage.RetryAfterError
	if errors.As(err, &ra) && ra.After > 0 {
		return ra.After
	}
	d := r.o.MaxBackoff
	if attempt < 62 {
		if e := r.o.MinBackoff << attempt; e > 0 && e < d {
			d = e
		}
	}
	half := d / 2
	return half + time.Duration(r.o.Jitter(int64(d-half)+1))
}

// round exports one batch and acknowledges what is settled.
func (r *runner) round(ctx context.Context) result {
	events, err := r.box.Pending(ctx, r.o.Batch)
	if err != nil {
		if ctx.Err() == nil {
			r.o.Observer.OutboxError("pending", err)
		}
		return result{retryErr: &Error{Provider: "outbox", Kind: KindOutbox, Message: "pending", Err: err}}
	}
	if len(events) == 0 {
		return result{idle: true}
	}

	ectx, cancel := r.exportContext(ctx)
	err = r.exp.Export(ectx, events)
	cancel()

	// Sort the batch: delivered, refused for good, to retry.
	retry := map[string]bool{}
	var refusals map[string]error
	var pe *PartialError
	switch {
	case err == nil:
	case errors.As(err, &pe):
		for _, id := range pe.Retry {
			retry[id] = true
		}
		refusals = pe.Permanent
		err = pe.Err
	default:
		for _, e := range events {
			retry[e.ID] = true
		}
	}
	var ack []string
	var refused []Refused
	delivered := 0
	for _, e := range events {
		switch {
		case retry[e.ID]:
		case refusals[e.ID] != nil:
			refused = append(refused, Refused{Event: e, Err: refusals[e.ID]})
		default:
			ack = append(ack, e.ID)
			delivered++
		}
	}
	if len(refused) > 0 {
		if r.settleRefused(ctx, refused) {
			for _, f := range refused {
				ack = append(ack, f.Event.ID)
			}
		}
	}
	if len(retry) > 0 {
		if ctx.Err() == nil {
			// (A stop is not the provider's failure.)
			r.o.Observer.Failed(KindOf(err), len(retry))
		}
		if err == nil {
			err = &Error{Provider: r.exp.Name(), Kind: KindUnavailable, Message: "events left to retry"}
		}
	}

	if len(ack) > 0 {
		// Acknowledge what the provider holds even if ctx just ended:
		// not doing so would only send it again.
		if aerr := r.box.Ack(context.WithoutCancel(ctx), ack); aerr != nil {
			r.o.Observer.OutboxError("ack", aerr)
			r.log.Error("usage export: acknowledging delivered events failed; they will be sent again", "events", len(ack), "error", aerr)
			return result{retryErr: &Error{Provider: "outbox", Kind: KindOutbox, Message: "ack", Err: aerr}}
		}
	}
	if delivered > 0 {
		r.o.Observer.Delivered(delivered, r.o.Now())
	}
	if len(retry) > 0 {
		return result{retryErr: err, progress: len(ack) > 0}
	}
	return result{progress: true}
}

// settleRefused hands events refused for good to DeadLetter, or logs them
// as dropped; it says whether they may be acknowledged.
func (r *runner) settleRefused(ctx context.Context, refused []Refused) bool {
	for _, f := range refused {
		r.o.Observer.Failed(KindOf(f.Err), 1)
	}
	if r.o.DeadLetter != nil {
		if err := r.o.DeadLetter(context.WithoutCancel(ctx), refused); err != nil {
			r.log.Error("usage export: dead letter failed; the refused events stay in the outbox", "events", len(refused), "error", err)
			return false
		}
	}
	for _, f := range refused {
		e := f.Event
		msg := "usage export: event refused for good, dropped"
		if r.o.DeadLetter != nil {
			msg = "usage export: event refused for good, dead-lettered"
		}
		r.log.Warn(msg, "id", e.ID, "customer", e.Customer, "meter", e.Meter, "units", e.Units, "kind", KindOf(f.Err), "error", f.Err)
	}
	return true
}

// exportContext bounds one Export by ExportTimeout on the loop's clock.
func (r *runner) exportContext(ctx context.Context) (context.Context, func()) {
	ectx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		select {
		case <-r.o.After(r.o.ExportTimeout):
			cancel(errExportTimeout)
		case <-done:
		}
	}()
	return ectx, func() {
		close(done)
		cancel(nil)
	}
}

var errExportTimeout = errors.New("export timed out")

// stats reports the backlog at start and every StatsInterval.
func (r *runner) stats(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	if r.o.StatsInterval < 0 {
		return
	}
	for {
		s, err := r.box.Stats(ctx)
		switch {
		case err == nil:
			r.o.Observer.Backlog(s)
		case ctx.Err() == nil:
			r.o.Observer.OutboxError("stats", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.o.After(r.o.StatsInterval):
		}
	}
}
