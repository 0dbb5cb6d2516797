package payment

import (
	"context"
	"math/big"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

// TestPaymentIDOfAnotherPayerIsNotARetry: a payment-identifier is one
// client's idempotency key. Another payer who sends the same id (learnt, or
// a client library that reuses ids) with its own authorization must pay:
// its request is not the first payer's retry, and it does not get the
// first payer's receipt.
func TestPaymentIDOfAnotherPayerIsNotARetry(t *testing.T) {
	f := newFixture(t, nil)
	f.fac.Mint(asset, x402test.Address(2), big.NewInt(10_000_000))
	const id = "pay_shared_id_00000001"
	first := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 1, PaymentID: id})
	adm, err := admit(f, first, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.g.Settle(context.Background(), adm.Key, 200, routes); err != nil {
		t.Fatal(err)
	}
	other := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 1, PaymentID: id, Key: x402test.Key(2)})
	got, err := admit(f, other, nil)
	if err != nil {
		t.Fatalf("the other payer's payment: %v", err)
	}
	if got.Retry || got.Key == adm.Key {
		t.Fatalf("the other payer's payment was taken as the first payer's retry: %+v", got)
	}
	if _, err := f.g.Settle(context.Background(), got.Key, 200, routes); err != nil {
		t.Fatal(err)
	}
	if n := f.fac.Settlements(); n != 2 {
		t.Errorf("settlements %d, want 2: each payer pays", n)
	}
	// The first payer's own retry is still a retry.
	retry := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 2, PaymentID: id})
	if again, err := admit(f, retry, nil); err != nil || !again.Retry {
		t.Errorf("the first payer's retry = %+v, %v; want a retry", again, err)
	}
}

// cancelOnSettle settles, then cancels the caller's context, as Envoy does
// when the client goes away (or its timeout fires) just as the settle
// returns.
type cancelOnSettle struct {
	*x402.LocalFacilitator
	cancel context.CancelFunc
}

func (c *cancelOnSettle) Settle(ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
	sr, err := c.LocalFacilitator.Settle(ctx, p, r)
	c.cancel()
	return sr, err
}

// TestTopUpSettledIsCreditedWhenTheCheckIsCancelled: once a top-up is
// settled the money has moved; its credit (and billing event) must not
// hang on the Check's context, which a client that goes away cancels.
func TestTopUpSettledIsCreditedWhenTheCheckIsCancelled(t *testing.T) {
	fac := &cancelOnSettle{}
	var credited []int64
	var events int
	f := newFixture(t, fac, func(o *Options) {
		o.Credit = func(ctx context.Context, _ *entitlement.Entitlement, n int64, _ time.Time) error {
			if err := ctx.Err(); err != nil {
				return err // as a Redis call with a cancelled context does
			}
			credited = append(credited, n)
			return nil
		}
		o.Record = func(ctx context.Context, _ usage.Event) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			events++
			return nil
		}
	})
	fac.LocalFacilitator = f.fac
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fac.cancel = cancel
	e := &entitlement.Entitlement{Subject: "acme", Plan: "pro"}
	h := x402test.Header(t, x402test.Payment{Offer: offer("500000"), Now: now, Nonce: 5})
	adm, err := f.g.Admit(ctx, Request{Route: paid, Header: h, Entitlement: e, Method: "GET", Path: "/forecast"})
	if err != nil || adm.Kind != TopUpKind || adm.Receipt == "" {
		t.Fatalf("admission %+v, %v; want a settled top-up", adm, err)
	}
	if f.fac.Settlements() != 1 {
		t.Fatalf("settlements %d, want 1", f.fac.Settlements())
	}
	if len(credited) != 1 || credited[0] != 100 || events != 1 {
		t.Errorf("credited %v, billing events %d; want 100 credited and one event: the payer paid", credited, events)
	}
}

// TestAdmittedPaymentSettlesAfterAPriceReload: a payment admitted at the
// route's price is settled at that price even if a reload changed the
// price while the upstream answered: the payer signed what we offered, the
// upstream served it, and refusing it then would answer 402 for a request
// that was paid by the rules in force when it came in.
func TestAdmittedPaymentSettlesAfterAPriceReload(t *testing.T) {
	f := newFixture(t, nil)
	h := x402test.Header(t, x402test.Payment{Offer: offer("1000"), Now: now, Nonce: 9})
	adm, err := admit(f, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	reloaded := func(string) *policy.Route { return &policy.Route{Name: "forecast", Price: "0.002"} }
	receipt, err := f.g.Settle(context.Background(), adm.Key, 200, reloaded)
	if err != nil || receipt == "" {
		t.Fatalf("Settle after the price changed = %q, %v; want settled", receipt, err)
	}
	if rec, _, _ := f.store.Get(context.Background(), adm.Key); rec.State != paystore.Settled || f.fac.Settlements() != 1 {
		t.Errorf("state %v, settlements %d; want settled once", rec.State, f.fac.Settlements())
	}
	if got, want := f.fac.Balance(asset, payTo), big.NewInt(1000); got.Cmp(want) != 0 {
		t.Errorf("payee holds %v, want %v: the price the payer signed", got, want)
	}
}
