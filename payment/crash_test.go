package payment

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/redistest"
	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

// settleTimeout is the reconcilers' SettleTimeout here: their MinAge is
// twice it (the default).
const (
	settleTimeout = 5 * time.Second
	minAge        = 2 * settleTimeout
)

var prefixes atomic.Int64

// eachStore runs test on a Memory store (on the fixed clock now) and on a
// real Redis (whose clock is the server's); store gives a fresh one.
func eachStore(t *testing.T, test func(t *testing.T, store func() paystore.Store)) {
	t.Run("memory", func(t *testing.T) {
		test(t, func() paystore.Store { return paystore.NewMemory(func() time.Time { return now }, 100) })
	})
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		test(t, func() paystore.Store {
			return paystore.NewRedis(srv.Client(), fmt.Sprintf("crash%d:", prefixes.Add(1)))
		})
	})
}

// hooked is the LocalFacilitator, whose Settle a test may take over.
type hooked struct {
	*x402.LocalFacilitator
	settle func(ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error)
}

func (h *hooked) Settle(ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
	if h.settle != nil {
		return h.settle(ctx, p, r)
	}
	return h.LocalFacilitator.Settle(ctx, p, r)
}

// crashFixture is a gate over a store of the test's choice, a hooked
// facilitator for the live path and the plain one for reconcilers.
type crashFixture struct {
	g     *Gate
	local *x402.LocalFacilitator
	fac   *hooked
	store paystore.Store

	mu      sync.Mutex
	credits []string // subject:credits
	events  []usage.Event
	seen    map[string]int
}

var acme = &entitlement.Entitlement{Subject: "acme", Customer: "cus_1", Plan: "pro"}

func newCrashFixture(t *testing.T, store paystore.Store, lookupErr error) *crashFixture {
	t.Helper()
	f := &crashFixture{local: x402.NewLocalFacilitator(func() time.Time { return now }, "eip155:84532"), store: store, seen: map[string]int{}}
	f.local.Mint(asset, x402test.Address(1), big.NewInt(10_000_000))
	f.fac = &hooked{LocalFacilitator: f.local}
	g, err := New(Options{
		Network: "eip155:84532", Asset: asset, PayTo: payTo, AssetName: "USDC", AssetVersion: "2", Decimals: 6, Currency: "USDC",
		TopUps:      []TopUp{{Credits: 100, Price: "0.5"}},
		Facilitator: f.fac, Store: store, Now: func() time.Time { return now },
		Credit: func(_ context.Context, e *entitlement.Entitlement, n int64, _ time.Time) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.credits = append(f.credits, fmt.Sprintf("%s:%d", e.Subject, n))
			return nil
		},
		Lookup: func(_ context.Context, subject string) (*entitlement.Entitlement, error) {
			if lookupErr != nil {
				return nil, lookupErr
			}
			if subject != acme.Subject {
				return nil, entitlement.ErrNotFound
			}
			return acme, nil
		},
		Record: func(_ context.Context, ev usage.Event) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.events = append(f.events, ev)
			return nil
		},
		Observe: func(stage, outcome string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.seen[stage+"/"+outcome]++
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.g = g
	return f
}

// reconciler is the app's reconciler at time at: default MinAge, credits
// through Gate.Reconciled.
func (f *crashFixture) reconciler(at time.Time) *paystore.Reconciler {
	return &paystore.Reconciler{
		Store: f.store, Facilitator: f.local, Now: func() time.Time { return at }, SettleTimeout: settleTimeout,
		Requirements: func(rec paystore.Record) (x402.PaymentRequirements, bool) {
			_, req, err := f.g.Requirements(rec, routes)
			return req, err == nil
		},
		OnSettled: func(ctx context.Context, rec paystore.Record, _ string) { f.g.Reconciled(ctx, rec, routes) },
	}
}

func (f *crashFixture) get(t *testing.T, key string) paystore.Record {
	t.Helper()
	rec, found, err := f.store.Get(context.Background(), key)
	if err != nil || !found {
		t.Fatalf("Get(%s) = %v, %v", key, found, err)
	}
	return rec
}

func (f *crashFixture) got() (credits []string, meters []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range f.events {
		meters = append(meters, ev.Meter)
	}
	return append([]string(nil), f.credits...), meters
}

func keyOf(t *testing.T, header string) string {
	t.Helper()
	p, err := x402.DecodePaymentSignature(header)
	if err != nil {
		t.Fatal(err)
	}
	a := p.Payload.Authorization
	return paystore.KeyOf(asset, a.From, a.Nonce)
}

// purchase is what a test pays for: a call on the paid route (settled by
// Settle after the upstream) or a top-up (settled in the Check, by Admit).
type purchase struct {
	name   string
	amount string
	e      *entitlement.Entitlement
	// pay runs the live path up to and including its settle.
	pay func(f *crashFixture, header string) (receipt string, err error)
	// credits and meters are what the payment is owed once settled.
	credits, meters []string
}

var purchases = []purchase{
	{
		name: "per call", amount: "1000",
		pay: func(f *crashFixture, h string) (string, error) {
			adm, err := admit(&fixture{g: f.g}, h, nil)
			if err != nil {
				return "", err
			}
			return f.g.Settle(context.Background(), adm.Key, 200, routes)
		},
		meters: []string{"x402_payment"},
	},
	{
		name: "top-up", amount: "500000", e: acme,
		pay: func(f *crashFixture, h string) (string, error) {
			adm, err := admit(&fixture{g: f.g}, h, acme)
			return adm.Receipt, err
		},
		credits: []string{"acme:100"}, meters: []string{"x402_top_up"},
	},
}

// TestCrashMidSettle: a replica that dies after sending /settle and
// before recording its outcome leaves the record Unknown (the write-ahead
// mark), not Pending: a reconciler leaves it alone while a live settle
// could still be waiting (younger than MinAge), then finds the money moved
// and records it Settled, once; a top-up's credits are then given, once.
func TestCrashMidSettle(t *testing.T) {
	eachStore(t, func(t *testing.T, store func() paystore.Store) {
		for i, pu := range purchases {
			t.Run(pu.name, func(t *testing.T) {
				ctx := context.Background()
				f := newCrashFixture(t, store(), nil)
				h := x402test.Header(t, x402test.Payment{Offer: offer(pu.amount), Now: now, Nonce: 40 + i})
				key := keyOf(t, h)
				// The settle is sent and executed; then the replica is gone.
				f.fac.settle = func(ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
					if _, err := f.local.Settle(ctx, p, r); err != nil {
						t.Error(err)
					}
					runtime.Goexit()
					return x402.SettleResponse{}, nil
				}
				done := make(chan struct{})
				go func() {
					defer close(done)
					_, _ = pu.pay(f, h)
					t.Error("the live path went on after the crash")
				}()
				<-done
				f.fac.settle = nil

				rec := f.get(t, key)
				if got, want := rec.State, paystore.Unknown; got != want {
					t.Fatalf("after the crash: state %v, want %v (a Pending record is never reconciled)", got, want)
				}
				if got, want := rec.Reason, paystore.ReasonSettling; got != want {
					t.Errorf("after the crash: reason %q, want %q", got, want)
				}
				if got, want := f.local.Settlements(), 1; got != want {
					t.Fatalf("settlements %d, want %d", got, want)
				}
				steps := []struct {
					name                    string
					age                     time.Duration
					wantState               paystore.State
					wantCredits, wantMeters []string
				}{
					{"younger than MinAge: maybe a live settle still waiting", minAge - time.Millisecond, paystore.Unknown, nil, nil},
					{"MinAge old: reconciled", minAge, paystore.Settled, pu.credits, nil},
					{"again: nothing more", 2 * minAge, paystore.Settled, pu.credits, nil},
				}
				if pu.credits != nil {
					for i := 1; i < len(steps); i++ {
						steps[i].wantMeters = pu.meters
					}
				}
				for _, st := range steps {
					if _, err := f.reconciler(rec.LastAttempt.Add(st.age)).Once(ctx); err != nil {
						t.Fatalf("%s: %v", st.name, err)
					}
					got := f.get(t, key)
					if got.State != st.wantState {
						t.Errorf("%s: state %v, want %v", st.name, got.State, st.wantState)
					}
					credits, meters := f.got()
					if fmt.Sprint(credits) != fmt.Sprint(st.wantCredits) || fmt.Sprint(meters) != fmt.Sprint(st.wantMeters) {
						t.Errorf("%s: credited %v, events %v; want %v, %v", st.name, credits, meters, st.wantCredits, st.wantMeters)
					}
				}
				if got, want := f.local.Balance(asset, payTo).String(), pu.amount; got != want {
					t.Errorf("payee holds %s, want %s: the money moved once", got, want)
				}
			})
		}
	})
}

// TestLiveSettleAfterReconciler: a live settle that outlived MinAge (a
// stalled replica) while a reconciler settled its payment gets "nonce
// already used", or the first result, from the facilitator: the response
// carries the reconciler's receipt instead of turning into a 402, and a
// top-up is credited once (by the reconciler), not again by the Check.
func TestLiveSettleAfterReconciler(t *testing.T) {
	answers := []struct {
		name   string
		answer func(f *crashFixture, ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error)
	}{
		{"nonce already used", func(_ *crashFixture, _ context.Context, _ x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
			return x402.SettleResponse{ErrorReason: string(x402.ReasonNonceUsed), Network: r.Network}, nil
		}},
		{"the first result again", func(f *crashFixture, ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
			return f.local.Settle(ctx, p, r)
		}},
		{"no answer", func(*crashFixture, context.Context, x402.PaymentPayload, x402.PaymentRequirements) (x402.SettleResponse, error) {
			return x402.SettleResponse{}, x402.ErrSettleOutcomeUnknown
		}},
	}
	eachStore(t, func(t *testing.T, store func() paystore.Store) {
		for i, pu := range purchases {
			for j, an := range answers {
				t.Run(pu.name+"/"+an.name, func(t *testing.T) {
					f := newCrashFixture(t, store(), nil)
					h := x402test.Header(t, x402test.Payment{Offer: offer(pu.amount), Now: now, Nonce: 50 + 10*i + j})
					key := keyOf(t, h)
					f.fac.settle = func(ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
						// Stalled past MinAge: the reconciler takes the record.
						rec := f.get(t, key)
						if n, err := f.reconciler(rec.LastAttempt.Add(minAge)).Once(ctx); n != 1 || err != nil {
							t.Errorf("the reconciler resolved %d, %v; want 1", n, err)
						}
						return an.answer(f, ctx, p, r)
					}
					receipt, err := pu.pay(f, h)
					if err != nil {
						t.Fatalf("live path: %v, want the reconciler's receipt", err)
					}
					rec := f.get(t, key)
					if rec.State != paystore.Settled || receipt == "" || receipt != rec.Receipt {
						t.Errorf("receipt %q, record %v %q; want the record's receipt", receipt, rec.State, rec.Receipt)
					}
					credits, meters := f.got()
					wantMeters := pu.meters
					if pu.credits == nil {
						wantMeters = nil // a reconciled call's event is not sent again by the live path
					}
					if fmt.Sprint(credits) != fmt.Sprint(pu.credits) || fmt.Sprint(meters) != fmt.Sprint(wantMeters) {
						t.Errorf("credited %v, events %v; want %v, %v", credits, meters, pu.credits, wantMeters)
					}
					if got, want := f.local.Balance(asset, payTo).String(), pu.amount; got != want {
						t.Errorf("payee holds %s, want %s", got, want)
					}
				})
			}
		}
	})
}

// TestReconciledTopUp: a top-up whose settle outcome was unknown is
// answered 503 and credits nothing; once a reconciler finds it settled,
// its credits are given to the subject who paid, once, however many
// reconcilers look at it (two at once here, then again).
func TestReconciledTopUp(t *testing.T) {
	tests := []struct {
		name                    string
		amount                  string
		e                       *entitlement.Entitlement
		moved                   bool  // the lost settle went through
		lookupErr               error // the entitlement source is down
		wantCredits, wantMeters []string
		wantSeen                string
	}{
		{name: "answer lost, money moved", amount: "500000", e: acme, moved: true,
			wantCredits: []string{"acme:100"}, wantMeters: []string{"x402_top_up"}, wantSeen: "topup/credited"},
		{name: "answer lost, nothing moved: the reconciler settles it", amount: "500000", e: acme,
			wantCredits: []string{"acme:100"}, wantMeters: []string{"x402_top_up"}, wantSeen: "topup/credited"},
		{name: "the subject cannot be looked up: counted, not credited", amount: "500000", e: acme, moved: true, lookupErr: errors.New("source down"),
			wantMeters: []string{"x402_top_up"}, wantSeen: "topup/credit_failed"},
		{name: "a call's payment buys no credits", amount: "1000", e: acme, moved: true},
	}
	eachStore(t, func(t *testing.T, store func() paystore.Store) {
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := context.Background()
				f := newCrashFixture(t, store(), tt.lookupErr)
				h := x402test.Header(t, x402test.Payment{Offer: offer(tt.amount), Now: now, Nonce: 70 + i})
				key := keyOf(t, h)
				f.fac.settle = func(ctx context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
					if tt.moved {
						_, _ = f.local.Settle(ctx, p, r)
					}
					return x402.SettleResponse{}, x402.ErrSettleOutcomeUnknown
				}
				adm, err := admit(&fixture{g: f.g}, h, tt.e)
				if tt.amount == "1000" {
					// A call: admitted, settled after the upstream.
					if err != nil {
						t.Fatal(err)
					}
					if _, err := f.g.Settle(ctx, adm.Key, 200, routes); !errors.Is(err, ErrUnavailable) {
						t.Fatalf("Settle: %v, want unavailable", err)
					}
				} else if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("Admit: %+v, %v; want unavailable (503)", adm, err)
				}
				if credits, _ := f.got(); len(credits) != 0 {
					t.Fatalf("credited %v before the outcome is known", credits)
				}
				f.fac.settle = nil
				rec := f.get(t, key)
				at := rec.LastAttempt.Add(minAge)
				var wg sync.WaitGroup
				for range 2 {
					wg.Go(func() {
						if _, err := f.reconciler(at).Once(ctx); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
				if _, err := f.reconciler(at.Add(minAge)).Once(ctx); err != nil {
					t.Error(err)
				}
				if got := f.get(t, key); got.State != paystore.Settled {
					t.Errorf("state %v, want settled", got.State)
				}
				credits, meters := f.got()
				if fmt.Sprint(credits) != fmt.Sprint(tt.wantCredits) || fmt.Sprint(meters) != fmt.Sprint(tt.wantMeters) {
					t.Errorf("credited %v, events %v; want %v, %v", credits, meters, tt.wantCredits, tt.wantMeters)
				}
				if tt.wantSeen != "" {
					f.mu.Lock()
					n := f.seen[tt.wantSeen]
					f.mu.Unlock()
					if n != 1 {
						t.Errorf("observed %s %d times, want once", tt.wantSeen, n)
					}
				}
				if got, want := f.local.Balance(asset, payTo).String(), tt.amount; got != want {
					t.Errorf("payee holds %s, want %s", got, want)
				}
			})
		}
	})
}
