package stripesource

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/sourcetest"
)

// Stripe carries plan, status, features and the period. Quotas and credits
// have no Stripe field that means what tollgate means (the customer balance
// is money on the next invoice, credit grants are for metered usage), and
// Stripe does not say since when a subscription is past_due.
var stripeCaps = sourcetest.Caps{Period: true}

func newSource(t *testing.T, f *fakeStripe, m *Map, opts Options) *Source {
	t.Helper()
	opts.SecretKey = testKey
	opts.APIBase = f.srv.URL
	opts.Customers = m
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Second // generous: -race on a busy machine
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustMap(t *testing.T, cs ...Customer) *Map {
	t.Helper()
	m, err := NewMap(cs)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func bySubject(id string) entitlement.Key {
	return entitlement.Key{Kind: entitlement.BySubject, ID: id}
}

// TestSourceBehaviour runs the shared source table against the fake Stripe.
func TestSourceBehaviour(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T, recs []sourcetest.Record) entitlement.Source {
		f := newFake(t)
		var cs []Customer
		for i, r := range recs {
			e := r.Entitlement
			id := "cus_" + e.Subject
			cs = append(cs, Customer{Subject: e.Subject, ID: id, APIKeys: r.APIKeyDigests})
			item := fakeItem{LookupKey: e.Plan}
			sub := fakeSub{ID: "sub_" + e.Subject, Status: string(e.Status), Created: 1700000000, Items: []fakeItem{item}}
			// One record keeps its period on the item (2025-03-31.basil on),
			// the other on the subscription (earlier versions).
			if i%2 == 0 {
				sub.Items[0].Start, sub.Items[0].End = seconds(e.PeriodStart), seconds(e.PeriodEnd)
			} else {
				sub.Start, sub.End = seconds(e.PeriodStart), seconds(e.PeriodEnd)
			}
			f.set(id, func(c *fakeCustomer) {
				c.Subs = []fakeSub{sub}
				c.Features = e.Features
			})
		}
		return newSource(t, f, mustMap(t, cs...), Options{})
	}, stripeCaps)
}

func seconds(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func TestSubscriptionChoice(t *testing.T) {
	pro := []fakeItem{{LookupKey: "pro"}}
	free := []fakeItem{{LookupKey: "free"}}
	tests := []struct {
		name       string
		subs       []fakeSub
		wantPlan   string
		wantStatus entitlement.Status
	}{
		{"only one", []fakeSub{{ID: "sub_a", Status: "active", Created: 1, Items: pro}}, "pro", entitlement.StatusActive},
		{"active beats a newer canceled", []fakeSub{
			{ID: "sub_old", Status: "active", Created: 1, Items: pro},
			{ID: "sub_new", Status: "canceled", Created: 9, Items: free},
		}, "pro", entitlement.StatusActive},
		{"trialing beats past_due", []fakeSub{
			{ID: "sub_a", Status: "past_due", Created: 9, Items: pro},
			{ID: "sub_b", Status: "trialing", Created: 1, Items: free},
		}, "free", entitlement.StatusTrialing},
		{"newest of two active", []fakeSub{
			{ID: "sub_a", Status: "active", Created: 1, Items: free},
			{ID: "sub_b", Status: "active", Created: 5, Items: pro},
		}, "pro", entitlement.StatusActive},
		{"past_due beats canceled and incomplete", []fakeSub{
			{ID: "sub_a", Status: "canceled", Created: 9, Items: free},
			{ID: "sub_b", Status: "incomplete", Created: 8, Items: free},
			{ID: "sub_c", Status: "past_due", Created: 1, Items: pro},
		}, "pro", entitlement.StatusPastDue},
		{"unpaid beats paused", []fakeSub{
			{ID: "sub_a", Status: "paused", Created: 9, Items: free},
			{ID: "sub_b", Status: "unpaid", Created: 1, Items: pro},
		}, "pro", entitlement.StatusUnpaid},
		{"only ended ones: the newest", []fakeSub{
			{ID: "sub_a", Status: "canceled", Created: 1, Items: free},
			{ID: "sub_b", Status: "incomplete_expired", Created: 3, Items: pro},
		}, "pro", entitlement.StatusIncompleteExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.set("cus_acme", func(c *fakeCustomer) { c.Subs = tt.subs })
			s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{})
			got, err := s.Lookup(context.Background(), bySubject("acme"))
			if err != nil {
				t.Fatal(err)
			}
			if got.Plan != tt.wantPlan || got.Status != tt.wantStatus {
				t.Errorf("plan/status = %s/%s, want %s/%s", got.Plan, got.Status, tt.wantPlan, tt.wantStatus)
			}
		})
	}
}

// TestSubscriptionPages: the live subscription is on the second page,
// behind a page of canceled ones.
func TestSubscriptionPages(t *testing.T) {
	f := newFake(t)
	f.pageLimit = 2
	f.set("cus_acme", func(c *fakeCustomer) {
		c.Subs = []fakeSub{
			{ID: "sub_1", Status: "canceled", Created: 9, Items: []fakeItem{{LookupKey: "free"}}},
			{ID: "sub_2", Status: "canceled", Created: 8, Items: []fakeItem{{LookupKey: "free"}}},
			{ID: "sub_3", Status: "active", Created: 7, Items: []fakeItem{{LookupKey: "pro"}}},
			{ID: "sub_4", Status: "canceled", Created: 6, Items: []fakeItem{{LookupKey: "free"}}},
			{ID: "sub_5", Status: "canceled", Created: 5, Items: []fakeItem{{LookupKey: "free"}}},
		}
	})
	s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{})
	got, err := s.Lookup(context.Background(), bySubject("acme"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Plan != "pro" || got.Status != entitlement.StatusActive {
		t.Errorf("plan/status = %s/%s, want pro/active", got.Plan, got.Status)
	}
	// Page 2 holds the active one; page 3 cannot beat it and is not asked for.
	if n := f.callCount("/v1/subscriptions"); n != 2 {
		t.Errorf("subscription pages fetched = %d, want 2", n)
	}
}

func TestStatusMapping(t *testing.T) {
	for _, st := range []string{"active", "trialing", "past_due", "unpaid", "canceled", "incomplete", "incomplete_expired", "paused", "some_future_state"} {
		t.Run(st, func(t *testing.T) {
			f := newFake(t)
			f.set("cus_acme", func(c *fakeCustomer) {
				c.Subs = []fakeSub{{ID: "sub_a", Status: st, Created: 1, Items: []fakeItem{{LookupKey: "pro"}}}}
			})
			s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{})
			got, err := s.Lookup(context.Background(), bySubject("acme"))
			if err != nil {
				t.Fatal(err)
			}
			// Stripe's spelling is tollgate's; a state Stripe adds later
			// passes through and the policy treats it as inactive.
			if got.Status != entitlement.Status(st) {
				t.Errorf("status = %s, want %s", got.Status, st)
			}
		})
	}
}

func TestPeriod(t *testing.T) {
	const start, end = 1761955200, 1764547200 // 2025-11-01, 2025-12-01 UTC
	tests := []struct {
		name      string
		sub       fakeSub
		wantStart int64
		wantEnd   int64
	}{
		{"on the subscription (before basil)", fakeSub{Start: start, End: end, Items: []fakeItem{{LookupKey: "pro"}}}, start, end},
		{"on the item (basil on)", fakeSub{Items: []fakeItem{{LookupKey: "pro", Start: start, End: end}}}, start, end},
		{"on the item that names the plan", fakeSub{Items: []fakeItem{
			{Start: 1, End: 2}, // a metered add-on with no plan
			{LookupKey: "pro", Start: start, End: end},
		}}, start, end},
		{"subscription wins over items", fakeSub{Start: start, End: end, Items: []fakeItem{{LookupKey: "pro", Start: 1, End: 2}}}, start, end},
		{"unknown", fakeSub{Items: []fakeItem{{LookupKey: "pro"}}}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			tt.sub.ID, tt.sub.Status, tt.sub.Created = "sub_a", "active", 1
			f.set("cus_acme", func(c *fakeCustomer) { c.Subs = []fakeSub{tt.sub} })
			s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{})
			got, err := s.Lookup(context.Background(), bySubject("acme"))
			if err != nil {
				t.Fatal(err)
			}
			if seconds(got.PeriodStart) != tt.wantStart || seconds(got.PeriodEnd) != tt.wantEnd {
				t.Errorf("period = %v..%v, want %d..%d", got.PeriodStart, got.PeriodEnd, tt.wantStart, tt.wantEnd)
			}
			if !got.PeriodEnd.IsZero() && got.PeriodEnd.Location() != time.UTC {
				t.Errorf("period end in %v, want UTC", got.PeriodEnd.Location())
			}
		})
	}
}

func TestPlanPrecedence(t *testing.T) {
	tests := []struct {
		name          string
		items         []fakeItem
		products      map[string]map[string]string
		wantPlan      string
		wantProdCalls int
	}{
		{"price metadata beats lookup_key", []fakeItem{{LookupKey: "pro_monthly", PriceMeta: map[string]string{"tollgate_plan": "pro"}}}, nil, "pro", 0},
		{"lookup_key", []fakeItem{{LookupKey: "pro"}}, nil, "pro", 0},
		{"first item that names a plan", []fakeItem{{}, {LookupKey: "team"}}, nil, "team", 0},
		{"product metadata when no price names one", []fakeItem{{Product: "prod_pro"}},
			map[string]map[string]string{"prod_pro": {"tollgate_plan": "pro"}}, "pro", 1},
		{"nothing names a plan", []fakeItem{{Product: "prod_bare"}},
			map[string]map[string]string{"prod_bare": {}}, "", 1},
		{"a deleted product names none", []fakeItem{{Product: "prod_gone"}}, nil, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.products = tt.products
			if f.products == nil {
				f.products = map[string]map[string]string{}
			}
			f.set("cus_acme", func(c *fakeCustomer) {
				c.Subs = []fakeSub{{ID: "sub_a", Status: "active", Created: 1, Items: tt.items}}
			})
			s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{})
			got, err := s.Lookup(context.Background(), bySubject("acme"))
			if err != nil {
				t.Fatal(err)
			}
			if got.Plan != tt.wantPlan {
				t.Errorf("plan = %q, want %q", got.Plan, tt.wantPlan)
			}
			calls := 0
			for _, p := range []string{"prod_pro", "prod_bare", "prod_gone"} {
				calls += f.callCount("/v1/products/" + p)
			}
			if calls != tt.wantProdCalls {
				t.Errorf("product calls = %d, want %d", calls, tt.wantProdCalls)
			}
		})
	}
}

func TestFeaturePages(t *testing.T) {
	f := newFake(t)
	f.pageLimit = 2
	want := []string{"export", "sso", "audit", "chat", "bulk"}
	f.set("cus_acme", func(c *fakeCustomer) {
		c.Subs = []fakeSub{{ID: "sub_a", Status: "active", Created: 1, Items: []fakeItem{{LookupKey: "pro"}}}}
		c.Features = want
	})
	s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{})
	got, err := s.Lookup(context.Background(), bySubject("acme"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Features, want) {
		t.Errorf("features = %v, want %v", got.Features, want)
	}
	if n := f.callCount("/v1/entitlements/active_entitlements"); n != 3 {
		t.Errorf("entitlement pages fetched = %d, want 3", n)
	}
}

// TestNoSubscription: a customer Stripe knows, who never subscribed or whose
// subscriptions are gone, is inactive (402), not unknown (401).
func TestNoSubscription(t *testing.T) {
	f := newFake(t)
	f.set("cus_acme", func(c *fakeCustomer) { c.Features = []string{"export"} })
	s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{})
	got, err := s.Lookup(context.Background(), bySubject("acme"))
	if err != nil {
		t.Fatal(err)
	}
	want := &entitlement.Entitlement{Subject: "acme", Status: entitlement.StatusCanceled, Features: []string{"export"}}
	sourcetest.Compare(t, got, want, stripeCaps)
}

func TestStripeFailures(t *testing.T) {
	tests := []struct {
		name         string
		path         string
		fail         fakeFailure
		stall        bool   // Stripe never answers, until the test ends
		customer     string // in the map; default cus_acme
		wantNotFound bool
		wantIn       string
	}{
		{name: "customer unknown to stripe", customer: "cus_gone", wantNotFound: true},
		{name: "400 resource_missing customer", path: "/v1/entitlements/active_entitlements",
			fail: fakeFailure{status: 400, typ: "invalid_request_error", code: "resource_missing", param: "customer", msg: "No such customer: 'cus_acme'"}, wantNotFound: true},
		{name: "500", path: "/v1/subscriptions", fail: fakeFailure{status: 500, typ: "api_error", msg: "Something went wrong"}, wantIn: "status 500"},
		{name: "503 on entitlements", path: "/v1/entitlements/active_entitlements", fail: fakeFailure{status: 503, typ: "api_error", msg: "unavailable"}, wantIn: "status 503"},
		{name: "429", path: "/v1/subscriptions", fail: fakeFailure{status: 429, typ: "invalid_request_error", code: "rate_limit", msg: "Too many requests"}, wantIn: "rate limited"},
		{name: "other 400", path: "/v1/subscriptions", fail: fakeFailure{status: 400, typ: "invalid_request_error", code: "parameter_unknown", param: "status", msg: "Received unknown parameter"}, wantIn: "parameter_unknown"},
		{name: "timeout", stall: true, wantIn: "deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.set("cus_acme", func(c *fakeCustomer) {
				c.Subs = []fakeSub{{ID: "sub_a", Status: "active", Created: 1, Items: []fakeItem{{LookupKey: "pro"}}}}
			})
			if tt.path != "" {
				f.setFail(tt.path, tt.fail)
			}
			opts := Options{}
			if tt.stall {
				f.stall(t)
				opts.Timeout = 50 * time.Millisecond
			}
			cus := tt.customer
			if cus == "" {
				cus = "cus_acme"
			}
			s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: cus}), opts)
			// No deadline on the context: only the source's timeout can
			// end a call that Stripe never answers. A minute is far past
			// it, and tells a missing timeout from a slow machine.
			done := make(chan error, 1)
			go func() {
				_, err := s.Lookup(context.Background(), bySubject("acme"))
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(time.Minute):
				t.Fatal("the lookup still waits for a Stripe that does not answer: its timeout was not applied")
			}
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, entitlement.ErrNotFound); got != tt.wantNotFound {
				t.Fatalf("errors.Is(%v, ErrNotFound) = %v, want %v", err, got, tt.wantNotFound)
			}
			if tt.wantIn != "" && !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("err = %v, want it to mention %q", err, tt.wantIn)
			}
			if strings.Contains(err.Error(), testKey) {
				t.Errorf("err = %v, holds the secret key", err)
			}
		})
	}
}

// TestSecretsNeverInErrors: a refused key, echoed by Stripe, and a bad key
// at construction, stay out of every error.
func TestSecretsNeverInErrors(t *testing.T) {
	f := newFake(t)
	f.set("cus_acme", func(c *fakeCustomer) {})
	const wrong = "sk_live_51WrongKeyThatShouldNeverShowUp987654321"
	s, err := New(Options{SecretKey: wrong, APIBase: f.srv.URL, Customers: mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Lookup(context.Background(), bySubject("acme"))
	if err == nil || errors.Is(err, entitlement.ErrNotFound) {
		t.Fatalf("err = %v, want a failure that is not ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "status 401") {
		t.Errorf("err = %v, want it to say 401", err)
	}
	for _, secret := range []string{wrong, "51WrongKeyThatShouldNeverShowUp", testKey} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("err = %q holds a secret", err)
		}
	}

	for _, opts := range []Options{
		{SecretKey: testKey + " x", Customers: mustMap(t)},
		{SecretKey: testKey, APIBase: "http://api.example.com", Customers: mustMap(t)},
	} {
		_, err := New(opts)
		if err == nil {
			t.Fatalf("New(%q) accepted", opts.APIBase)
		}
		if strings.Contains(err.Error(), testKey) {
			t.Errorf("New: err = %q holds the secret key", err)
		}
	}
}

func TestNewChecksOptions(t *testing.T) {
	m := mustMap(t)
	tests := []struct {
		name string
		opts Options
		ok   bool
	}{
		{"defaults", Options{SecretKey: testKey, Customers: m}, true},
		{"loopback http", Options{SecretKey: testKey, Customers: m, APIBase: "http://127.0.0.1:12111"}, true},
		{"search only", Options{SecretKey: testKey, SubjectMetadataKey: "tollgate_subject"}, true},
		{"no key", Options{Customers: m}, false},
		{"no map", Options{SecretKey: testKey}, false},
		{"http elsewhere", Options{SecretKey: testKey, Customers: m, APIBase: "http://stripe.internal"}, false},
		{"not a URL", Options{SecretKey: testKey, Customers: m, APIBase: "api.stripe.com"}, false},
		{"quote in metadata key", Options{SecretKey: testKey, SubjectMetadataKey: "a'b"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if (err == nil) != tt.ok {
				t.Errorf("err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestRequests: every call carries the pinned Stripe-Version and the key.
func TestRequests(t *testing.T) {
	f := newFake(t)
	f.set("cus_acme", func(c *fakeCustomer) {})
	s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{APIVersion: "2024-06-20"})
	if _, err := s.Lookup(context.Background(), bySubject("acme")); err != nil {
		t.Fatal(err) // the fake refuses a call without the key
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.versions) != 2 || f.versions[0] != "2024-06-20" || f.versions[1] != "2024-06-20" {
		t.Errorf("Stripe-Version headers = %v, want 2024-06-20 on both calls", f.versions)
	}
}

func TestMaxInFlight(t *testing.T) {
	f := newFake(t)
	f.setDelay(20 * time.Millisecond)
	var cs []Customer
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		f.set("cus_"+id, func(c *fakeCustomer) {})
		cs = append(cs, Customer{Subject: id, ID: "cus_" + id})
	}
	s := newSource(t, f, mustMap(t, cs...), Options{MaxInFlight: 2, Timeout: 5 * time.Second})
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() {
			if _, err := s.Lookup(context.Background(), bySubject(c.Subject)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := f.maxInFlight.Load(); got > 2 {
		t.Errorf("max concurrent Stripe calls = %d, want <= 2", got)
	}
}

func TestSearchFallback(t *testing.T) {
	f := newFake(t)
	f.set("cus_mapped", func(c *fakeCustomer) {
		c.Subs = []fakeSub{{ID: "sub_m", Status: "active", Created: 1, Items: []fakeItem{{LookupKey: "free"}}}}
	})
	f.set("cus_found", func(c *fakeCustomer) {
		c.Metadata = map[string]string{"tollgate_subject": "globex"}
		c.Subs = []fakeSub{{ID: "sub_f", Status: "active", Created: 1, Items: []fakeItem{{LookupKey: "pro"}}}}
	})
	f.set("cus_twin1", func(c *fakeCustomer) { c.Metadata = map[string]string{"tollgate_subject": "twin"} })
	f.set("cus_twin2", func(c *fakeCustomer) { c.Metadata = map[string]string{"tollgate_subject": "twin"} })
	s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_mapped"}), Options{SubjectMetadataKey: "tollgate_subject"})
	ctx := context.Background()

	got, err := s.Lookup(ctx, bySubject("globex"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Subject != "globex" || got.Plan != "pro" {
		t.Errorf("subject/plan = %s/%s, want globex/pro", got.Subject, got.Plan)
	}
	if keys := s.Keys("cus_found"); !slices.Equal(keys, []entitlement.Key{bySubject("globex")}) {
		t.Errorf("Keys(cus_found) = %v, want the searched subject", keys)
	}
	if _, err := s.Lookup(ctx, bySubject("acme")); err != nil {
		t.Fatal(err)
	}
	if n := f.callCount("/v1/customers/search"); n != 1 {
		t.Errorf("searches = %d, want 1 (the map answers for acme)", n)
	}
	for _, tt := range []struct {
		key          entitlement.Key
		wantNotFound bool
	}{
		{bySubject("nobody"), true},
		{bySubject("o'brien"), true},
		{entitlement.Key{Kind: entitlement.ByAPIKey, ID: sourcetest.DigestAcme}, true}, // digests are never searched
		{bySubject("twin"), false}, // two customers claim it: an error, not a guess
	} {
		_, err := s.Lookup(ctx, tt.key)
		if err == nil || errors.Is(err, entitlement.ErrNotFound) != tt.wantNotFound {
			t.Errorf("Lookup(%v): err = %v, want not-found %v", tt.key, err, tt.wantNotFound)
		}
	}
}

// TestErrorTypeAndCodeAreScrubbed: the type and code of an error answer
// are printed only when they are plain identifiers, never key-shaped or
// holding the key: whoever answers at the API base chooses them.
func TestErrorTypeAndCodeAreScrubbed(t *testing.T) {
	const leaked = "rk_live_51LeakedRestrictedKey0123456789"
	tests := []struct {
		name      string
		typ, code string
		want      string // in the error
	}{
		{"plain", "invalid_request_error", "parameter_unknown", "invalid_request_error parameter_unknown"},
		{"key as the type", leaked, "parameter_unknown", "[redacted] parameter_unknown"},
		{"secret key as the code", "api_error", testKey, "api_error [redacted]"},
		{"key inside the code", "api_error", "bad " + leaked, "api_error [redacted]"},
		{"key-shaped identifier", "api_error", "sk_test_abc", "api_error [redacted]"},
		{"a line break", "api_error\nforged: line", "x", "[redacted] x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.set("cus_acme", func(c *fakeCustomer) {})
			f.setFail("/v1/subscriptions", fakeFailure{status: 400, typ: tt.typ, code: tt.code, msg: "no"})
			s := newSource(t, f, mustMap(t, Customer{Subject: "acme", ID: "cus_acme"}), Options{})
			_, err := s.Lookup(context.Background(), bySubject("acme"))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
			for _, secret := range []string{leaked, testKey, "sk_test_abc", "\n"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("err = %q holds %q", err, secret)
				}
			}
		})
	}
}
