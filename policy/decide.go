package policy

import (
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
)

// Decision is the outcome of Decide: OK, or the reason for a refusal and the
// facts the caller needs to act on it.
type Decision struct {
	Code  Code
	Route *Route
	// Entitlement is the subject's record; nil before identity is known.
	Entitlement *entitlement.Entitlement
	// Plan is the subject's plan, nil if the record names an unknown plan.
	Plan *Plan
	// Feature the route requires, and the plans that include it (denials only).
	Feature          string
	PlansWithFeature []string
	UpgradeURL       string
	// Spends are the counters the request spent on (allowed) or tried to
	// (refused by quota); Used is each counter's use after the attempt, and
	// Denied is the index of the spend that did not fit, or -1.
	Spends []Spend
	Used   []int64
	Denied int
}

// DeniedSpend returns the spend that refused the request and its counter's
// use, or nil when the refusal (if any) was not for quota or credits.
func (d *Decision) DeniedSpend() (*Spend, int64) {
	switch d.Code {
	case QuotaExhausted, RateLimited, InsufficientCredits:
		if d.Denied >= 0 && d.Denied < len(d.Spends) {
			return &d.Spends[d.Denied], d.Used[d.Denied]
		}
	}
	return nil, 0
}

// Allowed reports whether the request may pass.
func (d *Decision) Allowed() bool { return d.Code == OK }

// Decide says whether the subject with record e may use route r at time now.
// It is pure: same inputs, same answer.
func (p *Policy) Decide(r *Route, e *entitlement.Entitlement, now time.Time) Decision {
	d := Decision{Code: OK, Route: r, Entitlement: e, UpgradeURL: p.upgradeURL, Denied: -1}
	if r == nil {
		d.Code = RouteNotAllowed
		return d
	}
	if r.Public {
		return d
	}
	pl := p.plans[e.Plan]
	d.Plan = pl
	if pl != nil && pl.UpgradeURL != "" {
		d.UpgradeURL = pl.UpgradeURL
	}
	if c := p.standing(e, now); c != OK {
		d.Code = c
		return d
	}
	if r.Feature != "" && (pl == nil || !pl.Has(r.Feature)) && !e.HasFeature(r.Feature) {
		d.Code = FeatureNotInPlan
		d.Feature = r.Feature
		d.PlansWithFeature = r.PlansWithFeature
	}
	return d
}

// standing checks the subscription state.
func (p *Policy) standing(e *entitlement.Entitlement, now time.Time) Code {
	switch e.Status {
	case entitlement.StatusActive, entitlement.StatusTrialing:
		if p.enforceEnd && !e.PeriodEnd.IsZero() && !now.Before(e.PeriodEnd) {
			return SubscriptionInactive
		}
		return OK
	case entitlement.StatusPastDue:
		if p.grace > 0 && !e.PastDueSince.IsZero() && now.Before(e.PastDueSince.Add(p.grace)) {
			return OK
		}
		return PaymentFailed
	case entitlement.StatusUnpaid:
		return PaymentFailed
	default: // canceled, incomplete, incomplete_expired, paused, and anything unknown
		return SubscriptionInactive
	}
}
