// Package metrics holds tollgate's Prometheus collectors. Series for every
// code and cache outcome are created up front, so the hot path only adds to
// counters it already holds (no label lookups, no allocation).
package metrics

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/policy"
)

// Metrics records what tollgate does.
type Metrics struct {
	Registry *prometheus.Registry

	checks   [3][]prometheus.Counter // by decision (allow, deny, shadow_deny), then code
	latency  prometheus.Observer
	cacheOut []prometheus.Counter // by entitlement.CacheOutcome
	srcErr   *prometheus.CounterVec
	reloads  *prometheus.CounterVec
	quotas   *prometheus.CounterVec
	quotaBy  children[*[len(quotaOutcomes)]prometheus.Counter]
	invalid  *prometheus.CounterVec
	srcCalls *prometheus.CounterVec
	srcLat   *prometheus.HistogramVec
	srcBy    children[*sourceSeries]
	breaker  *prometheus.GaugeVec
	qsMode   *prometheus.GaugeVec
	qPolicy  *prometheus.GaugeVec
	qBack    *prometheus.CounterVec
	lastOK   *prometheus.GaugeVec
	entries  prometheus.GaugeFunc

	usageOnce sync.Once
	usage     *Usage

	paymentsOnce sync.Once
	payments     *Payments
}

const (
	decAllow = iota
	decDeny
	decShadowDeny
)

var decisionNames = [3]string{"allow", "deny", "shadow_deny"}

// New registers every collector on a fresh registry. cacheLen, when set,
// reports how many records the entitlement cache holds.
func New(version string, cacheLen func() int) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{Registry: reg}

	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_checks_total",
		Help: "Checks answered, by decision (allow, deny, shadow_deny) and code.",
	}, []string{"decision", "code"})
	for d, dn := range decisionNames {
		m.checks[d] = make([]prometheus.Counter, len(policy.Codes))
		for _, c := range policy.Codes {
			if (d == decAllow) != (c == policy.OK) {
				continue
			}
			m.checks[d][c] = checks.WithLabelValues(dn, c.String())
		}
	}
	lat := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tollgate_check_duration_seconds",
		Help:    "Time to decide a Check inside tollgate, from request to response.",
		Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 200e-3},
	})
	m.latency = lat
	co := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_entitlement_cache_total",
		Help: "Entitlement lookups by cache outcome (hit, negative_hit, miss, stale, error, suspect_not_found).",
	}, []string{"outcome"})
	for _, o := range entitlement.CacheOutcomes {
		m.cacheOut = append(m.cacheOut, co.WithLabelValues(o.String()))
	}
	m.srcErr = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_entitlement_source_errors_total",
		Help: "Entitlement source calls that failed (served stale or answered 503).",
	}, []string{"source"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_reloads_total",
		Help: "File reloads by file (config, entitlements) and result (ok, error).",
	}, []string{"file", "result"})
	m.lastOK = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tollgate_reload_last_success_timestamp_seconds",
		Help: "When each file last loaded successfully.",
	}, []string{"file"})
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tollgate_build_info",
		Help: "Always 1; the version label says which build is running.",
	}, []string{"version"})
	info.WithLabelValues(version).Set(1)
	for _, f := range []string{"config", "entitlements", "tls"} {
		for _, r := range []string{"ok", "error"} {
			m.reloads.WithLabelValues(f, r)
		}
	}
	m.quotas = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_quota_spends_total",
		Help: "Quota and credit spends by quota and outcome (allowed, exhausted, error).",
	}, []string{"quota", "outcome"})
	m.invalid = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_entitlement_invalidations_total",
		Help: "Cache invalidations by path (admin, webhook, pubsub).",
	}, []string{"via"})
	m.srcCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_entitlement_source_calls_total",
		Help: "Calls to the entitlement source by source and outcome (ok, not_found, error).",
	}, []string{"source", "outcome"})
	m.srcLat = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tollgate_entitlement_source_call_duration_seconds",
		Help:    "Time of each entitlement source call.",
		Buckets: []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 200e-3, 500e-3},
	}, []string{"source"})
	m.breaker = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tollgate_entitlement_source_breaker_state",
		Help: "1 for the circuit breaker's current state (closed, open, half_open), 0 for the others.",
	}, []string{"source", "state"})
	m.qsMode = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tollgate_quota_store_mode",
		Help: "1 for the quota store's current mode: memory, redis_primary, or redis_degraded (Redis down: each quota's on_store_error policy in effect).",
	}, []string{"mode"})
	m.qPolicy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tollgate_quota_failure_policy",
		Help: "1 per quota and the policy it follows while the shared store is down (closed or open).",
	}, []string{"quota", "policy"})
	m.qBack = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_quota_write_back_units_total",
		Help: "Units spent on fail-open quotas while Redis was down, copied to Redis when it returned (result ok), or not yet copied (error: kept for the next return).",
	}, []string{"result"})
	m.qBack.WithLabelValues("ok")
	m.qBack.WithLabelValues("error")
	reg.MustRegister(checks, lat, co, m.srcErr, m.reloads, m.lastOK, info, m.quotas, m.invalid,
		m.srcCalls, m.srcLat, m.breaker, m.qsMode, m.qPolicy, m.qBack)
	if cacheLen != nil {
		m.entries = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tollgate_entitlement_cache_entries",
			Help: "Records (found and not found) held by the entitlement cache.",
		}, func() float64 { return float64(cacheLen()) })
		reg.MustRegister(m.entries)
	}
	return m
}

var _ authz.Observer = (*Metrics)(nil)

// ObserveCheck implements authz.Observer.
func (m *Metrics) ObserveCheck(r *authz.Result) {
	d := decDeny
	switch {
	case r.Shadow:
		d = decShadowDeny
	case r.Allowed:
		d = decAllow
	}
	if c := m.checks[d][r.Code]; c != nil {
		c.Inc()
	}
	m.latency.Observe(r.Duration.Seconds())
	if r.Looked {
		m.cacheOut[r.Cache].Inc()
	}
}

// quotaOutcomes are the outcomes ObserveQuota is told of.
var quotaOutcomes = [...]string{"allowed", "exhausted", "error"}

// ObserveQuota implements authz.Observer. It runs for every spend, so the
// series of a quota are looked up once and held (see children).
func (m *Metrics) ObserveQuota(quota, outcome string) {
	i := slices.Index(quotaOutcomes[:], outcome)
	if i < 0 {
		m.quotas.WithLabelValues(quota, outcome).Inc()
		return
	}
	m.quotaBy.get(quota, func() *[len(quotaOutcomes)]prometheus.Counter {
		var cs [len(quotaOutcomes)]prometheus.Counter
		for j, o := range quotaOutcomes {
			cs[j] = m.quotas.WithLabelValues(quota, o)
		}
		return &cs
	})[i].Inc()
}

// sourceOutcomes are the outcomes SourceCall is told of.
var sourceOutcomes = [...]string{"ok", "not_found", "error"}

// sourceSeries are one source's call counters (by sourceOutcomes) and its
// call-time histogram.
type sourceSeries struct {
	calls   [len(sourceOutcomes)]prometheus.Counter
	latency prometheus.Observer
}

// SourceCall records one entitlement source call.
func (m *Metrics) SourceCall(source, outcome string, d time.Duration) {
	s := m.srcBy.get(source, func() *sourceSeries {
		s := &sourceSeries{latency: m.srcLat.WithLabelValues(source)}
		for j, o := range sourceOutcomes {
			s.calls[j] = m.srcCalls.WithLabelValues(source, o)
		}
		return s
	})
	if i := slices.Index(sourceOutcomes[:], outcome); i >= 0 {
		s.calls[i].Inc()
	} else {
		m.srcCalls.WithLabelValues(source, outcome).Inc()
	}
	s.latency.Observe(d.Seconds())
}

// children holds the series of a metric vector by one label value (a quota
// or source name, from config: a bounded set). A read is a plain map lookup,
// without the hashing and the vector's lock that WithLabelValues takes on
// every call; a new label value copies the map.
type children[T any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[string]T]
}

// get returns the series for label, made by mk the first time.
func (c *children[T]) get(label string, mk func() T) T {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[label]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[label]; ok {
			return v
		}
	}
	next := make(map[string]T, 1)
	if old != nil {
		next = maps.Clone(*old)
	}
	v := mk()
	next[label] = v
	c.m.Store(&next)
	return v
}

// BreakerState records a source's circuit-breaker state.
func (m *Metrics) BreakerState(source, state string) {
	oneHot(state, []string{"closed", "open", "half_open"}, func(s string, v float64) {
		m.breaker.WithLabelValues(source, s).Set(v)
	})
}

// QuotaStoreMode records the quota store's mode.
func (m *Metrics) QuotaStoreMode(mode string) {
	oneHot(mode, []string{"memory", "redis_primary", "redis_degraded"}, func(s string, v float64) {
		m.qsMode.WithLabelValues(s).Set(v)
	})
}

// QuotaWriteBack records one copy of local spends into Redis.
func (m *Metrics) QuotaWriteBack(units int64, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.qBack.WithLabelValues(result).Add(float64(units))
}

// QuotaPolicies records each quota's failure policy (quota name → closed/open).
func (m *Metrics) QuotaPolicies(p map[string]string) {
	m.qPolicy.Reset()
	for q, pol := range p {
		m.qPolicy.WithLabelValues(q, pol).Set(1)
	}
}

// ShedCounter exposes how many Checks were shed for being over max_in_flight.
func (m *Metrics) ShedCounter(shed func() int64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tollgate_checks_shed_total",
		Help: "Checks answered 503 at once because more than server.max_in_flight were being decided.",
	}, func() float64 { return float64(shed()) }))
}

// LogDropped exposes how many log lines were dropped because the log sink
// was slower than the Checks writing to it (or refused the write).
func (m *Metrics) LogDropped(dropped func() int64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tollgate_log_dropped_total",
		Help: "Log lines dropped because the log sink (stderr) was slow, full or closed; a Check never waits for its log line.",
	}, func() float64 { return float64(dropped()) }))
}

// Invalidated counts one invalidation request arriving by via.
func (m *Metrics) Invalidated(via string) { m.invalid.WithLabelValues(via).Inc() }

// SourceError counts a failed call to the named entitlement source.
func (m *Metrics) SourceError(source string) { m.srcErr.WithLabelValues(source).Inc() }

// Reloaded records a reload of file ("config" or "entitlements").
func (m *Metrics) Reloaded(file string, err error, unixTime float64) {
	if err != nil {
		m.reloads.WithLabelValues(file, "error").Inc()
		return
	}
	m.reloads.WithLabelValues(file, "ok").Inc()
	m.lastOK.WithLabelValues(file).Set(unixTime)
}

// oneHot sets 1 for the current state and 0 for every other.
func oneHot(current string, all []string, set func(state string, v float64)) {
	for _, s := range all {
		v := 0.0
		if s == current {
			v = 1
		}
		set(s, v)
	}
}
