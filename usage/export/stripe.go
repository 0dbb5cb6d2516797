package export

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// Stripe defaults and limits.
const (
	DefaultStripeAPIBase    = "https://api.stripe.com"
	DefaultStripeAPIVersion = "2025-03-31.basil"
	// DefaultStripeConcurrency bounds the meter-event requests in flight.
	DefaultStripeConcurrency = 8
	// DefaultStripeLiveRate and DefaultStripeTestRate are the default
	// requests a second: a tenth of Stripe's live-mode meter-event limit
	// (1000/s per account, apart from the global 100/s), and under the
	// sandbox's global 25/s, which meter events share. Each replica runs
	// its own limiter.
	DefaultStripeLiveRate = 100
	DefaultStripeTestRate = 10
	// StripeMaxAge is how old an event Stripe takes: 35 days. The exporter
	// refuses older events itself, an hour early (DefaultStripeMaxAge), so
	// one in flight when it passes the line is refused here, not there.
	StripeMaxAge        = 35 * 24 * time.Hour
	DefaultStripeMaxAge = StripeMaxAge - time.Hour
	// StripeMaxFuture is how far ahead of Stripe's clock a timestamp may be.
	StripeMaxFuture = 5 * time.Minute

	stripeMeterEventsPath = "/v1/billing/meter_events"
	stripeDuplicate       = "an event already exists with identifier"
)

// StripeOptions configure a Stripe exporter. Zero values take the defaults.
type StripeOptions struct {
	// SecretKey is a Stripe secret key (sk_…) or a restricted key (rk_…)
	// with write access to meter events, read by the caller from an
	// environment variable. It is sent only in the Authorization header
	// and never appears in an error.
	SecretKey string
	// APIBase is Stripe's API root (default DefaultStripeAPIBase); tests
	// point it at a fake. It must be https unless the host is loopback.
	APIBase string
	// APIVersion is sent as Stripe-Version. Default DefaultStripeAPIVersion.
	APIVersion string
	// EventNames maps an Event's Meter to the Stripe meter's event_name; a
	// meter not in the map is sent under its own name.
	EventNames map[string]string
	// CustomerKey and ValueKey are the meter's payload keys
	// (customer_mapping.event_payload_key, value_settings.event_payload_key).
	// Defaults "stripe_customer_id" and "value".
	CustomerKey, ValueKey string
	// RatePerSecond and Burst bound the requests. Default
	// DefaultStripeLiveRate with a live key, DefaultStripeTestRate with a
	// test key (sk_test_, rk_test_); Burst defaults to a tenth of the rate.
	// A negative rate sends without limit.
	RatePerSecond float64
	Burst         int
	// Concurrency bounds the requests in flight. Default
	// DefaultStripeConcurrency.
	Concurrency int
	// MaxAge: an event that ended longer ago than this is refused for
	// good without a request (KindTooOld). Default DefaultStripeMaxAge; it
	// cannot exceed StripeMaxAge.
	MaxAge time.Duration
	// HTTPClient carries the requests. Default: a client with a
	// DefaultHTTPTimeout timeout.
	HTTPClient *http.Client
	// Now and After are the clock, for tests. Defaults time.Now, time.After.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
}

// Validate checks the options NewStripe trusts.
func (o StripeOptions) Validate() error {
	switch {
	case o.SecretKey == "":
		return errors.New("stripe: a secret key is required")
	case strings.ContainsAny(o.SecretKey, " \t\r\n"):
		return errors.New("stripe: the secret key contains white space")
	case o.Concurrency < 0:
		return errors.New("stripe: concurrency must not be negative")
	case o.Burst < 0:
		return errors.New("stripe: burst must not be negative")
	case o.MaxAge < 0 || o.MaxAge > StripeMaxAge:
		return fmt.Errorf("stripe: max age must be from 0 (the default) to %s", StripeMaxAge)
	}
	for _, k := range []string{o.CustomerKey, o.ValueKey} {
		if strings.ContainsAny(k, "[]&=% \t\r\n") {
			return fmt.Errorf("stripe: payload key %q must be a plain word", k)
		}
	}
	base := o.APIBase
	if base == "" {
		base = DefaultStripeAPIBase
	}
	if err := checkURL("stripe: api base", base, true); err != nil {
		return err
	}
	return nil
}

// Stripe exports events as Stripe Billing meter events, one request each
// (POST /v1/billing/meter_events, form-encoded), Event.ID as the identifier
// Stripe de-duplicates by.
type Stripe struct {
	post        *poster
	eventNames  map[string]string
	customerKey string // form-escaped "payload[...]=" prefixes
	valueKey    string
	concurrency int
	maxAge      time.Duration
	now         func() time.Time
	limit       *limiter
}

var _ usage.Exporter = (*Stripe)(nil)

// NewStripe returns a Stripe exporter. It trusts opts: call Validate first.
func NewStripe(opts StripeOptions) *Stripe {
	if opts.APIBase == "" {
		opts.APIBase = DefaultStripeAPIBase
	}
	if opts.APIVersion == "" {
		opts.APIVersion = DefaultStripeAPIVersion
	}
	if opts.CustomerKey == "" {
		opts.CustomerKey = "stripe_customer_id"
	}
	if opts.ValueKey == "" {
		opts.ValueKey = "value"
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultStripeConcurrency
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultStripeMaxAge
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.After == nil {
		opts.After = time.After
	}
	if opts.RatePerSecond == 0 {
		opts.RatePerSecond = DefaultStripeLiveRate
		if strings.HasPrefix(opts.SecretKey, "sk_test_") || strings.HasPrefix(opts.SecretKey, "rk_test_") {
			opts.RatePerSecond = DefaultStripeTestRate
		}
	}
	if opts.Burst == 0 {
		opts.Burst = max(1, int(opts.RatePerSecond/10))
	}
	p := newPoster("stripe", strings.TrimRight(opts.APIBase, "/")+stripeMeterEventsPath, opts.SecretKey, opts.HTTPClient, opts.Now)
	p.header.Set("Stripe-Version", opts.APIVersion)
	return &Stripe{
		post:        p,
		eventNames:  opts.EventNames,
		customerKey: "&" + formEscape("payload["+opts.CustomerKey+"]") + "=",
		valueKey:    "&" + formEscape("payload["+opts.ValueKey+"]") + "=",
		concurrency: opts.Concurrency,
		maxAge:      opts.MaxAge,
		now:         opts.Now,
		limit:       newLimiter(opts.RatePerSecond, opts.Burst, opts.Now, opts.After),
	}
}

// Name is "stripe".
func (s *Stripe) Name() string { return "stripe" }

// Export sends each event as one meter event, up to Concurrency at once
// and within the rate limit. An event Stripe already holds (a 400 "An
// event already exists with identifier") counts as delivered. After the
// first retryable failure (429, 5xx, no answer) no new request starts: the
// events not sent are retried with it. See PartialError for the answer.
func (s *Stripe) Export(ctx context.Context, events []usage.Event) error {
	if len(events) == 0 {
		return nil
	}
	now := s.now()
	errs := make([]error, len(events))
	sent := make([]bool, len(events))
	var next atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range min(s.concurrency, len(events)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(events) {
					return
				}
				if stop.Load() {
					continue
				}
				if err := s.check(events[i], now); err != nil {
					errs[i], sent[i] = err, true
					continue
				}
				if err := s.limit.wait(ctx); err != nil {
					stop.Store(true)
					continue
				}
				// A buffer per request: the transport may still read a
				// body after Do returns.
				form := s.appendForm(make([]byte, 0, 192), events[i], now)
				errs[i], sent[i] = s.send(ctx, form), true
				if errs[i] != nil && !KindOf(errs[i]).Permanent() {
					stop.Store(true)
				}
			}
		})
	}
	wg.Wait()

	var o outcome
	for i, e := range events {
		switch {
		case !sent[i]:
			o.fail(nil, e.ID)
		case errs[i] == nil:
			o.deliver(1)
		case KindOf(errs[i]).Permanent():
			o.refuse(e.ID, errs[i])
		default:
			o.fail(errs[i], e.ID)
		}
	}
	if o.cause == nil && len(o.retry) > 0 {
		// Nothing failed but the wait for a token: ctx ended.
		o.cause = &Error{Provider: "stripe", Kind: KindUnavailable, Message: "stopped before sending", Err: context.Cause(ctx)}
	}
	return o.err(len(events))
}

// check refuses, without a request, an event Stripe cannot take.
func (s *Stripe) check(e usage.Event, now time.Time) error {
	switch {
	case e.ID == "":
		return &Error{Provider: "stripe", Kind: KindRejected, Message: "the event has no ID"}
	case e.Customer == "" && e.Subject == "":
		return &Error{Provider: "stripe", Kind: KindRejected, Message: "event " + e.ID + " has no customer"}
	case s.eventName(e.Meter) == "":
		return &Error{Provider: "stripe", Kind: KindRejected, Message: "event " + e.ID + " has no meter"}
	case !e.End.IsZero() && now.Sub(e.End) > s.maxAge:
		return &Error{Provider: "stripe", Kind: KindTooOld,
			Message: fmt.Sprintf("event %s ended at %s, more than %s ago: Stripe takes meter events of the last 35 days", e.ID, e.End.UTC().Format(time.RFC3339), s.maxAge)}
	}
	return nil
}

func (s *Stripe) eventName(meter string) string {
	if n, ok := s.eventNames[meter]; ok {
		return n
	}
	return meter
}

// appendForm appends the form of one meter event:
//
//	event_name=…&identifier=…&payload[stripe_customer_id]=…&payload[value]=…&timestamp=…
//
// timestamp is End in unix seconds; a zero End sends none (Stripe takes
// the time it receives the event), and an End ahead of now (another
// replica's clock) is sent as now, since Stripe refuses more than five
// minutes ahead and the usage did happen.
func (s *Stripe) appendForm(b []byte, e usage.Event, now time.Time) []byte {
	b = append(b, "event_name="...)
	b = appendFormEscaped(b, s.eventName(e.Meter))
	b = append(b, "&identifier="...)
	b = appendFormEscaped(b, e.ID)
	b = append(b, s.customerKey...)
	customer := e.Customer
	if customer == "" {
		customer = e.Subject
	}
	b = appendFormEscaped(b, customer)
	b = append(b, s.valueKey...)
	b = strconv.AppendInt(b, e.Units, 10)
	if !e.End.IsZero() {
		ts := e.End
		if ts.After(now) {
			ts = now
		}
		b = append(b, "&timestamp="...)
		b = strconv.AppendInt(b, ts.Unix(), 10)
	}
	return b
}

// send posts one form and judges Stripe's answer.
func (s *Stripe) send(ctx context.Context, form []byte) error {
	a, err := s.post.post(ctx, "application/x-www-form-urlencoded", form)
	if err != nil {
		return err
	}
	if a.status/100 == 2 {
		return nil
	}
	var env struct {
		Error struct {
			Type    string `json:"type"`
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(a.body, &env)
	msg := env.Error.Message
	if a.status == http.StatusBadRequest && strings.HasPrefix(strings.ToLower(msg), stripeDuplicate) {
		// Stripe holds this identifier already: the event was counted by
		// an earlier request whose answer we lost.
		return nil
	}
	code := env.Error.Code
	if code == "" {
		code = env.Error.Type
	}
	if a.status == http.StatusTooManyRequests {
		if r := a.header.Get("Stripe-Rate-Limited-Reason"); r != "" {
			code = r
		}
	}
	err = s.post.refusal(a, code, msg)
	if a.header.Get("Stripe-Should-Retry") == "true" && KindOf(err).Permanent() {
		// Stripe says a retry may succeed (a lock, a conflict).
		var e *Error
		if errors.As(err, &e) {
			e.Kind = KindUnavailable
		}
	}
	return err
}

// formEscape is appendFormEscaped for a string.
func formEscape(s string) string { return string(appendFormEscaped(nil, s)) }

// appendFormEscaped appends s escaped as application/x-www-form-urlencoded
// does (url.QueryEscape), without an allocation of its own.
func appendFormEscaped(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b = append(b, c)
		case c == ' ':
			b = append(b, '+')
		default:
			b = append(b, '%', hex[c>>4], hex[c&15])
		}
	}
	return b
}
