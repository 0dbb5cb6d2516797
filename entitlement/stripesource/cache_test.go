package stripesource

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/sourcetest"
)

// TestWebhookInvalidatesCache runs the real cache in front of the source and
// the webhook beside it, as the server wires them: a customer who pays a
// failed invoice is let in on the next request, not when the TTL runs out.
func TestWebhookInvalidatesCache(t *testing.T) {
	f := newFake(t)
	f.set("cus_acme", func(c *fakeCustomer) {
		c.Subs = []fakeSub{{ID: "sub_acme", Status: "past_due", Created: 1, Items: []fakeItem{{LookupKey: "pro"}}}}
		c.Features = []string{"export"}
	})
	m := mustMap(t, Customer{Subject: "acme", ID: "cus_acme", APIKeys: []string{sourcetest.DigestAcme}})
	src := newSource(t, f, m, Options{})

	var mu sync.Mutex
	now := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	// A long TTL, as recommended with webhooks: only invalidation can
	// make the change show within this test.
	c := cache.New(src, cache.Options{TTL: time.Hour, Timeout: 2 * time.Second, Now: clock})

	h, err := NewWebhook(WebhookOptions{
		Secrets: []string{whsecNew},
		Now:     clock,
		Invalidate: func(customer string) {
			for _, k := range src.Keys(customer) {
				c.Invalidate(k)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(h)
	t.Cleanup(admin.Close)

	ctx := context.Background()
	keys := []entitlement.Key{bySubject("acme"), {Kind: entitlement.ByAPIKey, ID: sourcetest.DigestAcme}}
	expect := func(stage string, want entitlement.Status, wantFeatures int) {
		t.Helper()
		for _, k := range keys {
			e, err := c.Lookup(ctx, k)
			if err != nil {
				t.Fatalf("%s: Lookup(%v): %v", stage, k.Kind, err)
			}
			if e.Status != want || len(e.Features) != wantFeatures {
				t.Fatalf("%s: Lookup(%v) = %s %v, want %s with %d features", stage, k.Kind, e.Status, e.Features, want, wantFeatures)
			}
		}
	}

	expect("before payment", entitlement.StatusPastDue, 1)

	// The customer pays; Stripe's state changes.
	f.set("cus_acme", func(c *fakeCustomer) {
		c.Subs[0].Status = "active"
		c.Features = append(c.Features, "sso")
	})
	expect("paid, no webhook yet: the cache still answers", entitlement.StatusPastDue, 1)

	// Stripe delivers customer.subscription.updated to the admin server.
	body := eventJSON("evt_paid", "customer.subscription.updated", `{"id":"sub_acme","object":"subscription","customer":"cus_acme","status":"active"}`)
	req, _ := http.NewRequest(http.MethodPost, admin.URL+"/webhooks/stripe", strings.NewReader(body))
	req.Header.Set("Stripe-Signature", SignatureHeader(whsecNew, clock(), []byte(body)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := admin.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("webhook status = %d, want 200", resp.StatusCode)
	}

	expect("after the webhook", entitlement.StatusActive, 2)
}
