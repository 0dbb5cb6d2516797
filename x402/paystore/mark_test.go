package paystore

import (
	"context"
	"math/big"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/x402"
)

// TestFinishMark: the write-ahead mark (Finish Unknown, ReasonSettling)
// before a settle, and what Finish returns (the record as it was).
func TestFinishMark(t *testing.T) {
	ctx := context.Background()
	type step struct {
		state           State
		receipt, reason string
		wantErr         bool
		wantBefore      State // the state Finish returns
	}
	tests := []struct {
		name  string
		steps []step
		// the record after the steps
		wantState    State
		wantReason   string
		wantReceipt  string
		wantAttempts int
	}{
		{"a mark turns a pending record unknown and counts the attempt",
			[]step{{Unknown, "", ReasonSettling, false, Pending}},
			Unknown, ReasonSettling, "", 1},
		{"the outcome after a mark does not count the attempt again",
			[]step{{Unknown, "", ReasonSettling, false, Pending}, {Settled, "r1", "", false, Unknown}},
			Settled, "", "r1", 1},
		{"an unknown outcome after a mark: the same attempt",
			[]step{{Unknown, "", ReasonSettling, false, Pending}, {Unknown, "", "timeout", false, Unknown}},
			Unknown, "timeout", "", 1},
		{"a mark on an unknown record (the reconciler's) counts a new attempt",
			[]step{{Unknown, "", ReasonSettling, false, Pending}, {Unknown, "", "timeout", false, Unknown}, {Unknown, "", ReasonSettling, false, Unknown}},
			Unknown, ReasonSettling, "", 2},
		{"a record whose mark was never followed (a crash) is marked again",
			[]step{{Unknown, "", ReasonSettling, false, Pending}, {Unknown, "", ReasonSettling, false, Unknown}, {Failed, "", "insufficient_funds", false, Unknown}},
			Failed, "insufficient_funds", "", 2},
		{"a mark leaves a settled record, which Finish returns",
			[]step{{Settled, "r1", "", false, Pending}, {Unknown, "", ReasonSettling, false, Settled}, {Failed, "", "nonce used", false, Settled}},
			Settled, "", "r1", 1},
		{"a mark leaves a failed record",
			[]step{{Failed, "", "insufficient_funds", false, Pending}, {Unknown, "", ReasonSettling, false, Failed}},
			Failed, "insufficient_funds", "", 1},
		{"a mark is unknown, never settled or failed",
			[]step{{Settled, "r1", ReasonSettling, true, 0}, {Failed, "", ReasonSettling, true, 0}},
			Pending, "", "", 0},
	}
	stores(t, func(t *testing.T, fresh func() harness) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				h := fresh()
				rec := record(h, 1, "")
				mustClaim(t, h.store, rec)
				for i, st := range tt.steps {
					start := time.Now().Truncate(time.Millisecond)
					before, err := h.store.Finish(ctx, rec.Key, st.state, st.receipt, st.reason)
					if (err != nil) != st.wantErr {
						t.Fatalf("step %d: Finish(%v, %q) = %v, want error %v", i, st.state, st.reason, err, st.wantErr)
					}
					if err != nil {
						continue
					}
					if before.State != st.wantBefore || before.Key != rec.Key {
						t.Errorf("step %d: Finish returned %v %q, want the record as it was (%v)", i, before.State, before.Key, st.wantBefore)
					}
					if st.wantBefore == Settled || st.reason == ReasonSettling && st.wantBefore == Failed {
						continue // nothing changed: LastAttempt neither
					}
					got := mustGet(t, h.store, rec.Key)
					// The store's clock: Memory's is the test's; Redis's the server's.
					if _, ok := h.store.(*Memory); ok {
						if !got.LastAttempt.Equal(testNow) {
							t.Errorf("step %d: LastAttempt %v, want the store's clock %v", i, got.LastAttempt, testNow)
						}
					} else if end := time.Now(); got.LastAttempt.Before(start) || got.LastAttempt.After(end) {
						t.Errorf("step %d: LastAttempt %v, not between the call's start %v and end %v", i, got.LastAttempt, start, end)
					}
				}
				got := mustGet(t, h.store, rec.Key)
				if got.State != tt.wantState || got.Reason != tt.wantReason || got.Receipt != tt.wantReceipt || got.Attempts != tt.wantAttempts {
					t.Errorf("got %v %q %q attempts %d; want %v %q %q attempts %d", got.State, got.Reason, got.Receipt, got.Attempts,
						tt.wantState, tt.wantReason, tt.wantReceipt, tt.wantAttempts)
				}
				listed := unknownKeys(t, h.store, 10)
				if want := tt.wantState == Unknown; (len(listed) == 1) != want {
					t.Errorf("Unknowns = %v; want the record listed: %v", listed, want)
				}
			})
		}
	})
}

// TestReconcilerMinAge: an Unknown record is left alone until its last
// attempt is MinAge old (a live settle marked it and may still wait for
// its answer); then it is taken. MinAge defaults to 2×SettleTimeout, or
// DefaultMinAge.
func TestReconcilerMinAge(t *testing.T) {
	tests := []struct {
		name          string
		minAge        time.Duration
		settleTimeout time.Duration
		age           time.Duration // of the mark, on the reconciler's clock
		wantTaken     bool
	}{
		{"MinAge: younger is left", 30 * time.Second, 0, 30*time.Second - time.Millisecond, false},
		{"MinAge: that old is taken", 30 * time.Second, 0, 30 * time.Second, true},
		{"default 2×SettleTimeout: younger is left", 0, 5 * time.Second, 10*time.Second - time.Millisecond, false},
		{"default 2×SettleTimeout: that old is taken", 0, 5 * time.Second, 10 * time.Second, true},
		{"default without SettleTimeout: younger than DefaultMinAge is left", 0, 0, DefaultMinAge - time.Millisecond, false},
		{"default without SettleTimeout: DefaultMinAge old is taken", 0, 0, DefaultMinAge, true},
		{"negative: no wait", -1, 0, 0, true},
	}
	stores(t, func(t *testing.T, fresh func() harness) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := context.Background()
				h := fresh()
				local := fundedFacilitator()
				rec := unknownRecord(t, h.store, h.future, ReasonSettling) // a live settle's mark
				at := mustGet(t, h.store, rec.Key).LastAttempt.Add(tt.age)
				var observed []string
				r := &Reconciler{Store: h.store, Facilitator: local, Now: func() time.Time { return at },
					MinAge: tt.minAge, SettleTimeout: tt.settleTimeout,
					Requirements: func(Record) (x402.PaymentRequirements, bool) { return testOffer(), true },
					Observe:      func(o string) { observed = append(observed, o) }}
				if _, err := r.Once(ctx); err != nil {
					t.Fatal(err)
				}
				got := mustGet(t, h.store, rec.Key)
				taken := local.Settlements() == 1
				if taken != tt.wantTaken {
					t.Fatalf("taken %v (settlements %d, observed %v), want %v", taken, local.Settlements(), observed, tt.wantTaken)
				}
				wantState, wantObserved := Unknown, []string(nil)
				if tt.wantTaken {
					wantState, wantObserved = Settled, []string{OutcomeSettled}
				}
				if got.State != wantState || !equalKeys(observed, wantObserved) {
					t.Errorf("state %v, observed %v; want %v, %v", got.State, observed, wantState, wantObserved)
				}
			})
		}
	})
}

// listThenTouch is a store whose Unknowns lists the records, then has
// someone else (another reconciler, on another replica) mark them before
// the caller gets to them.
type listThenTouch struct {
	Store
	other Store
}

func (s listThenTouch) Unknowns(ctx context.Context, n int) ([]Record, error) {
	recs, err := s.Store.Unknowns(ctx, n)
	for _, r := range recs {
		if _, err := s.other.Finish(ctx, r.Key, Unknown, "", ReasonSettling); err != nil {
			return nil, err
		}
	}
	return recs, err
}

// TestReconcilerTellsOnce: OnSettled is told only by the Finish that
// turned the record Settled, so what a payment bought is given once; and a
// record someone else took up since it was listed is left to them.
func TestReconcilerTellsOnce(t *testing.T) {
	tests := []struct {
		name string
		// meanwhile runs during the reconciler's settle, on another
		// replica's handle; nil: nothing.
		meanwhile   func(t *testing.T, other Store, key string)
		touch       bool // another reconciler marks it after it was listed
		answer      string
		wantTold    int
		wantReceipt string // "" : the reconciler's
		wantSettles int
	}{
		{name: "settled here: told once", wantTold: 1, wantSettles: 1},
		{name: "a live settle recorded Settled first, the facilitator gave the first result", answer: "",
			meanwhile: func(t *testing.T, other Store, key string) { mustFinish(t, other, key, Settled, "live-receipt", "") },
			wantTold:  0, wantReceipt: "live-receipt", wantSettles: 1},
		{name: "a live settle recorded Settled first, the facilitator says nonce used", answer: string(x402.ReasonNonceUsed),
			meanwhile: func(t *testing.T, other Store, key string) { mustFinish(t, other, key, Settled, "live-receipt", "") },
			wantTold:  0, wantReceipt: "live-receipt", wantSettles: 0},
		{name: "marked by another reconciler since it was listed: left to it", touch: true, wantTold: 0, wantSettles: 0},
	}
	stores(t, func(t *testing.T, fresh func() harness) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := context.Background()
				h := fresh()
				clock := func() time.Time { return testNow }
				local := fundedFacilitator()
				rec := unknownRecord(t, h.store, h.future, "settlement_outcome_unknown")
				fac := &fakeFacilitator{settle: func(ctx context.Context, p x402.PaymentPayload, req x402.PaymentRequirements) (x402.SettleResponse, error) {
					if tt.meanwhile != nil {
						tt.meanwhile(t, h.replica(), rec.Key)
					}
					if tt.answer != "" {
						return x402.SettleResponse{ErrorReason: tt.answer, Network: req.Network}, nil
					}
					return local.Settle(ctx, p, req)
				}}
				var store Store = h.store
				if tt.touch {
					store = listThenTouch{h.store, h.replica()}
				}
				calls, told := 0, 0
				fac2 := &fakeFacilitator{settle: func(ctx context.Context, p x402.PaymentPayload, req x402.PaymentRequirements) (x402.SettleResponse, error) {
					calls++
					return fac.settle(ctx, p, req)
				}}
				r := &Reconciler{Store: store, Facilitator: fac2, Now: clock, MinAge: noMinAge,
					Requirements: func(Record) (x402.PaymentRequirements, bool) { return testOffer(), true },
					OnSettled:    func(context.Context, Record, string) { told++ }}
				for range 2 { // and a second round finds nothing
					if _, err := r.Once(ctx); err != nil {
						t.Fatal(err)
					}
				}
				if told != tt.wantTold {
					t.Errorf("OnSettled told %d times, want %d", told, tt.wantTold)
				}
				if got := local.Settlements(); got != tt.wantSettles {
					t.Errorf("settlements %d, want %d", got, tt.wantSettles)
				}
				if tt.touch {
					if calls != 0 {
						t.Errorf("%d settles sent for a record another reconciler took up, want 0", calls)
					}
					return
				}
				got := mustGet(t, h.store, rec.Key)
				if got.State != Settled || tt.wantReceipt != "" && got.Receipt != tt.wantReceipt {
					t.Errorf("record %v receipt %q; want settled, receipt %q (the first stands)", got.State, got.Receipt, tt.wantReceipt)
				}
			})
		}
	})
}

// fundedFacilitator is a local facilitator on testNow's clock, in which
// the test payer (testKey) holds funds.
func fundedFacilitator() *x402.LocalFacilitator {
	local := x402.NewLocalFacilitator(func() time.Time { return testNow }, "eip155:84532")
	local.Mint(testAsset, x402.AddressOfKey(testKey()), big.NewInt(10000))
	return local
}

// unknownRecord claims a payment for route "paid" in store and marks it
// Unknown with reason, as a settle whose outcome is not known leaves it.
func unknownRecord(t *testing.T, store Store, expires time.Time, reason string) Record {
	t.Helper()
	header, p := signedHeader(t, 1, time.Minute)
	a := p.Payload.Authorization
	rec := Record{Key: KeyOf(testAsset, a.From, a.Nonce), Route: "paid", Payload: header, Expires: expires}
	mustClaim(t, store, rec)
	mustFinish(t, store, rec.Key, Unknown, "", reason)
	return rec
}
