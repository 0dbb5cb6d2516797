package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
)

// FieldError is a validation error at a config path such as "routes[2].feature".
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// Default actions for requests no route matches.
const (
	DefaultDeny          = "deny"          // 403 route_not_allowed
	DefaultAuthenticated = "authenticated" // any subject in good standing
	DefaultAllow         = "allow"         // public
)

// Plan is a compiled plan.
type Plan struct {
	Name       string
	Features   []string
	Quotas     map[string]*Quota
	UpgradeURL string
	// all lists the quotas with scope "all", spent by every non-public route.
	all []*Quota
}

// Has reports whether the plan includes feature f.
func (p *Plan) Has(f string) bool { return slices.Contains(p.Features, f) }

// Route is a compiled route.
type Route struct {
	Name    string
	Public  bool
	Feature string
	Quota   string
	Cost    int64
	// MaxCost bounds what one request may cost; 0: no bound but the limit.
	MaxCost int64
	// Meter, when set, settles and reports the request's actual use.
	Meter *Meter
	// Price is what one call costs by machine payment, a decimal amount
	// of the payments asset (config checks it); "" when not payable.
	Price string
	// costHeader, costExt and costBody read a per-request cost; Cost is
	// the fallback.
	costHeader, costExt string
	costBody            []string
	// PlansWithFeature lists, in file order, the plans that include Feature.
	PlansWithFeature []string

	host     string // lower-case; "" any
	hostWild bool   // host is a ".example.com" suffix
	methods  []string
	exact    string
	prefix   string
	pattern  []segment
	hasPath  bool
	ctxExt   map[string]string
}

// Request is what routes match on.
type Request struct {
	Host   string
	Method string
	// Path as Envoy sends it, query string included.
	Path              string
	ContextExtensions map[string]string
}

// Policy is a compiled Spec.
type Policy struct {
	routes        []*Route
	index         *routeIndex // nil for a few routes: a scan is quicker
	plans         map[string]*Plan
	defaultRoute  *Route // nil when the default is deny
	grace         time.Duration
	enforceEnd    bool
	upgradeURL    string
	planNames     []string
	featureOwners map[string][]string
}

// Compile validates spec and builds a Policy. All problems are returned, each
// a *FieldError naming the config path.
func Compile(spec Spec) (*Policy, []error) {
	var errs []error
	fail := func(path, msg string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Msg: fmt.Sprintf(msg, args...)})
	}
	p := &Policy{
		plans:         make(map[string]*Plan, len(spec.Plans)),
		grace:         spec.Billing.PastDueGrace,
		enforceEnd:    spec.Billing.EnforcePeriodEnd,
		upgradeURL:    spec.Billing.UpgradeURL,
		featureOwners: map[string][]string{},
	}
	if spec.Billing.PastDueGrace < 0 {
		fail("billing.past_due_grace", "must not be negative")
	}
	for _, ps := range spec.Plans {
		at := "plans." + ps.Name
		if ps.Name == "" {
			fail("plans", "a plan needs a name")
			continue
		}
		pl := &Plan{Name: ps.Name, Features: ps.Features, Quotas: map[string]*Quota{}, UpgradeURL: ps.UpgradeURL}
		for _, q := range sortedKeys(ps.Quotas) {
			cq, qerrs := compileQuota(at+".quotas."+q, q, ps.Quotas[q])
			errs = append(errs, qerrs...)
			pl.Quotas[q] = cq
			if cq.All {
				pl.all = append(pl.all, cq)
			}
		}
		if pl.UpgradeURL == "" {
			pl.UpgradeURL = p.upgradeURL
		}
		p.plans[ps.Name] = pl
		p.planNames = append(p.planNames, ps.Name)
		for _, f := range ps.Features {
			if !slices.Contains(p.featureOwners[f], ps.Name) {
				p.featureOwners[f] = append(p.featureOwners[f], ps.Name)
			}
		}
	}

	names := map[string]int{}
	for i, rs := range spec.Routes {
		at := fmt.Sprintf("routes[%d]", i)
		r, rerrs := compileRoute(at, rs)
		errs = append(errs, rerrs...)
		if r == nil {
			continue
		}
		if r.Name == "" {
			r.Name = fmt.Sprintf("route-%d", i)
		}
		if j, dup := names[r.Name]; dup {
			fail(at+".name", "%q is already the name of routes[%d]", r.Name, j)
		}
		names[r.Name] = i
		switch {
		case r.Public && r.Feature != "":
			fail(at+".feature", "a public route cannot require a feature")
		case r.Feature != "" && len(p.featureOwners[r.Feature]) == 0:
			fail(at+".feature", "%q is not a feature of any plan", r.Feature)
		}
		if r.Cost < 0 {
			fail(at+".cost", "must not be negative")
		}
		if r.Quota != "" && r.Quota != CreditsQuota && !p.quotaDeclared(r.Quota) {
			fail(at+".quota", "%q is not a quota of any plan", r.Quota)
		}
		r.PlansWithFeature = p.featureOwners[r.Feature]
		p.routes = append(p.routes, r)
	}

	if len(p.routes) >= indexMinRoutes {
		p.index = newRouteIndex(p.routes)
	}

	switch spec.Default {
	case "", DefaultDeny:
	case DefaultAuthenticated:
		p.defaultRoute = &Route{Name: "default"}
	case DefaultAllow:
		p.defaultRoute = &Route{Name: "default", Public: true}
	default:
		fail("default", "%q is not one of deny, authenticated, allow", spec.Default)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return p, nil
}

func (p *Policy) quotaDeclared(q string) bool {
	for _, pl := range p.plans {
		if _, ok := pl.Quotas[q]; ok {
			return true
		}
	}
	return false
}

func compileRoute(at string, rs RouteSpec) (*Route, []error) {
	var errs []error
	fail := func(path, msg string, args ...any) {
		errs = append(errs, &FieldError{Path: at + "." + path, Msg: fmt.Sprintf(msg, args...)})
	}
	r := &Route{
		Name: rs.Name, Public: rs.Public, Feature: rs.Feature, Quota: rs.Quota, Cost: 1,
		ctxExt:     rs.Match.ContextExtensions,
		costHeader: strings.ToLower(rs.CostFrom.Header), costExt: rs.CostFrom.ContextExtension,
	}
	if rs.Cost != nil {
		r.Cost = *rs.Cost
	}
	cf := rs.CostFrom
	if n := count(cf.Header != "", cf.ContextExtension != "", cf.Body != ""); n > 1 {
		fail("cost_from", "set one of header, context_extension or body")
	}
	if cf.Body != "" {
		r.costBody = strings.Split(cf.Body, ".")
		if slices.Contains(r.costBody, "") {
			fail("cost_from.body", "%q is not a member path such as max_tokens", cf.Body)
		}
	}
	if (cf.Header != "" || cf.ContextExtension != "" || cf.Body != "") && rs.Quota == "" {
		fail("cost_from", "a cost needs a quota to spend it from")
	}
	compileMaxCost(r, rs, fail)
	compileMeter(r, rs.Meter, fail)
	r.Price = strings.TrimSpace(rs.Price)
	if r.Price != "" && rs.Public {
		fail("price", "a public route is free: remove public or price")
	}
	if h := strings.ToLower(rs.Match.Host); h != "" {
		if rest, ok := strings.CutPrefix(h, "*."); ok {
			r.host, r.hostWild = "."+rest, true
		} else {
			r.host = h
		}
		if strings.ContainsAny(r.host, "*/ ") {
			fail("match.host", "%q: only a leading \"*.\" wildcard is supported", rs.Match.Host)
		}
	}
	for _, m := range rs.Match.Method {
		m = strings.ToUpper(m)
		if m == "" || strings.ContainsAny(m, " /") {
			fail("match.method", "%q is not an HTTP method", m)
		}
		r.methods = append(r.methods, m)
	}
	ps := rs.Match.Path
	set := 0
	for _, s := range []string{ps.Exact, ps.Prefix, ps.Pattern} {
		if s != "" {
			set++
		}
	}
	switch {
	case set > 1:
		fail("match.path", "set only one of exact, prefix, pattern")
	case ps.Exact != "":
		if !strings.HasPrefix(ps.Exact, "/") || strings.Contains(ps.Exact, "?") {
			fail("match.path.exact", "%q must start with / and hold no query", ps.Exact)
		}
		r.exact, r.hasPath = ps.Exact, true
	case ps.Prefix != "":
		if !strings.HasPrefix(ps.Prefix, "/") || strings.Contains(ps.Prefix, "?") {
			fail("match.path.prefix", "%q must start with / and hold no query", ps.Prefix)
		}
		r.prefix, r.hasPath = ps.Prefix, true
	case ps.Pattern != "":
		segs, err := compilePattern(ps.Pattern)
		if err != nil {
			fail("match.path.pattern", "%v", err)
		}
		r.pattern, r.hasPath = segs, true
	}
	if rs.Public && rs.Quota != "" {
		fail("quota", "a public route has no subject to charge")
	}
	return r, errs
}

// Match returns the first route that req matches, or the default route, or
// nil when nothing matches and the default is deny.
func (p *Policy) Match(req *Request) *Route {
	path := req.Path
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	host := hostOnly(req.Host)
	if p.index != nil {
		if i := p.index.first(p.routes, host, req.Method, path, req.ContextExtensions); i >= 0 {
			return p.routes[i]
		}
		return p.defaultRoute
	}
	for _, r := range p.routes {
		if r.matches(host, req.Method, path, req.ContextExtensions) {
			return r
		}
	}
	return p.defaultRoute
}

// indexMinRoutes is where the index starts to beat a scan even when an
// early route matches (BenchmarkMatchIndexVsScan).
const indexMinRoutes = 8

// routeIndex finds the candidate routes for a path without trying every
// route. Each route's path match starts with a literal: the exact path, the
// prefix, a pattern's text before its first wildcard, or "" for a route
// that matches any path. A route can match only a path that starts with
// its literal, so Match looks up the path's own prefixes, one for each
// length some literal has, and tries only the routes found, in file order.
type routeIndex struct {
	lens  []int            // the literals' lengths, ascending
	byLit map[string][]int // literal → indexes of its routes, ascending
}

func newRouteIndex(routes []*Route) *routeIndex {
	x := &routeIndex{byLit: map[string][]int{}}
	for i, r := range routes {
		lit := r.literal()
		if _, ok := x.byLit[lit]; !ok && !slices.Contains(x.lens, len(lit)) {
			x.lens = append(x.lens, len(lit))
		}
		x.byLit[lit] = append(x.byLit[lit], i)
	}
	slices.Sort(x.lens)
	return x
}

// first is the index of the first route that matches, or -1.
func (x *routeIndex) first(routes []*Route, host, method, path string, ext map[string]string) int {
	best := -1
	for _, l := range x.lens {
		if l > len(path) {
			break
		}
		for _, i := range x.byLit[path[:l]] {
			if best >= 0 && i > best {
				break // an earlier route already matched
			}
			if routes[i].matches(host, method, path, ext) {
				best = i
				break
			}
		}
	}
	return best
}

// literal is the text every path this route matches starts with.
func (r *Route) literal() string {
	switch {
	case !r.hasPath:
		return ""
	case r.exact != "":
		return r.exact
	case r.prefix != "":
		return r.prefix
	}
	var b strings.Builder
	for i, sg := range r.pattern {
		if sg.kind != segLiteral {
			break
		}
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(sg.lit)
	}
	// A path always starts with "/": the pattern's segments follow it.
	return "/" + b.String()
}

func (r *Route) matches(host, method, path string, ext map[string]string) bool {
	if r.host != "" {
		if r.hostWild {
			if len(host) <= len(r.host) || !strings.EqualFold(host[len(host)-len(r.host):], r.host) {
				return false
			}
		} else if !strings.EqualFold(host, r.host) {
			return false
		}
	}
	if len(r.methods) > 0 && !slices.Contains(r.methods, method) {
		return false
	}
	if r.hasPath {
		switch {
		case r.exact != "":
			if path != r.exact {
				return false
			}
		case r.prefix != "":
			if !pathHasPrefix(path, r.prefix) {
				return false
			}
		default:
			if !matchPattern(r.pattern, path) {
				return false
			}
		}
	}
	for k, v := range r.ctxExt {
		if got, ok := ext[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// pathHasPrefix matches on segment boundaries: prefix /v1/search matches
// /v1/search and /v1/search/x but not /v1/searchable. A prefix ending in /
// matches anything under it.
func pathHasPrefix(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || prefix[len(prefix)-1] == '/' || path[len(prefix)] == '/'
}

// hostOnly strips a port from a host or [v6]:port authority.
func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		return h[:i]
	}
	return h
}

// Plan returns the named plan, or nil.
func (p *Policy) Plan(name string) *Plan { return p.plans[name] }

// PlanNames lists the plans in file order.
func (p *Policy) PlanNames() []string { return p.planNames }

// Routes lists the compiled routes in order.
func (p *Policy) Routes() []*Route { return p.routes }

// UpgradeURL is the default upgrade link.
func (p *Policy) UpgradeURL() string { return p.upgradeURL }

// CheckEntitlement vets a record against the policy (for entitlement sources
// that can reject bad data at load). It returns the offending field.
func (p *Policy) CheckEntitlement(e *entitlement.Entitlement) (string, error) {
	if _, ok := p.plans[e.Plan]; !ok {
		return "plan", fmt.Errorf("%q is not a plan (want one of %s)", e.Plan, strings.Join(p.planNames, ", "))
	}
	for i, f := range e.Features {
		if len(p.featureOwners[f]) == 0 && !p.routeFeature(f) {
			return fmt.Sprintf("features[%d]", i), fmt.Errorf("%q is not a feature any route requires", f)
		}
	}
	return "", nil
}

func (p *Policy) routeFeature(f string) bool {
	for _, r := range p.routes {
		if r.Feature == f {
			return true
		}
	}
	return false
}

// count is how many of bs are true.
func count(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}
