package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/period"
)

// CreditsQuota is the reserved quota name for the subject's prepaid balance.
const CreditsQuota = "credits"

// Quota is a compiled plan quota.
type Quota struct {
	Name     string
	Limit    int64
	Period   period.Period
	Billing  bool // months start at the subject's period_start
	All      bool // spent by every non-public route
	FailOpen bool // count locally while the shared store is down
}

func compileQuota(at, name string, qs QuotaSpec) (*Quota, []error) {
	var errs []error
	fail := func(path, msg string, args ...any) {
		errs = append(errs, &FieldError{Path: at + path, Msg: fmt.Sprintf(msg, args...)})
	}
	q := &Quota{Name: name, Limit: qs.Limit}
	if name == CreditsQuota {
		fail("", "%q is reserved for the prepaid balance", name)
	}
	if !validQuotaName(name) {
		fail("", "%q: a quota name is lower-case letters, digits, _ and -", name)
	}
	if qs.Limit < 0 {
		fail(".limit", "must not be negative")
	}
	p, err := period.Parse(qs.Period)
	if err != nil {
		fail(".period", "%v", err)
	}
	q.Period = p
	switch qs.Align {
	case "", "calendar":
	case "billing":
		q.Billing = true
		if p != period.Month {
			fail(".align", "billing alignment applies to month quotas only")
		}
	default:
		fail(".align", "%q is not calendar or billing", qs.Align)
	}
	switch qs.Scope {
	case "", "route":
	case "all":
		q.All = true
	default:
		fail(".scope", "%q is not route or all", qs.Scope)
	}
	switch qs.OnStoreError {
	case "", "closed":
	case "open":
		q.FailOpen = true
	default:
		fail(".on_store_error", "%q is not closed or open", qs.OnStoreError)
	}
	return q, errs
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Spend is one counter a request spends on.
type Spend struct {
	Quota   string        // the quota's name, or CreditsQuota
	Period  period.Period // 0 for credits
	Credits bool
	// Counter names the counter within the subject: the quota name, or for
	// credits the name and the balance, so that a new balance written by the
	// billing system starts a new count (see docs/quotas.md: credits).
	Counter string
	Limit   int64
	Cost    int64
	// MaxCost is the route's max_cost for the route's own spend; 0: none.
	MaxCost  int64
	Start    time.Time
	Reset    time.Time
	FailOpen bool
}

// TooLarge reports whether the spend can never be admitted, whatever the
// counter holds: its cost is above the route's max_cost, or above the whole
// limit of a quota. A limit of 0 (a quota the plan lacks, or one zeroed for
// the subject) is left to the store, which refuses it as exhausted; so are
// credits, whose balance can be topped up.
func (s *Spend) TooLarge() bool {
	if s.MaxCost > 0 && s.Cost > s.MaxCost {
		return true
	}
	return !s.Credits && s.Limit > 0 && s.Cost > s.Limit
}

// TooLargeSpend returns the spend a CostTooLarge refusal names, or nil.
func (d *Decision) TooLargeSpend() *Spend {
	if d.Code == CostTooLarge && d.Denied >= 0 && d.Denied < len(d.Spends) {
		return &d.Spends[d.Denied]
	}
	return nil
}

// FirstTooLarge returns the index of the first spend that is TooLarge, or
// -1. The caller refuses such a request with CostTooLarge without asking
// the store: no counter is touched.
func FirstTooLarge(spends []Spend) int {
	for i := range spends {
		if spends[i].TooLarge() {
			return i
		}
	}
	return -1
}

// DenialCode is the code for a request this spend did not fit.
func (s *Spend) DenialCode() Code {
	switch {
	case s.Credits:
		return InsufficientCredits
	case s.Period.IsRateLimit():
		return RateLimited
	}
	return QuotaExhausted
}

// RequestView gives the request fields a cost may be read from.
type RequestView interface {
	Header(name string) (string, bool)
}

// BodyView is a RequestView that also has the request's body (as much as
// Envoy sent), for cost_from.body.
type BodyView interface {
	Body() string
}

// creditsHorizon bounds a credits counter with no billing period.
const creditsHorizon = 31 * 24 * time.Hour

// Spends appends to out what a request on route r by the subject with record
// e spends at now: the plan's scope-all quotas, then the route's quota. It is
// pure; ext are the Check's context_extensions.
func (p *Policy) Spends(r *Route, e *entitlement.Entitlement, now time.Time, req RequestView, ext map[string]string, out []Spend) []Spend {
	if r == nil || r.Public || e == nil {
		return out
	}
	pl := p.plans[e.Plan]
	if pl != nil {
		for _, q := range pl.all {
			if q.Name != r.Quota {
				out = append(out, p.quotaSpend(q, e, now, 1))
			}
		}
	}
	if r.Quota == "" {
		return out
	}
	cost := r.cost(req, ext)
	if r.Quota == CreditsQuota {
		sp := CreditsCounter(e, now)
		sp.Cost, sp.MaxCost = cost, r.MaxCost
		return append(out, sp)
	}
	if pl == nil {
		// An unknown plan declares no quotas: nothing to spend from.
		return append(out, Spend{Quota: r.Quota, Period: period.Month, Counter: r.Quota, Limit: 0, Cost: cost, MaxCost: r.MaxCost, Start: now, Reset: now.Add(time.Hour)})
	}
	q := pl.Quotas[r.Quota]
	if q == nil {
		// This plan lacks the quota another plan declares: it has none of it.
		start, reset := period.Window(period.Month, now, time.Time{})
		return append(out, Spend{Quota: r.Quota, Period: period.Month, Counter: r.Quota, Limit: 0, Cost: cost, MaxCost: r.MaxCost, Start: start, Reset: reset})
	}
	sp := p.quotaSpend(q, e, now, cost)
	sp.MaxCost = r.MaxCost
	return append(out, sp)
}

func (p *Policy) quotaSpend(q *Quota, e *entitlement.Entitlement, now time.Time, cost int64) Spend {
	var anchor time.Time
	if q.Billing {
		anchor = e.PeriodStart
	}
	start, reset := period.Window(q.Period, now, anchor)
	limit := q.Limit
	if v, ok := e.Quotas[q.Name]; ok {
		limit = v
	}
	return Spend{
		Quota: q.Name, Period: q.Period, Counter: q.Name, Limit: limit, Cost: cost,
		Start: start, Reset: reset, FailOpen: q.FailOpen,
	}
}

// cost reads the request's cost, falling back to the route's fixed cost.
func (r *Route) cost(req RequestView, ext map[string]string) int64 {
	var v string
	var ok bool
	switch {
	case r.costHeader != "" && req != nil:
		v, ok = req.Header(r.costHeader)
	case r.costExt != "":
		v, ok = ext[r.costExt]
	case r.costBody != nil && req != nil:
		if bv, isBody := req.(BodyView); isBody {
			v, ok = jsonNumber(bv.Body(), r.costBody)
		}
	}
	if ok {
		return parseCost(v, r.Cost)
	}
	return r.Cost
}

// parseCost reads a cost sent with a request: a non-negative decimal
// integer, with spaces around it. An integer too large for int64 is
// math.MaxInt64, which no quota admits: a client must not get a huge cost
// counted as the fallback. Anything else, negative numbers included, is
// fallback.
func parseCost(v string, fallback int64) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	switch {
	case err == nil && n >= 0:
		return n
	case errors.Is(err, strconv.ErrRange) && n > 0:
		return math.MaxInt64
	}
	return fallback
}

// compileMaxCost reads the route's max_cost.
func compileMaxCost(r *Route, rs RouteSpec, fail func(path, msg string, args ...any)) {
	if rs.MaxCost == nil {
		return
	}
	switch m := *rs.MaxCost; {
	case m < 1:
		fail("max_cost", "must be at least 1")
	case rs.Quota == "":
		fail("max_cost", "a cost needs a quota to spend it from")
	case r.Cost > m:
		fail("cost", "%d is above max_cost %d", r.Cost, m)
	default:
		r.MaxCost = m
	}
}

// validQuotaName keeps names safe to quote in RateLimit header fields.
func validQuotaName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// QuotaPolicies maps each declared quota to its failure policy, "closed" or
// "open" (open if any plan declares it open).
func (p *Policy) QuotaPolicies() map[string]string {
	out := map[string]string{}
	for _, pl := range p.plans {
		for name, q := range pl.Quotas {
			if q.FailOpen {
				out[name] = "open"
			} else if out[name] == "" {
				out[name] = "closed"
			}
		}
	}
	return out
}

// jsonNumber is the number at path in a JSON object body, as written.
func jsonNumber(body string, path []string) (string, bool) {
	if body == "" {
		return "", false
	}
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return "", false
	}
	for _, k := range path {
		o, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = o[k]; !ok {
			return "", false
		}
	}
	n, ok := v.(json.Number)
	return n.String(), ok
}

// Counters lists the counters a subject with record e spends on at now:
// each quota of its plan (with the subject's overrides) and, when it has a
// balance, its credits. They are what `tollgate usage` and GET /v1/usage
// report, with their use read from the store.
func (p *Policy) Counters(e *entitlement.Entitlement, now time.Time) []Spend {
	var out []Spend
	if pl := p.plans[e.Plan]; pl != nil {
		for _, name := range sortedKeys(pl.Quotas) {
			out = append(out, p.quotaSpend(pl.Quotas[name], e, now, 0))
		}
	}
	if e.Credits != nil {
		out = append(out, CreditsCounter(e, now))
	}
	return out
}

// CreditsCounter is the counter of e's credits at now: its use is what was
// spent since the source reported the balance (Limit), and a top-up bought
// here lowers it below zero.
func CreditsCounter(e *entitlement.Entitlement, now time.Time) Spend {
	var bal int64
	if e.Credits != nil {
		bal = *e.Credits
	}
	reset := e.PeriodEnd
	if reset.IsZero() || !now.Before(reset) {
		// Whole seconds, as a reservation keeps them.
		reset = now.Add(creditsHorizon).Truncate(time.Second)
	}
	return Spend{Quota: CreditsQuota, Credits: true, Counter: CreditsQuota + "/" + strconv.FormatInt(bal, 10),
		Limit: bal, Start: e.PeriodStart, Reset: reset}
}
