package policy

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
)

func mustCompile(t testing.TB, spec Spec) *Policy {
	t.Helper()
	p, errs := Compile(spec)
	if len(errs) > 0 {
		t.Fatalf("Compile: %v", errs)
	}
	return p
}

func demoSpec() Spec {
	return Spec{
		Plans: Plans{
			{Name: "free", Features: []string{"search"}},
			{Name: "pro", Features: []string{"search", "chat"}},
			{Name: "enterprise", Features: []string{"search", "chat", "export"}, UpgradeURL: "https://sales.example.com"},
		},
		Routes: []RouteSpec{
			{Name: "health", Match: MatchSpec{Path: PathSpec{Exact: "/healthz"}}, Public: true},
			{Name: "search", Match: MatchSpec{Method: StringList{"GET"}, Path: PathSpec{Prefix: "/v1/search"}}, Feature: "search"},
			{Name: "chat", Match: MatchSpec{Method: StringList{"POST"}, Path: PathSpec{Prefix: "/v1/chat"}}, Feature: "chat"},
			{Name: "beta-chat", Match: MatchSpec{Path: PathSpec{Pattern: "/v2/models/{model}/chat"}, ContextExtensions: map[string]string{"tier": "beta"}}, Feature: "export"},
			{Name: "models", Match: MatchSpec{Path: PathSpec{Pattern: "/v2/models/*/chat"}}, Feature: "chat"},
			{Name: "files", Match: MatchSpec{Host: "*.files.example.com", Path: PathSpec{Pattern: "/f/**"}}, Feature: "search"},
			{Name: "admin", Match: MatchSpec{Host: "admin.example.com"}, Feature: "export"},
		},
		Billing: BillingSpec{UpgradeURL: "https://billing.example.com"},
	}
}

func TestMatch(t *testing.T) {
	p := mustCompile(t, demoSpec())
	tests := []struct {
		name string
		req  Request
		want string // route name, "" for none
	}{
		{"exact", Request{Method: "GET", Path: "/healthz"}, "health"},
		{"exact ignores query", Request{Method: "GET", Path: "/healthz?x=1"}, "health"},
		{"exact is exact", Request{Method: "GET", Path: "/healthz/x"}, ""},
		{"prefix", Request{Method: "GET", Path: "/v1/search"}, "search"},
		{"prefix below", Request{Method: "GET", Path: "/v1/search/deep?q=1"}, "search"},
		{"prefix on segment boundary", Request{Method: "GET", Path: "/v1/searchable"}, ""},
		{"method mismatch", Request{Method: "POST", Path: "/v1/search"}, ""},
		{"pattern", Request{Method: "POST", Path: "/v2/models/gpt/chat"}, "models"},
		{"pattern with context extension", Request{Method: "POST", Path: "/v2/models/gpt/chat", ContextExtensions: map[string]string{"tier": "beta"}}, "beta-chat"},
		{"context extension value differs", Request{Method: "POST", Path: "/v2/models/gpt/chat", ContextExtensions: map[string]string{"tier": "ga"}}, "models"},
		{"pattern needs a segment", Request{Method: "POST", Path: "/v2/models//chat"}, ""},
		{"pattern too long", Request{Method: "POST", Path: "/v2/models/gpt/chat/x"}, ""},
		{"pattern too short", Request{Method: "POST", Path: "/v2/models/gpt"}, ""},
		{"host wildcard and rest", Request{Host: "eu.files.example.com:8443", Method: "GET", Path: "/f/a/b/c"}, "files"},
		{"rest matches empty", Request{Host: "eu.files.example.com", Method: "GET", Path: "/f"}, "files"},
		{"host wildcard needs a label", Request{Host: "files.example.com", Method: "GET", Path: "/f/a"}, ""},
		{"host case-insensitive", Request{Host: "ADMIN.example.com", Method: "DELETE", Path: "/anything"}, "admin"},
		{"path without slash", Request{Method: "GET", Path: "healthz"}, ""},
		{"empty path", Request{Method: "GET", Path: ""}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if r := p.Match(&tt.req); r != nil {
				got = r.Name
			}
			if got != tt.want {
				t.Errorf("Match(%+v) = %q, want %q", tt.req, got, tt.want)
			}
		})
	}
}

func TestDefaultAction(t *testing.T) {
	tests := []struct {
		def        string
		wantRoute  bool
		wantPublic bool
	}{
		{"", false, false},
		{"deny", false, false},
		{"authenticated", true, false},
		{"allow", true, true},
	}
	for _, tt := range tests {
		spec := demoSpec()
		spec.Default = tt.def
		r := mustCompile(t, spec).Match(&Request{Method: "GET", Path: "/nowhere"})
		if got := r != nil; got != tt.wantRoute {
			t.Fatalf("default %q: route found = %v, want %v", tt.def, got, tt.wantRoute)
		}
		if r != nil && r.Public != tt.wantPublic {
			t.Errorf("default %q: public = %v, want %v", tt.def, r.Public, tt.wantPublic)
		}
	}
}

func TestDecide(t *testing.T) {
	p0 := mustCompile(t, demoSpec())
	graceSpec := demoSpec()
	graceSpec.Billing.PastDueGrace = 72 * time.Hour
	graceSpec.Billing.EnforcePeriodEnd = true
	pg := mustCompile(t, graceSpec)
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	route := func(p *Policy, name string) *Route {
		for _, r := range p.Routes() {
			if r.Name == name {
				return r
			}
		}
		t.Fatalf("no route %s", name)
		return nil
	}
	ent := func(plan string, st entitlement.Status, mod ...func(*entitlement.Entitlement)) *entitlement.Entitlement {
		e := &entitlement.Entitlement{Subject: "s", Plan: plan, Status: st}
		for _, m := range mod {
			m(e)
		}
		return e
	}
	tests := []struct {
		name      string
		p         *Policy
		route     string
		e         *entitlement.Entitlement
		want      Code
		wantPlans string
		wantURL   string
	}{
		{"free may search", p0, "search", ent("free", "active"), OK, "", ""},
		{"free may not chat", p0, "chat", ent("free", "active"), FeatureNotInPlan, "pro,enterprise", "https://billing.example.com"},
		{"add-on feature", p0, "chat", ent("free", "active", func(e *entitlement.Entitlement) { e.Features = []string{"chat"} }), OK, "", ""},
		{"plan upgrade url wins", p0, "chat", ent("enterprise", "canceled"), SubscriptionInactive, "", "https://sales.example.com"},
		{"pro may chat", p0, "chat", ent("pro", "active"), OK, "", ""},
		{"trialing", p0, "chat", ent("pro", "trialing"), OK, "", ""},
		{"past_due", p0, "search", ent("pro", "past_due"), PaymentFailed, "", ""},
		{"unpaid", p0, "search", ent("pro", "unpaid"), PaymentFailed, "", ""},
		{"canceled", p0, "search", ent("pro", "canceled"), SubscriptionInactive, "", ""},
		{"incomplete", p0, "search", ent("pro", "incomplete"), SubscriptionInactive, "", ""},
		{"incomplete_expired", p0, "search", ent("pro", "incomplete_expired"), SubscriptionInactive, "", ""},
		{"paused", p0, "search", ent("pro", "paused"), SubscriptionInactive, "", ""},
		{"status before feature", p0, "chat", ent("free", "past_due"), PaymentFailed, "", ""},
		{"unknown plan has no features", p0, "chat", ent("gold", "active"), FeatureNotInPlan, "pro,enterprise", ""},
		{"public needs nothing", p0, "health", nil, OK, "", ""},
		{"past_due inside grace", pg, "search", ent("pro", "past_due", func(e *entitlement.Entitlement) { e.PastDueSince = now.Add(-71 * time.Hour) }), OK, "", ""},
		{"past_due after grace", pg, "search", ent("pro", "past_due", func(e *entitlement.Entitlement) { e.PastDueSince = now.Add(-72 * time.Hour) }), PaymentFailed, "", ""},
		{"past_due grace needs a start", pg, "search", ent("pro", "past_due"), PaymentFailed, "", ""},
		{"period ended, enforced", pg, "search", ent("pro", "active", func(e *entitlement.Entitlement) { e.PeriodEnd = now }), SubscriptionInactive, "", ""},
		{"period ended, not enforced", p0, "search", ent("pro", "active", func(e *entitlement.Entitlement) { e.PeriodEnd = now.Add(-time.Hour) }), OK, "", ""},
		{"period running, enforced", pg, "search", ent("pro", "active", func(e *entitlement.Entitlement) { e.PeriodEnd = now.Add(time.Hour) }), OK, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.p.Decide(route(tt.p, tt.route), tt.e, now)
			if d.Code != tt.want {
				t.Errorf("code = %s, want %s", d.Code, tt.want)
			}
			if got := strings.Join(d.PlansWithFeature, ","); got != tt.wantPlans {
				t.Errorf("plans_with_feature = %q, want %q", got, tt.wantPlans)
			}
			if tt.wantURL != "" && d.UpgradeURL != tt.wantURL {
				t.Errorf("upgrade_url = %q, want %q", d.UpgradeURL, tt.wantURL)
			}
		})
	}
	if d := p0.Decide(nil, nil, now); d.Code != RouteNotAllowed {
		t.Errorf("nil route: code = %s, want route_not_allowed", d.Code)
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Spec)
		want string // "path: message" fragment
	}{
		{"unknown feature", func(s *Spec) { s.Routes[1].Feature = "serch" }, `routes[1].feature: "serch" is not a feature of any plan`},
		{"two path kinds", func(s *Spec) { s.Routes[1].Match.Path.Exact = "/x" }, "routes[1].match.path: set only one of exact, prefix, pattern"},
		{"bad prefix", func(s *Spec) { s.Routes[1].Match.Path.Prefix = "v1" }, "routes[1].match.path.prefix"},
		{"bad pattern", func(s *Spec) { s.Routes[3].Match.Path.Pattern = "/a/**/b" }, "routes[3].match.path.pattern"},
		{"mixed pattern segment", func(s *Spec) { s.Routes[3].Match.Path.Pattern = "/a/x{id}" }, "mixes a wildcard"},
		{"public with feature", func(s *Spec) { s.Routes[0].Feature = "search" }, "routes[0].feature: a public route cannot require a feature"},
		{"duplicate name", func(s *Spec) { s.Routes[2].Name = "search" }, `routes[2].name: "search" is already the name of routes[1]`},
		{"bad default", func(s *Spec) { s.Default = "maybe" }, `default: "maybe" is not one of`},
		{"bad host", func(s *Spec) { s.Routes[6].Match.Host = "a.*.com" }, "routes[6].match.host"},
		{"bad period", func(s *Spec) {
			s.Plans[0].Quotas = map[string]QuotaSpec{"requests": {Limit: 10, Period: "week"}}
		}, `plans.free.quotas.requests.period: "week" is not a period`},
		{"undeclared quota", func(s *Spec) { s.Routes[1].Quota = "tokens" }, `routes[1].quota: "tokens" is not a quota of any plan`},
		{"negative grace", func(s *Spec) { s.Billing.PastDueGrace = -time.Second }, "billing.past_due_grace"},
		{"meter on a public route", func(s *Spec) { s.Routes[0].Meter = &MeterSpec{} }, "routes[0].meter: a public route has no subject to bill"},
		{"meter with two unit sources", func(s *Spec) {
			s.Routes[1].Meter = &MeterSpec{UnitsFrom: UnitsFromSpec{Header: "x-units", Body: "usage.total_tokens"}}
		}, "routes[1].meter.units_from: set one of header, body, or input and output"},
		{"meter input without output", func(s *Spec) {
			s.Routes[1].Meter = &MeterSpec{UnitsFrom: UnitsFromSpec{Input: "usage.prompt_tokens"}}
		}, "routes[1].meter.units_from: set input and output together"},
		{"meter bad member path", func(s *Spec) { s.Routes[1].Meter = &MeterSpec{UnitsFrom: UnitsFromSpec{Body: "usage..total"}} },
			`routes[1].meter.units_from.body: "usage..total" is not a member path`},
		{"meter bad overage", func(s *Spec) { s.Routes[1].Meter = &MeterSpec{Overage: "forgive"} }, `routes[1].meter.overage: "forgive" is not allow or cap`},
		{"meter bad billable", func(s *Spec) { s.Routes[1].Meter = &MeterSpec{Billable: []string{"2xx", "6xx"}} },
			`routes[1].meter.billable: "6xx" is not a status class (2xx) or code (404)`},
		{"meter bad header", func(s *Spec) { s.Routes[1].Meter = &MeterSpec{UnitsFrom: UnitsFromSpec{Header: "x units"}} },
			`routes[1].meter.units_from.header: "x units" is not a header name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := demoSpec()
			tt.mod(&spec)
			_, errs := Compile(spec)
			var all []string
			for _, e := range errs {
				all = append(all, e.Error())
			}
			if got := strings.Join(all, "\n"); !strings.Contains(got, tt.want) {
				t.Errorf("errors = %q, want one containing %q", got, tt.want)
			}
		})
	}
}

func TestCodeTable(t *testing.T) {
	for _, c := range Codes {
		back, ok := ParseCode(c.String())
		if !ok || back != c {
			t.Errorf("ParseCode(%q) = %v, %v", c.String(), back, ok)
		}
		if DefaultStatus[c] == 0 {
			t.Errorf("no default status for %s", c)
		}
	}
	want := map[string]int{
		"missing_credentials": 401, "invalid_credentials": 401, "subscription_inactive": 402,
		"payment_failed": 402, "feature_not_in_plan": 402, "quota_exhausted": 402,
		"insufficient_credits": 402, "rate_limited": 429, "route_not_allowed": 403,
		"entitlements_unavailable": 503, "cost_too_large": 400,
	}
	for name, st := range want {
		c, ok := ParseCode(name)
		if !ok {
			t.Fatalf("code %s missing", name)
		}
		if got := DefaultStatus[c]; got != st {
			t.Errorf("status(%s) = %d, want %d", name, got, st)
		}
	}
}

func BenchmarkMatch1000Routes(b *testing.B) {
	spec := Spec{Plans: Plans{{Name: "p", Features: []string{"f"}}}}
	for i := range 1000 {
		spec.Routes = append(spec.Routes, RouteSpec{
			Name:    "r" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + strconv.Itoa(i),
			Match:   MatchSpec{Method: StringList{"GET"}, Path: PathSpec{Prefix: "/v1/r" + strconv.Itoa(i)}},
			Feature: "f",
		})
	}
	p := mustCompile(b, spec)
	req := &Request{Method: "GET", Path: "/v1/r999/x?y=1", Host: "api.example.com"}
	b.ReportAllocs()
	for b.Loop() {
		if p.Match(req) == nil {
			b.Fatal("no match")
		}
	}
}

// spec1000 is 1,000 routes, each with its own path prefix, quota and
// feature plan, as a large API would declare them.
func spec1000() Spec {
	spec := Spec{Plans: Plans{{Name: "p", Features: []string{"f"}, Quotas: map[string]QuotaSpec{
		"requests": {Limit: 1000, Period: "month"},
		"burst":    {Limit: 10, Period: "second", Scope: "all"},
	}}}}
	for i := range 1000 {
		spec.Routes = append(spec.Routes, RouteSpec{
			Name:    "r" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + strconv.Itoa(i),
			Match:   MatchSpec{Method: StringList{"GET"}, Path: PathSpec{Prefix: "/v1/r" + strconv.Itoa(i)}},
			Feature: "f",
			Quota:   "requests",
		})
	}
	return spec
}

// BenchmarkDecide1000Routes is the whole policy evaluation of a request
// whose route is the last of 1,000: Match, Decide and Spends.
func BenchmarkDecide1000Routes(b *testing.B) {
	p := mustCompile(b, spec1000())
	req := &Request{Method: "GET", Path: "/v1/r999/x?y=1", Host: "api.example.com"}
	e := &entitlement.Entitlement{Subject: "acme", Plan: "p", Status: entitlement.StatusActive}
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	var buf [4]Spend
	b.ReportAllocs()
	for b.Loop() {
		r := p.Match(req)
		d := p.Decide(r, e, now)
		if !d.Allowed() {
			b.Fatal(d.Code)
		}
		if sp := p.Spends(r, e, now, nil, nil, buf[:0]); len(sp) != 2 {
			b.Fatal(len(sp))
		}
	}
}

// TestRouteIndexMatchesScan: with the index, Match picks the route a scan
// of every route in order picks.
func TestRouteIndexMatchesScan(t *testing.T) {
	big := spec1000()
	big.Routes = append(big.Routes, demoSpec().Routes...)
	big.Plans = append(big.Plans, demoSpec().Plans...)
	for name, spec := range map[string]Spec{"demo": demoSpec(), "1000 routes": big} {
		p := mustCompile(t, spec)
		scan := func(req *Request) *Route {
			path, _, _ := strings.Cut(req.Path, "?")
			for _, r := range p.routes {
				if r.matches(hostOnly(req.Host), req.Method, path, req.ContextExtensions) {
					return r
				}
			}
			return p.defaultRoute
		}
		p.index = newRouteIndex(p.routes) // also for the few demo routes
		paths := []string{"", "/", "/healthz", "/healthz/x", "/v1/search", "/v1/search/deep?q=1", "/v1/searchable",
			"/v1/chat", "/v2/models/gpt/chat", "/v2/models//chat", "/v2/models", "/f", "/f/a/b", "/v1/r1", "/v1/r10",
			"/v1/r100/x", "/v1/r999", "/v1/r9999", "/v1/r", "/x", "v1/r5"}
		for _, path := range paths {
			for _, method := range []string{"GET", "POST"} {
				for _, host := range []string{"api.example.com", "a.files.example.com", "admin.example.com:443"} {
					for _, ext := range []map[string]string{nil, {"tier": "beta"}} {
						req := &Request{Host: host, Method: method, Path: path, ContextExtensions: ext}
						if got, want := p.Match(req), scan(req); got != want {
							t.Errorf("%s: %s %s%s %v: index gives %v, scan %v", name, method, host, path, ext, got, want)
						}
					}
				}
			}
		}
	}
}

func TestRouteLiteral(t *testing.T) {
	p := mustCompile(t, demoSpec())
	want := map[string]string{"health": "/healthz", "search": "/v1/search", "beta-chat": "/v2/models", "files": "/f", "admin": ""}
	for _, r := range p.routes {
		if w, ok := want[r.Name]; ok && r.literal() != w {
			t.Errorf("%s: literal %q, want %q", r.Name, r.literal(), w)
		}
	}
}

// BenchmarkMatchIndexVsScan finds where the index starts to pay: the
// request matches the last of n routes.
func BenchmarkMatchIndexVsScan(b *testing.B) {
	for _, n := range []int{4, 8, 16, 64} {
		spec := spec1000()
		spec.Routes = spec.Routes[:n]
		p := mustCompile(b, spec)
		req := &Request{Method: "GET", Path: "/v1/r" + strconv.Itoa(n-1) + "/x?y=1", Host: "api.example.com"}
		idx := newRouteIndex(p.routes)
		for _, mode := range []string{"scan", "index"} {
			b.Run(strconv.Itoa(n)+"/"+mode, func(b *testing.B) {
				p.index = nil
				if mode == "index" {
					p.index = idx
				}
				for b.Loop() {
					if p.Match(req) == nil {
						b.Fatal("no match")
					}
				}
			})
		}
	}
}

func TestMeterCompiles(t *testing.T) {
	spec := demoSpec()
	spec.Routes[1].Meter = &MeterSpec{
		UnitsFrom: UnitsFromSpec{Input: "usage.prompt_tokens", Output: "usage.completion_tokens", OutputWeight: 3},
		Overage:   "cap", Billable: []string{"2xx", "404"},
	}
	m := mustCompile(t, spec).Routes()[1].Meter
	if m == nil {
		t.Fatal("no meter")
	}
	got := fmt.Sprint(m.Event, m.Input, m.Output, m.InputWeight, m.OutputWeight, m.CapOverage, m.FromBody(), m.MaxBodyBytes)
	if want := fmt.Sprint(spec.Routes[1].Name, []string{"usage", "prompt_tokens"}, []string{"usage", "completion_tokens"}, 1, 3, true, true, DefaultMaxBodyBytes); got != want {
		t.Errorf("meter = %s, want %s", got, want)
	}
	for _, tt := range []struct {
		status int
		want   bool
	}{{200, true}, {201, true}, {299, true}, {404, true}, {400, false}, {500, false}, {0, false}, {302, false}} {
		if got := m.Billable(tt.status); got != tt.want {
			t.Errorf("Billable(%d) = %v, want %v", tt.status, got, tt.want)
		}
	}
}

func TestUnits(t *testing.T) {
	for _, tt := range []struct {
		in     string
		want   int64
		wantOK bool
	}{{"1234", 1234, true}, {" 7 ", 7, true}, {"0", 0, true}, {"-1", 0, false}, {"1.5", 0, false}, {"", 0, false},
		{"99999999999999999999", 0, false}, {"9223372036854775807", math.MaxInt64, true}} {
		got, ok := Units(tt.in)
		if ok != tt.wantOK || (ok && got != tt.want) {
			t.Errorf("Units(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}
