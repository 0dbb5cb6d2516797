package policy

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/quota"
)

// headers is a RequestView over a map of lower-case header names.
type headers map[string]string

func (h headers) Header(name string) (string, bool) { v, ok := h[name]; return v, ok }

func TestParseCost(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"7", 7},
		{" 7 ", 7},
		{"+7", 7},
		{"0", 0},
		{"9223372036854775807", math.MaxInt64},
		// Too large for int64: the largest cost, never the fallback.
		{"9223372036854775808", math.MaxInt64},
		{"99999999999999999999999999", math.MaxInt64},
		{"-1", 3},
		{"-99999999999999999999999999", 3},
		{"", 3},
		{"1e3", 3},
		{"0x10", 3},
		{"12abc", 3},
		{"٣", 3},
	}
	for _, tt := range tests {
		if got := parseCost(tt.in, 3); got != tt.want {
			t.Errorf("parseCost(%q, 3) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// costSpec is a plan with a daily tokens quota and a route that reads its
// cost from x-cost.
func costSpec(limit int64, maxCost *int64) Spec {
	return Spec{
		Plans: Plans{{Name: "pro", Features: []string{"chat"}, Quotas: map[string]QuotaSpec{
			"tokens": {Limit: limit, Period: "day"},
			"burst":  {Limit: 1000, Period: "second", Scope: "all"},
		}}},
		Routes: []RouteSpec{
			{Name: "chat", Match: MatchSpec{Path: PathSpec{Prefix: "/v1/chat"}}, Feature: "chat", Quota: "tokens",
				Cost: ptr[int64](10), CostFrom: CostFromSpec{Header: "X-Cost"}, MaxCost: maxCost},
			{Name: "render", Match: MatchSpec{Path: PathSpec{Prefix: "/v1/render"}}, Feature: "chat", Quota: "credits",
				CostFrom: CostFromSpec{Header: "x-cost"}, MaxCost: maxCost},
		},
	}
}

func TestMaxCostCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Spec)
		want string
	}{
		{"zero", func(s *Spec) { s.Routes[0].MaxCost = ptr[int64](0) }, "routes[0].max_cost: must be at least 1"},
		{"negative", func(s *Spec) { s.Routes[0].MaxCost = ptr[int64](-5) }, "routes[0].max_cost: must be at least 1"},
		{"below the fixed cost", func(s *Spec) { s.Routes[0].MaxCost = ptr[int64](9) }, "routes[0].cost: 10 is above max_cost 9"},
		{"without a quota", func(s *Spec) {
			s.Routes[0].Quota, s.Routes[0].CostFrom, s.Routes[0].MaxCost = "", CostFromSpec{}, ptr[int64](5)
		}, "routes[0].max_cost: a cost needs a quota"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := costSpec(100, nil)
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
	if _, errs := Compile(costSpec(100, ptr[int64](10))); len(errs) > 0 {
		t.Errorf("max_cost equal to the fixed cost: %v", errs)
	}
}

// TestSpendsTooLarge: which costs are refused as too large before any
// counter is touched.
func TestSpendsTooLarge(t *testing.T) {
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	credits := int64(500)
	e := &entitlement.Entitlement{Subject: "acme", Plan: "pro", Status: entitlement.StatusActive, Credits: &credits}
	tests := []struct {
		name      string
		maxCost   *int64
		path      string
		cost      string // x-cost, "" for none
		override  map[string]int64
		wantCost  int64
		wantLarge bool
	}{
		{"the fixed cost", nil, "/v1/chat", "", nil, 10, false},
		{"a cost within the limit", nil, "/v1/chat", "100", nil, 100, false},
		{"a cost above the limit", nil, "/v1/chat", "101", nil, 101, true},
		{"the largest cost", nil, "/v1/chat", "9223372036854775807", nil, math.MaxInt64, true},
		{"a cost beyond int64", nil, "/v1/chat", "18446744073709551616", nil, math.MaxInt64, true},
		{"a negative cost falls back", nil, "/v1/chat", "-5", nil, 10, false},
		{"at max_cost", ptr[int64](50), "/v1/chat", "50", nil, 50, false},
		{"above max_cost", ptr[int64](50), "/v1/chat", "51", nil, 51, true},
		{"above the subject's own limit", nil, "/v1/chat", "60", map[string]int64{"tokens": 50}, 60, true},
		{"a zeroed limit is left to the store", nil, "/v1/chat", "1", map[string]int64{"tokens": 0}, 1, false},
		{"credits above the balance are left to the store", nil, "/v1/render", "600", nil, 600, false},
		{"credits above max_cost", ptr[int64](50), "/v1/render", "51", nil, 51, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, costSpec(100, tt.maxCost))
			r := p.Match(&Request{Method: "POST", Path: tt.path})
			h := headers{}
			if tt.cost != "" {
				h["x-cost"] = tt.cost
			}
			ent := *e
			ent.Quotas = tt.override
			spends := p.Spends(r, &ent, now, h, nil, nil)
			if len(spends) != 2 || spends[0].Quota != "burst" {
				t.Fatalf("spends %+v, want burst then the route's", spends)
			}
			sp := spends[1]
			if sp.Cost != tt.wantCost {
				t.Errorf("cost = %d, want %d", sp.Cost, tt.wantCost)
			}
			want := -1
			if tt.wantLarge {
				want = 1
			}
			if got := FirstTooLarge(spends); got != want {
				t.Errorf("FirstTooLarge = %d, want %d", got, want)
			}
			d := Decision{Code: CostTooLarge, Spends: spends, Denied: 1}
			if d.TooLargeSpend() != &d.Spends[1] {
				t.Error("TooLargeSpend does not name the refused spend")
			}
		})
	}
}

// FuzzCostFromRequest reads costs from a header as a hostile client sends
// them, and spends those the policy lets through on a quota store: no cost
// is ever negative, no cost the policy passes is above the limit or
// max_cost, and the counter never admits more than the limit.
func FuzzCostFromRequest(f *testing.F) {
	f.Add(int64(5), int64(0), "1,1,9223372036854775807,1,1,1,1")
	f.Add(int64(5), int64(0), "2,3,99999999999999999999,-9223372036854775808,1")
	f.Add(int64(100), int64(50), "50,51,49, 7 ,+1,1e9,0x7fffffffffffffff,-0")
	f.Add(int64(0), int64(1), "0,1,2")
	f.Add(int64(math.MaxInt64), int64(0), "9223372036854775807,1,9223372036854775807")
	f.Add(int64(-3), int64(-3), "1")
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	e := &entitlement.Entitlement{Subject: "acme", Plan: "pro", Status: entitlement.StatusActive}
	f.Fuzz(func(t *testing.T, limit, maxCost int64, values string) {
		spec := costSpec(max(limit, 0), nil)
		spec.Routes[0].Cost = ptr[int64](1)
		if maxCost >= 1 {
			spec.Routes[0].MaxCost = ptr(maxCost)
		}
		p := mustCompile(t, spec)
		r := p.Match(&Request{Method: "POST", Path: "/v1/chat"})
		store := quota.NewMemory(func() time.Time { return now })
		var admitted int64
		for v := range strings.SplitSeq(values, ",") {
			spends := p.Spends(r, e, now, headers{"x-cost": v}, nil, nil)
			sp := spends[1]
			if sp.Cost < 0 {
				t.Fatalf("cost %d from %q", sp.Cost, v)
			}
			if FirstTooLarge(spends) >= 0 {
				continue
			}
			if sp.Limit > 0 && sp.Cost > sp.Limit || sp.MaxCost > 0 && sp.Cost > sp.MaxCost {
				t.Fatalf("cost %d from %q passed with limit %d, max_cost %d", sp.Cost, v, sp.Limit, sp.MaxCost)
			}
			items := []quota.Item{{Key: quota.Key("acme", sp.Counter, sp.Start), Cost: sp.Cost, Limit: sp.Limit, Reset: sp.Reset}}
			d, err := store.Spend(context.Background(), "acme", items, make([]int64, 1))
			if err != nil {
				t.Fatal(err)
			}
			if d < 0 {
				admitted += sp.Cost
			}
			if admitted < 0 || admitted > max(limit, 0) {
				t.Fatalf("admitted %d of limit %d (values %q)", admitted, limit, values)
			}
		}
	})
}

// bodyRequest is a RequestView with a body.
type bodyRequest string

func (bodyRequest) Header(string) (string, bool) { return "", false }
func (b bodyRequest) Body() string               { return string(b) }

func TestCostFromBody(t *testing.T) {
	spec := costSpec(1_000_000, nil)
	spec.Routes[0].CostFrom = CostFromSpec{Body: "max_tokens"}
	spec.Routes[0].Cost = ptr[int64](256)
	p := mustCompile(t, spec)
	r := p.Routes()[0]
	e := &entitlement.Entitlement{Subject: "acme", Plan: "pro", Status: entitlement.StatusActive}
	tests := []struct {
		name string
		body string
		want int64
	}{
		{"max_tokens", `{"model":"m","max_tokens":1500,"messages":[]}`, 1500},
		{"spaces", " {\"max_tokens\": 7 } ", 7},
		{"absent: the route's cost", `{"model":"m"}`, 256},
		{"not a number", `{"max_tokens":"lots"}`, 256},
		{"negative", `{"max_tokens":-5}`, 256},
		{"fractional", `{"max_tokens":1.5}`, 256},
		{"huge: the largest cost, refused", `{"max_tokens":99999999999999999999}`, math.MaxInt64},
		{"cut short by max_request_bytes", `{"model":"m","max_tokens":15`, 256},
		{"not JSON", `max_tokens=5`, 256},
		{"no body", ``, 256},
		{"nested member is not read at the top", `{"options":{"max_tokens":9}}`, 256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := p.Spends(r, e, time.Now(), bodyRequest(tt.body), nil, nil)
			if got := sp[len(sp)-1].Cost; got != tt.want {
				t.Errorf("cost = %d, want %d", got, tt.want)
			}
		})
	}
	spec.Routes[0].CostFrom = CostFromSpec{Body: "max_tokens", Header: "x-cost"}
	if _, errs := Compile(spec); len(errs) == 0 || !strings.Contains(errs[0].Error(), "set one of header, context_extension or body") {
		t.Errorf("two cost sources: %v", errs)
	}
}
