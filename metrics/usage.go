package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate-authz/tollgate/settle"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/usage/export"
)

// Usage records metering: settlements and the export of usage events. It
// implements settle.Observer and export.Observer.
type Usage struct {
	settled   *prometheus.CounterVec
	units     *prometheus.CounterVec
	adjustErr *prometheus.CounterVec
	dropped   prometheus.Counter
	delivered prometheus.Counter
	failed    *prometheus.CounterVec
	outboxErr *prometheus.CounterVec
	backlog   atomic.Int64
	oldest    atomic.Int64 // Unix nanoseconds of the oldest waiting event; 0: none
	lastOK    atomic.Int64 // Unix seconds of the last delivery
	now       func() time.Time
}

// Usage registers the metering collectors (once per Metrics).
func (m *Metrics) Usage() *Usage {
	m.usageOnce.Do(func() { m.usage = newUsage(m.Registry) })
	return m.usage
}

func newUsage(reg *prometheus.Registry) *Usage {
	u := &Usage{now: time.Now}
	u.settled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_settlements_total",
		Help: "Metered requests settled, by route and outcome (settled, at_estimate, not_billable, duplicate, forged, failed).",
	}, []string{"route", "outcome"})
	u.units = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_settled_units_total",
		Help: "Units of metered requests, by route and kind (reserved at the Check, billed at settlement).",
	}, []string{"route", "kind"})
	u.adjustErr = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_settlement_adjust_errors_total",
		Help: "Settlements whose quota counter could not be adjusted (it keeps the reservation), by route.",
	}, []string{"route"})
	u.dropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tollgate_usage_events_dropped_total",
		Help: "Usage events that could not be stored (outbox full with when_full: admit, or failing).",
	})
	u.delivered = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tollgate_usage_events_exported_total",
		Help: "Usage events the billing provider now holds (accepted or already held).",
	})
	u.failed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_usage_export_failures_total",
		Help: "Usage events that failed an export attempt, by kind (rate_limited, unavailable, auth, endpoint, rejected, too_old, outbox).",
	}, []string{"kind"})
	u.outboxErr = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_usage_outbox_errors_total",
		Help: "Failed outbox calls by the exporter, by operation (pending, ack, stats).",
	}, []string{"op"})
	for _, k := range []export.Kind{export.KindRateLimited, export.KindUnavailable, export.KindAuth, export.KindEndpoint,
		export.KindRejected, export.KindTooOld, export.KindOutbox} {
		u.failed.WithLabelValues(string(k))
	}
	reg.MustRegister(u.settled, u.units, u.adjustErr, u.dropped, u.delivered, u.failed, u.outboxErr,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tollgate_usage_outbox_backlog",
			Help: "Usage events waiting in the outbox for export.",
		}, func() float64 { return float64(u.backlog.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tollgate_usage_outbox_oldest_age_seconds",
			Help: "Age of the oldest usage event waiting for export; 0 when none waits.",
		}, func() float64 {
			o := u.oldest.Load()
			if o == 0 {
				return 0
			}
			return u.now().Sub(time.Unix(0, o)).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tollgate_usage_export_last_success_timestamp_seconds",
			Help: "When the billing provider last took events.",
		}, func() float64 { return float64(u.lastOK.Load()) }),
	)
	return u
}

// Settled implements settle.Observer.
func (u *Usage) Settled(route string, o settle.Outcome, units, reserved int64) {
	u.settled.WithLabelValues(route, string(o)).Inc()
	switch o {
	case settle.Settled, settle.AtEstimate, settle.NotBillable:
		u.units.WithLabelValues(route, "reserved").Add(float64(reserved))
		u.units.WithLabelValues(route, "billed").Add(float64(units))
	case settle.Failed:
		u.dropped.Inc()
	}
}

// AdjustFailed implements settle.Observer.
func (u *Usage) AdjustFailed(route string) { u.adjustErr.WithLabelValues(route).Inc() }

// Delivered implements export.Observer.
func (u *Usage) Delivered(n int, at time.Time) {
	u.delivered.Add(float64(n))
	u.lastOK.Store(at.Unix())
}

// Failed implements export.Observer.
func (u *Usage) Failed(kind export.Kind, n int) {
	u.failed.WithLabelValues(string(kind)).Add(float64(n))
}

// Backlog implements export.Observer.
func (u *Usage) Backlog(s usage.Stats) {
	u.backlog.Store(int64(s.Backlog))
	if s.Oldest.IsZero() {
		u.oldest.Store(0)
	} else {
		u.oldest.Store(s.Oldest.UnixNano())
	}
}

// OutboxError implements export.Observer.
func (u *Usage) OutboxError(op string, _ error) { u.outboxErr.WithLabelValues(op).Inc() }
