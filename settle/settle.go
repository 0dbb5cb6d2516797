// Package settle closes the billing loop for metered routes: when a
// response ends, it settles what the request really used against what its
// Check reserved (releasing the rest, or charging the overage), and
// records one usage event in the outbox for export.
//
// Envoy reports every finished request to the access log service (ALS)
// that tollgate serves beside ext_authz; the entry carries the Check's
// reservation token (dynamic metadata), the upstream's status, the usage
// header or trailer, and the units that tollgate's ext_proc server found in
// the body. The ALS entry is the one place a request is settled: a request
// without units (an abandoned stream, a body too large, an ext_proc
// failure) is settled at its reservation.
package settle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/reservation"
	"github.com/tollgate-authz/tollgate/usage"
)

// Namespace is the dynamic metadata namespace tollgate's ext_proc server
// writes the units it found in a body to (key "units"); Envoy's ext_proc
// filter must allow it (metadata_options.receiving_namespaces).
const Namespace = "tollgate.usage"

// Entry is one finished request as Envoy reported it.
type Entry struct {
	// Token is the reservation token from ext_authz's dynamic metadata.
	Token string
	// Status is the HTTP status sent downstream; 0 when no response was
	// sent (the client went away first).
	Status int
	// Headers and Trailers are the response headers and trailers Envoy
	// logged (additional_response_headers_to_log and …_trailers_to_log).
	Headers, Trailers map[string]string
	// BodyUnits is what the ext_proc server found in the body, if it did.
	BodyUnits    int64
	HasBodyUnits bool
	// End is when the response ended.
	End time.Time
}

// Outcome is how a settlement ended, for metrics.
type Outcome string

// Outcomes of Settle.
const (
	Settled     Outcome = "settled"      // actual units found and billed
	AtEstimate  Outcome = "at_estimate"  // no actual units: billed the reservation
	NotBillable Outcome = "not_billable" // upstream status not billed; reservation released
	Duplicate   Outcome = "duplicate"    // already settled
	Forged      Outcome = "forged"       // token not signed by our key, or malformed
	Failed      Outcome = "failed"       // the event could not be stored
)

// Observer is told about each settlement; implementations must be safe
// for concurrent use and fast.
type Observer interface {
	Settled(route string, o Outcome, units, reserved int64)
	AdjustFailed(route string)
}

// Adjuster changes a quota counter after its spend (quota.Adjuster).
type Adjuster interface {
	Adjust(ctx context.Context, group, key string, delta int64, reset time.Time) (used int64, err error)
}

// Options configure a Settler.
type Options struct {
	Signer *reservation.Signer
	// Quotas adjusts the reserved counter; nil leaves counters as reserved.
	Quotas Adjuster
	Outbox usage.Outbox
	// Policy returns the policy in force: a route's meter settings are read
	// at settlement, so a reload applies to requests still in flight.
	Policy func() *policy.Policy
	// Appended is called after events were stored (to wake the exporter).
	Appended func()
	Observer Observer
	Log      *slog.Logger
	// DedupEntries bounds the memory of settled reservations, which makes
	// a replayed entry a no-op (default 100000).
	DedupEntries int
	// Timeout bounds the quota adjustment and the outbox append (default 5s).
	Timeout time.Duration
}

// Settler settles entries. It is safe for concurrent use.
type Settler struct {
	o Options
	// seen holds the settled reservations (settled) and those whose
	// counter was adjusted but whose event could not be stored yet
	// (adjusted): a retry stores the event without adjusting again.
	seen *lru.Cache[string, state]
}

type state uint8

const (
	adjusted state = iota + 1
	settled
)

// New makes a Settler.
func New(o Options) (*Settler, error) {
	if o.Signer == nil || o.Outbox == nil || o.Policy == nil {
		return nil, errors.New("settle: Signer, Outbox and Policy are required")
	}
	if o.DedupEntries <= 0 {
		o.DedupEntries = 100000
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	seen, err := lru.New[string, state](o.DedupEntries)
	if err != nil {
		return nil, err
	}
	return &Settler{o: o, seen: seen}, nil
}

// Settle settles one entry and returns its outcome (and the event stored,
// for a billed request).
func (s *Settler) Settle(ctx context.Context, e Entry) (Outcome, *usage.Event, error) {
	r, err := s.o.Signer.Verify(e.Token)
	if err != nil {
		s.observe("", Forged, 0, 0)
		return Forged, nil, err
	}
	id := usage.NewID(r.ID, r.Route+"@"+strconv.FormatInt(r.Start, 10))
	prior, _ := s.seen.Get(id)
	if prior == settled {
		s.observe(r.Route, Duplicate, 0, r.Estimate)
		return Duplicate, nil, nil
	}
	m := s.meter(r.Route)
	actual, found := r.Estimate, false
	billable := e.Status == 0 || m.Billable(e.Status)
	switch {
	case !billable:
		actual = 0
	case m.FromBody():
		actual, found = e.BodyUnits, e.HasBodyUnits
	case m.Header != "":
		v, ok := header(e.Headers, m.Header)
		if !ok {
			v, ok = header(e.Trailers, m.Header)
		}
		if ok {
			actual, found = policy.Units(v)
		}
	}
	if !found && billable {
		actual = r.Estimate
	}
	if m.CapOverage && actual > r.Estimate {
		actual = r.Estimate
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	if delta := actual - r.Estimate; delta != 0 && r.Counter != "" && s.o.Quotas != nil && prior != adjusted {
		if _, err := s.o.Quotas.Adjust(ctx, r.Subject, r.Counter, delta, r.ResetTime()); err != nil {
			// The event still bills what was used; the counter keeps the
			// reservation until its window ends.
			if s.o.Observer != nil {
				s.o.Observer.AdjustFailed(r.Route)
			}
			s.o.Log.Warn("settle: could not adjust the quota counter; it keeps the reservation", "route", r.Route, "delta", delta, "error", err.Error())
		}
	}
	s.seen.Add(id, adjusted)
	outcome := Settled
	switch {
	case !billable:
		outcome = NotBillable
	case !found:
		outcome = AtEstimate
	}
	if !billable {
		s.seen.Add(id, settled)
		s.observe(r.Route, outcome, 0, r.Estimate)
		return outcome, nil, nil
	}
	customer := r.Customer
	if customer == "" {
		customer = r.Subject
	}
	end := e.End
	if end.IsZero() {
		end = time.Now()
	}
	ev := usage.Event{
		ID: id, Subject: r.Subject, Customer: customer, Route: r.Route, Meter: r.Meter,
		Units: actual, Reserved: r.Estimate, Status: e.Status, Start: r.StartTime().UTC(), End: end.UTC(),
	}
	if err := s.o.Outbox.Append(ctx, []usage.Event{ev}); err != nil {
		s.observe(r.Route, Failed, actual, r.Estimate)
		return Failed, nil, fmt.Errorf("settle: storing the usage event: %w", err)
	}
	s.seen.Add(id, settled)
	if s.o.Appended != nil {
		s.o.Appended()
	}
	s.observe(r.Route, outcome, actual, r.Estimate)
	return outcome, &ev, nil
}

// meter is the route's meter in the policy in force, or the defaults
// (settle at the reservation, bill 2xx) when the route is gone.
func (s *Settler) meter(route string) *policy.Meter {
	if p := s.o.Policy(); p != nil {
		for _, r := range p.Routes() {
			if r.Name == route && r.Meter != nil {
				return r.Meter
			}
		}
	}
	return defaultMeter
}

var defaultMeter = func() *policy.Meter {
	p, errs := policy.Compile(policy.Spec{Routes: []policy.RouteSpec{{Name: "m", Meter: &policy.MeterSpec{}}}})
	if len(errs) > 0 {
		panic(errs)
	}
	return p.Routes()[0].Meter
}()

func (s *Settler) observe(route string, o Outcome, units, reserved int64) {
	if s.o.Observer != nil {
		s.o.Observer.Settled(route, o, units, reserved)
	}
}

// header finds name (lower-case) in h, whose keys Envoy may have kept in
// any case.
func header(h map[string]string, name string) (string, bool) {
	if v, ok := h[name]; ok {
		return v, true
	}
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

func parseUnits(s string) (int64, bool) { return policy.Units(s) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
