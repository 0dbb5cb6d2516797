package payment

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

const (
	asset = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
	payTo = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
)

var now = time.Unix(1_800_000_000, 0)

// fixture is a gate over a LocalFacilitator (real signature checks,
// balances in memory) and a memory store.
type fixture struct {
	g       *Gate
	fac     *x402.LocalFacilitator
	store   *paystore.Memory
	credits []int64
	events  []usage.Event
	seen    map[string]int // Observe counts, "stage/outcome"
}

func newFixture(t *testing.T, fac x402.Facilitator, edit ...func(*Options)) *fixture {
	t.Helper()
	f := &fixture{fac: x402.NewLocalFacilitator(func() time.Time { return now }, "eip155:84532"), seen: map[string]int{}}
	f.fac.Mint(asset, x402test.Address(1), big.NewInt(10_000_000))
	if fac == nil {
		fac = f.fac
	}
	f.store = paystore.NewMemory(func() time.Time { return now }, 100)
	o := Options{
		Network: "eip155:84532", Asset: asset, PayTo: payTo, AssetName: "USDC", AssetVersion: "2", Decimals: 6, Currency: "USDC",
		TopUps:      []TopUp{{Credits: 100, Price: "0.5"}, {Credits: 1000, Price: "4"}},
		Facilitator: fac, Store: f.store, Now: func() time.Time { return now },
		Credit: func(_ context.Context, e *entitlement.Entitlement, n int64, _ time.Time) error {
			f.credits = append(f.credits, n)
			return nil
		},
		Record:  func(_ context.Context, ev usage.Event) error { f.events = append(f.events, ev); return nil },
		Observe: func(stage, outcome string) { f.seen[stage+"/"+outcome]++ },
	}
	for _, e := range edit {
		e(&o)
	}
	g, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	f.g = g
	return f
}

var paid = &policy.Route{Name: "forecast", Price: "0.001"}

func offer(amount string) x402.PaymentRequirements {
	return x402.PaymentRequirements{Scheme: "exact", Network: "eip155:84532", Amount: amount, Asset: asset, PayTo: payTo,
		MaxTimeoutSeconds: 60, Extra: x402.Extra{Name: "USDC", Version: "2"}}
}

func decodeChallenge(t *testing.T, h string) x402.PaymentRequired {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	var pr x402.PaymentRequired
	if err := json.Unmarshal(b, &pr); err != nil {
		t.Fatal(err)
	}
	return pr
}

func TestChallenge(t *testing.T) {
	f := newFixture(t, nil)
	tests := []struct {
		name string
		want Want
		ok   bool
		amts []string
	}{
		{"priced route", Want{Route: paid, URL: "https://api.test/forecast"}, true, []string{"1000"}},
		{"credits, subject, lacking 50", Want{Route: paid, Subject: true, Credits: true, Lack: 50}, true, []string{"1000", "500000", "4000000"}},
		{"credits, lacking 500: the small top-up does not cover it", Want{Route: &policy.Route{Name: "chat"}, Subject: true, Credits: true, Lack: 500}, true, []string{"4000000"}},
		{"credits, no subject: nobody to credit", Want{Route: &policy.Route{Name: "chat"}, Credits: true, Lack: 1}, false, nil},
		{"unpriced, not credits", Want{Route: &policy.Route{Name: "chat"}}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, xj, oj, ok := f.g.Challenge(tt.want)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			pr := decodeChallenge(t, h)
			var got []string
			for _, a := range pr.Accepts {
				got = append(got, a.Amount)
				if err := x402.ValidateRequirements(a, ""); err != nil {
					t.Error(err)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.amts, ",") {
				t.Errorf("amounts %v, want %v", got, tt.amts)
			}
			if pr.X402Version != 2 || pr.Extensions["payment-identifier"] == nil {
				t.Errorf("challenge %+v: want version 2 with payment-identifier declared", pr)
			}
			var body x402.PaymentRequired
			if err := json.Unmarshal(xj, &body); err != nil || len(body.Accepts) != len(pr.Accepts) {
				t.Errorf("body member x402 %s does not hold the header's offer", xj)
			}
			var offers []Offer
			if err := json.Unmarshal(oj, &offers); err != nil || len(offers) != len(tt.amts) {
				t.Errorf("offers %s", oj)
			}
		})
	}
}

func admit(f *fixture, h string, e *entitlement.Entitlement) (Admission, error) {
	return f.g.Admit(context.Background(), Request{Route: paid, Header: h, Entitlement: e, Method: "GET", Path: "/forecast"})
}

func routes(string) *policy.Route { return paid }

func TestPerCallSettlesOnceAfterTheUpstream(t *testing.T) {
	f := newFixture(t, nil)
	h := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 1})
	adm, err := admit(f, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if adm.Kind != PerCall || adm.Receipt != "" || !strings.EqualFold(adm.Payer, x402test.Address(1)) {
		t.Fatalf("admission %+v", adm)
	}
	if got := f.fac.Settlements(); got != 0 {
		t.Fatalf("settled %d before the upstream answered", got)
	}
	receipt, err := f.g.Settle(context.Background(), adm.Key, 200, routes)
	if err != nil || receipt == "" {
		t.Fatalf("Settle = %q, %v", receipt, err)
	}
	again, err := f.g.Settle(context.Background(), adm.Key, 200, routes)
	if err != nil || again != receipt {
		t.Errorf("second Settle = %q, %v; want the first receipt", again, err)
	}
	if got := f.fac.Settlements(); got != 1 {
		t.Errorf("settlements %d, want 1", got)
	}
	if got, want := f.fac.Balance(asset, payTo), big.NewInt(1000); got.Cmp(want) != 0 {
		t.Errorf("payee holds %v, want %v", got, want)
	}
	if len(f.events) != 1 || f.events[0].Meter != "x402_payment" {
		t.Errorf("billing events %+v, want one x402_payment", f.events)
	}
	// The same signed authorization again: a replay.
	if _, err := admit(f, h, nil); !isRefusal(err, string(x402.ReasonNonceUsed)) {
		t.Errorf("replay: %v, want a nonce-used refusal", err)
	}
}

func isRefusal(err error, reason string) bool {
	var r *Refusal
	return errors.As(err, &r) && (reason == "" || r.Reason == reason)
}

func TestRefusedPayments(t *testing.T) {
	tests := []struct {
		name   string
		p      x402test.Payment
		reason string
	}{
		{"tampered amount", x402test.Payment{Offer: offer("1000"), Now: now, After: func(p *x402.PaymentPayload) { p.Payload.Authorization.Value = "1" }}, string(x402.ReasonValueMismatch)},
		{"accepted a price never offered", x402test.Payment{Offer: offer("1"), Now: now}, string(x402.ReasonValueMismatch)},
		{"tampered payTo", x402test.Payment{Offer: offer("1000"), Now: now, Edit: func(a *x402.Authorization) { a.To = x402test.Address(9) }}, string(x402.ReasonRecipientMismatch)},
		{"signed by another key", x402test.Payment{Offer: offer("1000"), Now: now, After: func(p *x402.PaymentPayload) { p.Payload.Authorization.From = x402test.Address(2) }}, string(x402.ReasonInvalidSignature)},
		{"expired", x402test.Payment{Offer: offer("1000"), Now: now.Add(-time.Hour)}, string(x402.ReasonExpired)},
		{"payer cannot pay (facilitator's verify)", x402test.Payment{Offer: offer("1000"), Now: now, Key: x402test.Key(3)}, string(x402.ReasonInsufficientFunds)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			_, err := admit(f, x402test.Header(t, tt.p), nil)
			if !isRefusal(err, tt.reason) {
				t.Fatalf("err = %v, want refusal %s", err, tt.reason)
			}
			if f.fac.Settlements() != 0 || f.store.Len() != 0 {
				t.Errorf("settlements %d, claims kept %d; want none", f.fac.Settlements(), f.store.Len())
			}
		})
	}
}

func TestFailedUpstreamIsNotSettled(t *testing.T) {
	f := newFixture(t, nil)
	h := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 7})
	adm, err := admit(f, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := f.g.Settle(context.Background(), adm.Key, 502, routes); r != "" || err != nil {
		t.Fatalf("Settle on 502 = %q, %v; want nothing", r, err)
	}
	if f.fac.Settlements() != 0 {
		t.Fatal("a failed upstream was settled")
	}
	// Released: the unspent authorization may be presented again.
	if _, err := admit(f, h, nil); err != nil {
		t.Errorf("the released authorization again: %v", err)
	}
}

// flaky is a facilitator whose verify or settle fails as told.
type flaky struct {
	*x402.LocalFacilitator
	verifyErr, settleErr error
}

func (f *flaky) Verify(ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.VerifyResponse, error) {
	if f.verifyErr != nil {
		return x402.VerifyResponse{}, f.verifyErr
	}
	return f.LocalFacilitator.Verify(ctx, p, r)
}

func (f *flaky) Settle(ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
	if f.settleErr != nil {
		return x402.SettleResponse{}, f.settleErr
	}
	return f.LocalFacilitator.Settle(ctx, p, r)
}

func TestFacilitatorDown(t *testing.T) {
	fl := &flaky{verifyErr: errors.New("connection refused")}
	f := newFixture(t, fl)
	fl.LocalFacilitator = f.fac
	h := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 2})
	if _, err := admit(f, h, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("verify down: %v, want ErrUnavailable", err)
	}
	fl.verifyErr = nil
	adm, err := admit(f, h, nil)
	if err != nil {
		t.Fatalf("once the facilitator is back, the same payment: %v", err)
	}
	fl.settleErr = x402.ErrSettleOutcomeUnknown
	if _, err := f.g.Settle(context.Background(), adm.Key, 200, routes); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("settle outcome unknown: %v", err)
	}
	rec, _, _ := f.store.Get(context.Background(), adm.Key)
	if rec.State != paystore.Unknown {
		t.Errorf("state %v, want unknown (for the reconciler)", rec.State)
	}
	// The reconciler settles it once the facilitator answers again.
	fl.settleErr = nil
	f.reconcileOnce(t, fl, now, adm.Key)
}

func TestTopUpCredits(t *testing.T) {
	f := newFixture(t, nil)
	e := &entitlement.Entitlement{Subject: "acme", Customer: "cus_1", Plan: "pro"}
	h := x402test.Header(t, x402test.Payment{Offer: offer("500000"), Now: now, Nonce: 3})
	adm, err := admit(f, h, e)
	if err != nil {
		t.Fatal(err)
	}
	if adm.Kind != TopUpKind || adm.Credits != 100 || adm.Receipt == "" {
		t.Fatalf("admission %+v", adm)
	}
	if len(f.credits) != 1 || f.credits[0] != 100 || f.fac.Settlements() != 1 {
		t.Errorf("credited %v, settlements %d; want 100 once", f.credits, f.fac.Settlements())
	}
	if len(f.events) != 1 || f.events[0].Meter != "x402_top_up" || f.events[0].Units != 100 || f.events[0].Customer != "cus_1" {
		t.Errorf("billing events %+v", f.events)
	}
	// Without credentials, a top-up has nobody to credit.
	h2 := x402test.Header(t, x402test.Payment{Offer: offer("500000"), Now: now, Nonce: 4})
	if _, err := admit(f, h2, nil); !isRefusal(err, string(x402.ReasonValueMismatch)) {
		t.Errorf("anonymous top-up: %v", err)
	}
}

func TestPaymentIdentifier(t *testing.T) {
	f := newFixture(t, nil)
	const id = "pay_0123456789abcdef"
	first := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 10, PaymentID: id})
	adm, err := admit(f, first, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A retry while the first is being served waits.
	retry := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 11, PaymentID: id})
	if _, err := admit(f, retry, nil); !errors.Is(err, ErrUnavailable) {
		t.Errorf("retry in flight: %v, want unavailable", err)
	}
	receipt, err := f.g.Settle(context.Background(), adm.Key, 200, routes)
	if err != nil {
		t.Fatal(err)
	}
	// The SDK signs a new authorization for a retry; the id makes it the first.
	again, err := admit(f, retry, nil)
	if err != nil || !again.Retry || again.Receipt != receipt {
		t.Fatalf("retry after settlement = %+v, %v; want the first receipt", again, err)
	}
	if f.fac.Settlements() != 1 {
		t.Errorf("settlements %d, want 1", f.fac.Settlements())
	}
	// The same id for another purchase is a conflict.
	other := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 12, PaymentID: id})
	_, err = f.g.Admit(context.Background(), Request{Route: paid, Header: other, Method: "GET", Path: "/other"})
	var r *Refusal
	if !errors.As(err, &r) || !r.Conflict {
		t.Errorf("same id, other path: %v, want a conflict", err)
	}
}

func TestAtomicAmounts(t *testing.T) {
	tests := []struct {
		in   string
		dec  int
		want string
		bad  bool
	}{
		{"0.001", 6, "1000", false},
		{"4", 6, "4000000", false},
		{"1.5", 0, "", true},
		{"0", 6, "", true},
		{"-1", 6, "", true},
		{"1e3", 6, "", true},
		{".5", 6, "", true},
		{"5.", 6, "", true},
		{strings.Repeat("9", 61), 6, "", true},
	}
	for _, tt := range tests {
		got, err := x402.AtomicAmount(tt.in, tt.dec)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("AtomicAmount(%q, %d) = %q, %v; want %q, bad %v", tt.in, tt.dec, got, err, tt.want, tt.bad)
		}
	}
}

func TestAuthorizationLifetime(t *testing.T) {
	tests := []struct {
		name     string
		validFor time.Duration
		ok       bool
	}{
		{"the SDK's minute", 60 * time.Second, true},
		{"just long enough", 20 * time.Second, true},
		{"expires before it could be settled", 19 * time.Second, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			adm, err := admit(f, x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 40 + i, ValidFor: tt.validFor}), nil)
			if got := err == nil; got != tt.ok {
				t.Fatalf("admitted %v (%v), want %v", got, err, tt.ok)
			}
			if !tt.ok {
				if !isRefusal(err, string(x402.ReasonExpired)) || f.store.Len() != 0 {
					t.Errorf("refusal %v, claims %d; want an expiry refusal and nothing kept", err, f.store.Len())
				}
				return
			}
			// The record outlives the authorization by RecordGrace only.
			rec, _, _ := f.store.Get(context.Background(), adm.Key)
			if want := now.Add(tt.validFor).Add(RecordGrace); !rec.Expires.Equal(want) {
				t.Errorf("record expires %v, want %v", rec.Expires, want)
			}
		})
	}
}

// reconcileOnce has a reconciler settle the one payment left unknown in
// f's store through fac, at now, and fails unless key is then settled and
// the facilitator settled once.
func (f *fixture) reconcileOnce(t *testing.T, fac x402.Facilitator, now time.Time, key string) {
	t.Helper()
	r := &paystore.Reconciler{Store: f.store, Facilitator: fac, Now: func() time.Time { return now }, MinAge: -1, // no wait: nothing else settles here
		Requirements: func(rec paystore.Record) (x402.PaymentRequirements, bool) {
			_, req, err := f.g.Requirements(rec, routes)
			return req, err == nil
		}}
	if n, err := r.Once(context.Background()); n != 1 || err != nil {
		t.Fatalf("reconciled %d, %v", n, err)
	}
	if rec, _, _ := f.store.Get(context.Background(), key); rec.State != paystore.Settled || f.fac.Settlements() != 1 {
		t.Errorf("after reconciling: state %v, settlements %d; want settled once", rec.State, f.fac.Settlements())
	}
}
