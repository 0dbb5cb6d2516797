package paystore

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/tollgate-authz/tollgate/x402"
)

// noMinAge lets a Reconciler take a record as soon as it is Unknown: the
// tests here finish records on the reconciler's own clock, and MinAge has
// tests of its own (TestReconcilerMinAge).
const noMinAge = -1

const testPayTo = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"

func testOffer() x402.PaymentRequirements {
	return x402.PaymentRequirements{
		Scheme: x402.SchemeExact, Network: "eip155:84532", Amount: "10000", Asset: testAsset,
		PayTo: testPayTo, MaxTimeoutSeconds: 60, Extra: x402.Extra{Name: "USDC", Version: "2"},
	}
}

func testKey() *secp256k1.PrivateKey {
	b := make([]byte, 32)
	b[0], b[31] = 0x42, 7
	return secp256k1.PrivKeyFromBytes(b)
}

// signedHeader is the PAYMENT-SIGNATURE a client sends for the offer at
// testNow with nonce n, valid for validFor; and its decoded payload.
func signedHeader(t *testing.T, n int, validFor time.Duration) (string, x402.PaymentPayload) {
	t.Helper()
	req := testOffer()
	a := x402.Authorization{
		From: x402.AddressOfKey(testKey()), To: req.PayTo, Value: req.Amount, ValidAfter: "0",
		ValidBefore: fmt.Sprint(testNow.Add(validFor).Unix()),
		Nonce:       "0x" + hex.EncodeToString(append(make([]byte, 31), byte(n))),
	}
	d, err := x402.DomainOf(req)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := x402.SignAuthorization(testKey(), d, a)
	if err != nil {
		t.Fatal(err)
	}
	p := x402.PaymentPayload{X402Version: x402.Version, Resource: &x402.Resource{URL: "http://api.test/paid"}, Accepted: &req,
		Payload: x402.ExactEVMPayload{Signature: sig, Authorization: a}}
	h, err := x402.EncodeHeader(p)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// fakeFacilitator answers Settle with settle; nothing else is called.
type fakeFacilitator struct {
	settle func(ctx context.Context, p x402.PaymentPayload, req x402.PaymentRequirements) (x402.SettleResponse, error)
}

func (f *fakeFacilitator) Verify(context.Context, x402.PaymentPayload, x402.PaymentRequirements) (x402.VerifyResponse, error) {
	return x402.VerifyResponse{}, errors.New("fake: verify not expected")
}

func (f *fakeFacilitator) Settle(ctx context.Context, p x402.PaymentPayload, req x402.PaymentRequirements) (x402.SettleResponse, error) {
	return f.settle(ctx, p, req)
}

func (f *fakeFacilitator) Supported(context.Context) (x402.SupportedResponse, error) {
	return x402.SupportedResponse{}, errors.New("fake: supported not expected")
}

func refuse(reason string) *fakeFacilitator {
	return &fakeFacilitator{settle: func(_ context.Context, _ x402.PaymentPayload, req x402.PaymentRequirements) (x402.SettleResponse, error) {
		return x402.SettleResponse{ErrorReason: reason, Network: req.Network}, nil
	}}
}

// noAnswer is a settle whose answer never came: what HTTPFacilitator
// returns on a timeout after the request went out.
var noAnswer = &fakeFacilitator{settle: func(context.Context, x402.PaymentPayload, x402.PaymentRequirements) (x402.SettleResponse, error) {
	return x402.SettleResponse{}, &x402.FacilitatorError{Op: "settle", Unknown: true, Err: context.DeadlineExceeded}
}}

func decodeReceipt(t *testing.T, receipt string) x402.SettleResponse {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(receipt)
	if err != nil {
		t.Fatalf("receipt %q: %v", receipt, err)
	}
	var sr x402.SettleResponse
	if err := json.Unmarshal(raw, &sr); err != nil {
		t.Fatalf("receipt %s: %v", raw, err)
	}
	return sr
}

// TestReconciler: one Unknown record (one settle attempt so far, its
// answer lost) meets each kind of facilitator answer, in every store.
func TestReconciler(t *testing.T) {
	amount := big.NewInt(10000)
	payer := x402.AddressOfKey(testKey())
	type env struct {
		local  *x402.LocalFacilitator
		header string
		p      x402.PaymentPayload
	}
	cases := []struct {
		name        string
		validFor    time.Duration // of the authorization, from testNow
		clock       time.Duration // the reconciler's and facilitator's time, from testNow
		attempts    int           // settle attempts before this one
		payload     string        // replaces the stored header when set
		noOffer     bool
		setup       func(t *testing.T, e env) x402.Facilitator // nil: e.local
		wantOutcome string
		wantState   State
		wantReason  string // prefix
		wantTx      bool   // the receipt names a transaction
		wantPayee   int64  // payee's balance afterwards, with the local facilitator
	}{
		{
			name: "the lost settle went through: the facilitator answers its result", validFor: time.Minute,
			setup: func(t *testing.T, e env) x402.Facilitator {
				e.local.Mint(testAsset, payer, amount)
				if r, err := e.local.Settle(context.Background(), e.p, testOffer()); err != nil || !r.Success {
					t.Fatalf("first settle: %+v %v", r, err)
				}
				return e.local
			},
			wantOutcome: OutcomeSettled, wantState: Settled, wantTx: true, wantPayee: 10000,
		},
		{
			name: "the lost settle went through and the authorization has expired since", validFor: time.Minute, clock: time.Hour,
			setup: func(t *testing.T, e env) x402.Facilitator {
				e.local.Mint(testAsset, payer, amount)
				if r, err := e.local.Settle(context.Background(), e.p, testOffer()); err != nil || !r.Success {
					t.Fatalf("first settle: %+v %v", r, err)
				}
				return e.local
			},
			wantOutcome: OutcomeSettled, wantState: Settled, wantTx: true, wantPayee: 10000,
		},
		{
			name: "the lost settle did nothing: this one transfers once", validFor: time.Minute,
			setup: func(t *testing.T, e env) x402.Facilitator {
				e.local.Mint(testAsset, payer, new(big.Int).Mul(amount, big.NewInt(3)))
				return e.local
			},
			wantOutcome: OutcomeSettled, wantState: Settled, wantTx: true, wantPayee: 10000,
		},
		{
			name: "the nonce was used by another authorization: settled earlier", validFor: time.Minute,
			setup: func(t *testing.T, e env) x402.Facilitator {
				e.local.Mint(testAsset, payer, new(big.Int).Mul(amount, big.NewInt(3)))
				_, other := signedHeader(t, 1, 30*time.Second) // same nonce, another validBefore
				if r, err := e.local.Settle(context.Background(), other, testOffer()); err != nil || !r.Success {
					t.Fatalf("other settle: %+v %v", r, err)
				}
				return e.local
			},
			wantOutcome: OutcomeAlreadySettled, wantState: Settled, wantReason: string(x402.ReasonNonceUsed), wantPayee: 10000,
		},
		{
			name: "insufficient funds: failed", validFor: time.Minute,
			wantOutcome: OutcomeFailed, wantState: Failed, wantReason: string(x402.ReasonInsufficientFunds),
		},
		{
			name: "the authorization expired and nothing was settled: abandoned", validFor: time.Minute, clock: time.Hour,
			setup: func(t *testing.T, e env) x402.Facilitator {
				e.local.Mint(testAsset, payer, amount)
				return e.local
			},
			wantOutcome: OutcomeAbandoned, wantState: Failed, wantReason: ReasonUnreconciled + ": " + string(x402.ReasonExpired),
		},
		{
			name: "no answer again: stays unknown", validFor: time.Minute,
			setup:       func(*testing.T, env) x402.Facilitator { return noAnswer },
			wantOutcome: OutcomeUnknown, wantState: Unknown, wantReason: string(x402.ReasonSettlementUnknown),
		},
		{
			name: "no answer at the last attempt: abandoned", validFor: time.Minute, attempts: DefaultMaxAttempts - 1,
			setup:       func(*testing.T, env) x402.Facilitator { return noAnswer },
			wantOutcome: OutcomeAbandoned, wantState: Failed, wantReason: ReasonUnreconciled + ": " + string(x402.ReasonSettlementUnknown),
		},
		{
			name: "no answer after the authorization expired: abandoned", validFor: time.Minute, clock: time.Minute,
			setup:       func(*testing.T, env) x402.Facilitator { return noAnswer },
			wantOutcome: OutcomeAbandoned, wantState: Failed, wantReason: ReasonUnreconciled + ": ",
		},
		{
			name: "the facilitator says settlement_pending: stays unknown", validFor: time.Minute,
			setup:       func(*testing.T, env) x402.Facilitator { return refuse("settlement_pending") },
			wantOutcome: OutcomeUnknown, wantState: Unknown, wantReason: "settlement_pending",
		},
		{
			name: "the reference SDK's nonce reason: settled earlier", validFor: time.Minute,
			setup:       func(*testing.T, env) x402.Facilitator { return refuse("invalid_exact_evm_nonce_already_used") },
			wantOutcome: OutcomeAlreadySettled, wantState: Settled, wantReason: "invalid_exact_evm_nonce_already_used",
		},
		{
			name: "the reference SDK's balance reason: failed", validFor: time.Minute,
			setup:       func(*testing.T, env) x402.Facilitator { return refuse("invalid_exact_evm_insufficient_balance") },
			wantOutcome: OutcomeFailed, wantState: Failed, wantReason: "invalid_exact_evm_insufficient_balance",
		},
		{
			name: "a reason not known here: stays unknown", validFor: time.Minute,
			setup:       func(*testing.T, env) x402.Facilitator { return refuse("invalid_exact_evm_transaction_failed") },
			wantOutcome: OutcomeUnknown, wantState: Unknown, wantReason: "invalid_exact_evm_transaction_failed",
		},
		{
			name: "the offer is gone: stays unknown", validFor: time.Minute, noOffer: true,
			wantOutcome: OutcomeUnknown, wantState: Unknown, wantReason: "no offer",
		},
		{
			name: "the stored payload does not decode: abandoned", validFor: time.Minute, payload: "not base64!",
			wantOutcome: OutcomeAbandoned, wantState: Failed, wantReason: ReasonUnreconciled,
		},
	}
	stores(t, func(t *testing.T, fresh func() harness) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				ctx := context.Background()
				h := fresh()
				now := testNow // setup runs now; the reconciler tc.clock later
				clock := func() time.Time { return now }
				header, p := signedHeader(t, 1, tc.validFor)
				e := env{local: x402.NewLocalFacilitator(clock, "eip155:84532"), header: header, p: p}
				var f x402.Facilitator = e.local
				if tc.setup != nil {
					f = tc.setup(t, e)
				}
				if tc.payload != "" {
					header = tc.payload
				}
				now = testNow.Add(tc.clock)
				a := p.Payload.Authorization
				rec := Record{Key: KeyOf(testAsset, a.From, a.Nonce), Digest: DigestOf(header), Route: "paid", Payload: header, Expires: h.future}
				mustClaim(t, h.store, rec)
				for range tc.attempts + 1 {
					mustFinish(t, h.store, rec.Key, Unknown, "", "settlement_outcome_unknown")
				}

				var observed, settledKeys []string
				r := &Reconciler{
					Store: h.store, Facilitator: f, Now: clock, MinAge: noMinAge,
					Requirements: func(got Record) (x402.PaymentRequirements, bool) {
						if got.Route != "paid" {
							t.Errorf("Requirements asked for route %q", got.Route)
						}
						return testOffer(), !tc.noOffer
					},
					Observe:   func(o string) { observed = append(observed, o) },
					OnSettled: func(_ context.Context, got Record, _ string) { settledKeys = append(settledKeys, got.Key) },
				}
				resolved, err := r.Once(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := observed, []string{tc.wantOutcome}; !equalKeys(got, want) {
					t.Errorf("observed %v, want %v", got, want)
				}
				if got, want := resolved, map[bool]int{true: 0, false: 1}[tc.wantOutcome == OutcomeUnknown]; got != want {
					t.Errorf("resolved %d, want %d", got, want)
				}
				got := mustGet(t, h.store, rec.Key)
				if got.State != tc.wantState || !strings.HasPrefix(got.Reason, tc.wantReason) {
					t.Errorf("record: %v %q, want %v %q…", got.State, got.Reason, tc.wantState, tc.wantReason)
				}
				if want := tc.attempts + 2; got.Attempts != want {
					t.Errorf("attempts %d, want %d", got.Attempts, want)
				}
				if want := map[bool]int{true: 1}[tc.wantState == Settled]; len(settledKeys) != want {
					t.Errorf("OnSettled told %v, want %d call(s): what a settled payment bought is owed", settledKeys, want)
				}
				if tc.wantState == Settled {
					sr := decodeReceipt(t, got.Receipt)
					if !sr.Success || !strings.EqualFold(sr.Payer, payer) || sr.Network != "eip155:84532" || (sr.Transaction != "") != tc.wantTx {
						t.Errorf("receipt %+v: want success for %s, transaction %v", sr, payer, tc.wantTx)
					}
				} else if got.Receipt != "" {
					t.Errorf("receipt %q on a %v record", got.Receipt, got.State)
				}
				if got, want := e.local.Balance(testAsset, testPayTo).Int64(), tc.wantPayee; got != want {
					t.Errorf("payee balance %d, want %d: the money moved %v times", got, want, float64(got)/10000)
				}
				left := unknownKeys(t, h.store, 10)
				if stillUnknown := len(left) == 1; stillUnknown != (tc.wantState == Unknown) {
					t.Errorf("Unknowns after = %v with state %v", left, tc.wantState)
				}
			})
		}
	})
}

// TestReconcilerHTTPTimeout: through the real HTTP client, a facilitator
// that never answers leaves the record Unknown with one more attempt, and
// the next round, once it answers, settles it.
func TestReconcilerHTTPTimeout(t *testing.T) {
	ctx := context.Background()
	clock := func() time.Time { return testNow }
	local := fundedFacilitator()
	answer := x402.FacilitatorHandler(local)
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang: // closed: answer
			answer.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	store := NewMemory(clock, 10)
	header, p := signedHeader(t, 1, time.Minute)
	a := p.Payload.Authorization
	rec := Record{Key: KeyOf(testAsset, a.From, a.Nonce), Payload: header, Expires: testNow.Add(time.Hour)}
	mustClaim(t, store, rec)
	mustFinish(t, store, rec.Key, Unknown, "", "settlement_outcome_unknown")

	var observed []string
	r := &Reconciler{
		Store:        store,
		Facilitator:  &x402.HTTPFacilitator{URL: srv.URL, Client: srv.Client(), SettleTimeout: 100 * time.Millisecond},
		Requirements: func(Record) (x402.PaymentRequirements, bool) { return testOffer(), true },
		Now:          clock,
		MinAge:       noMinAge,
		Observe:      func(o string) { observed = append(observed, o) },
	}
	if _, err := r.Once(ctx); err != nil {
		t.Fatal(err)
	}
	got := mustGet(t, store, rec.Key)
	if got.State != Unknown || got.Attempts != 2 || got.Reason != string(x402.ReasonSettlementUnknown) {
		t.Errorf("after a timeout: %v attempts %d %q; want unknown, 2, %s", got.State, got.Attempts, got.Reason, x402.ReasonSettlementUnknown)
	}
	close(hang)
	if _, err := r.Once(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, store, rec.Key); got.State != Settled {
		t.Errorf("after the facilitator answers: %v %q, want settled", got.State, got.Reason)
	}
	if got, want := observed, []string{OutcomeUnknown, OutcomeSettled}; !equalKeys(got, want) {
		t.Errorf("observed %v, want %v", got, want)
	}
	if got := local.Settlements(); got != 1 {
		t.Errorf("%d settlements, want 1", got)
	}
}

// TestReconcilerRun: Run reconciles on its period and stops with ctx.
func TestReconcilerRun(t *testing.T) {
	clock := func() time.Time { return testNow }
	local := fundedFacilitator()
	store := NewMemory(clock, 10)
	header, p := signedHeader(t, 1, time.Minute)
	a := p.Payload.Authorization
	rec := Record{Key: KeyOf(testAsset, a.From, a.Nonce), Payload: header, Expires: testNow.Add(time.Hour)}
	mustClaim(t, store, rec)
	mustFinish(t, store, rec.Key, Unknown, "", "settlement_outcome_unknown")
	ctx, cancel := context.WithCancel(context.Background())
	observed := make(chan string, 10)
	r := &Reconciler{Store: store, Facilitator: local, Now: clock, MinAge: noMinAge,
		Requirements: func(Record) (x402.PaymentRequirements, bool) { return testOffer(), true },
		Observe:      func(o string) { observed <- o }}
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Millisecond); close(done) }()
	select {
	case got := <-observed:
		if got != OutcomeSettled {
			t.Errorf("outcome %q, want settled", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run never reconciled")
	}
	cancel()
	<-done
}

// TestReconcilerSettleTimeout: a facilitator that hangs is cut off by
// SettleTimeout, and the record stays Unknown for the next round.
func TestReconcilerSettleTimeout(t *testing.T) {
	clock := func() time.Time { return testNow }
	store := NewMemory(clock, 10)
	header, p := signedHeader(t, 1, time.Minute)
	a := p.Payload.Authorization
	rec := Record{Key: KeyOf(testAsset, a.From, a.Nonce), Payload: header, Expires: testNow.Add(time.Hour)}
	mustClaim(t, store, rec)
	mustFinish(t, store, rec.Key, Unknown, "", "settlement_outcome_unknown")
	hangs := &fakeFacilitator{settle: func(ctx context.Context, _ x402.PaymentPayload, _ x402.PaymentRequirements) (x402.SettleResponse, error) {
		select {
		case <-ctx.Done():
			return x402.SettleResponse{}, &x402.FacilitatorError{Op: "settle", Unknown: true, Err: ctx.Err()}
		case <-time.After(time.Minute): // only if nothing cut it off
			return x402.SettleResponse{Success: true, Transaction: "0xlate", Network: "eip155:84532"}, nil
		}
	}}
	r := &Reconciler{Store: store, Facilitator: hangs, Now: clock, SettleTimeout: time.Millisecond, MinAge: noMinAge,
		Requirements: func(Record) (x402.PaymentRequirements, bool) { return testOffer(), true }}
	if _, err := r.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, store, rec.Key); got.State != Unknown || got.Reason != string(x402.ReasonSettlementUnknown) {
		t.Errorf("got %v %q, want unknown %s", got.State, got.Reason, x402.ReasonSettlementUnknown)
	}
}
