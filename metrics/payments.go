package metrics

import "github.com/prometheus/client_golang/prometheus"

// Payments counts machine payments (x402) by stage and outcome.
type Payments struct {
	events    *prometheus.CounterVec
	reconcile *prometheus.CounterVec
}

// Payments registers the payment collectors (once per Metrics).
func (m *Metrics) Payments() *Payments {
	m.paymentsOnce.Do(func() {
		p := &Payments{
			events: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "tollgate_payments_total",
				Help: "x402 payments by stage (challenge, admit, settle, topup) and outcome (offered; admitted, retry, refused, unavailable; settled, failed, unknown, upstream_failed, abandoned, missing; credited, credit_failed).",
			}, []string{"stage", "outcome"}),
			reconcile: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "tollgate_payment_reconciliations_total",
				Help: "Settlements whose outcome was unknown, looked at again, by outcome (settled, already_settled, failed, unknown, abandoned).",
			}, []string{"outcome"}),
		}
		m.Registry.MustRegister(p.events, p.reconcile)
		// Every known series from the start, at 0, so that an alert's
		// increase() sees the first event.
		for stage, outcomes := range paymentOutcomes {
			for _, o := range outcomes {
				p.events.WithLabelValues(stage, o)
			}
		}
		for _, o := range []string{"settled", "already_settled", "failed", "unknown", "abandoned"} {
			p.reconcile.WithLabelValues(o)
		}
		m.payments = p
	})
	return m.payments
}

// Observe counts one stage's outcome.
func (p *Payments) Observe(stage, outcome string) { p.events.WithLabelValues(stage, outcome).Inc() }

// Reconciled counts one reconciliation's outcome.
func (p *Payments) Reconciled(outcome string) { p.reconcile.WithLabelValues(outcome).Inc() }

// paymentOutcomes are the stages and outcomes payment.Gate reports.
var paymentOutcomes = map[string][]string{
	"challenge": {"offered"},
	"admit":     {"admitted", "retry", "refused", "unavailable"},
	"settle":    {"settled", "failed", "unknown", "upstream_failed", "abandoned", "missing"},
	"topup":     {"credited", "credit_failed"},
}
