package authz_test

import (
	"context"
	"strings"
	"testing"

	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/policy"
)

// with is headers plus one more.
func with(h map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for hk, hv := range h {
		out[hk] = hv
	}
	return out
}

// TestTopUpRetryIsDecidedAgainstTheBalance: a payment-identifier retry of
// a settled top-up buys nothing new, so it is decided like the first
// request (against the balance), not let through as a paid call: else one
// top-up with an id, retried with fresh (never settled) authorizations,
// would pass every check and spend nothing for as long as its record lives.
func TestTopUpRetryIsDecidedAgainstTheBalance(t *testing.T) {
	s, fac := paidServer(t) // its Credit counts, but does not raise the balance
	offer := perCallOffer()
	offer.Amount = "500000"
	const id = "pay_topup_retry_000001"
	key := map[string]string{"x-api-key": "demo-pro-key"}
	first := x402test.Header(t, x402test.Payment{Offer: offer, Now: fixedNow, Nonce: 40, PaymentID: id})
	_, res := s.Decide(context.Background(), req("POST", "/chat", with(key, "payment-signature", first)))
	if res.Payment != "top_up" || res.Allowed || fac.Settlements() != 1 {
		t.Fatalf("first: %+v, settlements %d; want a settled top-up, refused for credits", res, fac.Settlements())
	}
	for i := range 3 {
		retry := x402test.Header(t, x402test.Payment{Offer: offer, Now: fixedNow, Nonce: 41 + i, PaymentID: id})
		_, res = s.Decide(context.Background(), req("POST", "/chat", with(key, "payment-signature", retry)))
		if res.Allowed || res.Code != policy.InsufficientCredits {
			t.Fatalf("retry %d: allowed %v, code %s; want insufficient_credits (nothing new was bought)", i, res.Allowed, res.Code)
		}
	}
	if fac.Settlements() != 1 {
		t.Errorf("settlements %d, want 1", fac.Settlements())
	}
}

// TestPaymentIDRetryIsBoundToTheQuery: a payment-identifier retry is the
// same request again; another query string is another purchase (409), or
// one payment would buy every query on a path.
func TestPaymentIDRetryIsBoundToTheQuery(t *testing.T) {
	s, g, _ := paidServerGate(t)
	const id = "pay_query_binding_0001"
	first := x402test.Header(t, x402test.Payment{Offer: perCallOffer(), Now: fixedNow, Nonce: 50, PaymentID: id})
	resp, res := s.Decide(context.Background(), req("GET", "/forecast?city=paris", map[string]string{"payment-signature": first}))
	if !res.Allowed || res.Payment != "per_call" {
		t.Fatalf("first: %+v", res)
	}
	key := resp.GetDynamicMetadata().GetFields()["x402"].GetStringValue()
	routes := func(string) *policy.Route { return &policy.Route{Name: "forecast", Price: "0.001"} }
	if _, err := g.Settle(context.Background(), key, 200, routes); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		allowed    bool
		code       string
	}{
		{"the same request", "/forecast?city=paris", true, "ok"},
		{"another query", "/forecast?city=tokyo", false, "payment_conflict"},
		{"no query", "/forecast", false, "payment_conflict"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			retry := x402test.Header(t, x402test.Payment{Offer: perCallOffer(), Now: fixedNow, Nonce: 51 + i, PaymentID: id})
			_, res := s.Decide(context.Background(), req("GET", tt.path, map[string]string{"payment-signature": retry}))
			if res.Allowed != tt.allowed || res.Code.String() != tt.code {
				t.Errorf("allowed %v, code %s; want %v, %s", res.Allowed, res.Code, tt.allowed, tt.code)
			}
		})
	}
}

// TestClientPayerHeaderDoesNotStripOurs: Envoy applies an allow's
// headers_to_remove after its headers to set, so a client that sends its
// own x-tollgate-payer must not get the payer tollgate sets removed.
func TestClientPayerHeaderDoesNotStripOurs(t *testing.T) {
	s, _ := paidServer(t)
	h := x402test.Header(t, x402test.Payment{Offer: perCallOffer(), Now: fixedNow, Nonce: 60})
	resp, res := s.Decide(context.Background(), req("GET", "/forecast", map[string]string{
		"payment-signature": h, "x-tollgate-payer": "0x000000000000000000000000000000000000dead",
	}))
	if !res.Allowed {
		t.Fatalf("result %+v", res)
	}
	ok := resp.GetOkResponse()
	var set string
	for _, hv := range ok.GetHeaders() {
		if hv.GetHeader().GetKey() == "x-tollgate-payer" {
			set = hv.GetHeader().GetValue()
		}
	}
	if want := strings.ToLower(x402test.Address(1)); set != want {
		t.Errorf("x-tollgate-payer set to %q, want %q", set, want)
	}
	for _, rm := range ok.GetHeadersToRemove() {
		if strings.EqualFold(rm, "x-tollgate-payer") {
			t.Errorf("x-tollgate-payer is removed too (%v): Envoy removes after it sets, so the upstream gets no payer", ok.GetHeadersToRemove())
		}
	}
}
