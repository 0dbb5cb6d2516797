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

	"github.com/tollgate-authz/tollgate/internal/mpptest"
	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/mpp"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/x402"
)

const mppKey = "0123456789abcdef0123456789abcdef-test"

// mppFixture is a fixture whose gate takes the Payment scheme too, with a
// clock the test moves.
type mppFixture struct {
	*fixture
	clock *time.Time
}

func newMPPFixture(t *testing.T, fac x402.Facilitator) *mppFixture {
	t.Helper()
	clock := now
	f := newFixture(t, fac, func(o *Options) {
		o.MPP = &MPP{Key: []byte(mppKey), Realm: "api.test"}
		o.Now = func() time.Time { return clock }
	})
	return &mppFixture{fixture: f, clock: &clock}
}

// pay answers the fixture's challenge for route as mppx's evm client does.
func (f *mppFixture) pay(t *testing.T, route *policy.Route, p mpptest.Payment) string {
	t.Helper()
	p.Challenge = f.g.MPPChallenge(Want{Route: route})
	if p.Challenge == "" {
		t.Fatal("no Payment challenge for a priced route")
	}
	if p.Key == nil {
		p.Key = x402test.Key(1)
	}
	p.TokenName, p.TokenVersion = "USDC", "2"
	return mpptest.Authorization(t, p)
}

func admitMPP(f *mppFixture, route *policy.Route, authorization string) (Admission, error) {
	return f.g.Admit(context.Background(), Request{Route: route, Header: authorization, MPP: true, Method: "GET", Path: "/forecast"})
}

func TestMPPChallenge(t *testing.T) {
	f := newMPPFixture(t, nil)
	tests := []struct {
		name   string
		g      *Gate
		want   Want
		amount string // "" : no challenge
	}{
		{"priced route", f.g, Want{Route: paid}, "1000"},
		{"credits refusal on a priced route: its price", f.g, Want{Route: paid, Subject: true, Credits: true, Lack: 5}, "1000"},
		{"unpriced route: top-ups are x402 only", f.g, Want{Route: &policy.Route{Name: "chat"}, Subject: true, Credits: true, Lack: 5}, ""},
		{"no route", f.g, Want{}, ""},
		{"scheme off", newFixture(t, nil).g, Want{Route: paid}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.g.MPPChallenge(tt.want)
			if tt.amount == "" {
				if h != "" {
					t.Fatalf("challenge %q where none belongs", h)
				}
				return
			}
			ch := mpptest.Params(t, h)
			if ch["method"] != "evm" || ch["intent"] != "charge" || ch["realm"] != "api.test" || ch["expires"] != "2027-01-15T08:05:00Z" {
				t.Errorf("challenge %v: want evm charge in realm api.test expiring in 5 minutes", ch)
			}
			raw, err := base64.RawURLEncoding.DecodeString(ch["request"])
			if err != nil {
				t.Fatal(err)
			}
			var req struct {
				Amount, Currency, Recipient string
				MethodDetails               struct{ ChainID uint64 }
			}
			if err := json.Unmarshal(raw, &req); err != nil {
				t.Fatal(err)
			}
			if req.Amount != tt.amount || req.Currency != asset || req.Recipient != payTo || req.MethodDetails.ChainID != 84532 {
				t.Errorf("request %s: want %s of %s to %s on 84532 (x402's offer)", raw, tt.amount, asset, payTo)
			}
		})
	}
}

func TestMPPPaidOnceAfterTheUpstream(t *testing.T) {
	f := newMPPFixture(t, nil)
	cred := f.pay(t, paid, mpptest.Payment{})
	challengeID := mpptest.Params(t, f.g.MPPChallenge(Want{Route: paid}))["id"]
	adm, err := admitMPP(f, paid, cred)
	if err != nil {
		t.Fatal(err)
	}
	if adm.Kind != PerCall || adm.Amount != "1000" || !strings.EqualFold(adm.Payer, x402test.Address(1)) {
		t.Fatalf("admission %+v", adm)
	}
	if f.fac.Settlements() != 0 {
		t.Fatal("settled before the upstream answered")
	}
	receipt, err := f.g.Settle(context.Background(), adm.Key, 200, routes)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := mpp.ParseReceipt(receipt)
	if err != nil {
		t.Fatalf("receipt %q is not a Payment-Receipt: %v", receipt, err)
	}
	// The clock stands still, so the challenge is the one paid.
	if rc.Method != "evm" || rc.ChainID != 84532 || !strings.HasPrefix(rc.Reference, "0x") || rc.ChallengeID != challengeID {
		t.Errorf("receipt %+v, want evm on 84532 for challenge %s", rc, challengeID)
	}
	if again, err := f.g.Settle(context.Background(), adm.Key, 200, routes); err != nil || again != receipt {
		t.Errorf("second Settle = %q, %v; want the first receipt", again, err)
	}
	if got := f.fac.Settlements(); got != 1 {
		t.Errorf("settlements %d, want 1", got)
	}
	if got, want := f.fac.Balance(asset, payTo), big.NewInt(1000); got.Cmp(want) != 0 {
		t.Errorf("payee holds %v, want %v", got, want)
	}
	if _, err := admitMPP(f, paid, cred); !isRefusal(err, string(mpp.CodeInvalidChallenge)) {
		t.Errorf("replay: %v, want refused", err)
	}
	if f.fac.Settlements() != 1 {
		t.Error("the replay settled")
	}
}

func TestMPPRefusals(t *testing.T) {
	dear := &policy.Route{Name: "dear", Price: "0.002"}
	tests := []struct {
		name  string
		route *policy.Route // admitted on; the challenge is for paid
		p     mpptest.Payment
		setup func(f *mppFixture)
		// reason of the Refusal
		reason string
	}{
		{"tampered amount in the echoed request", paid, mpptest.Payment{EditChallenge: func(ch map[string]string) {
			raw, _ := base64.RawURLEncoding.DecodeString(ch["request"])
			ch["request"] = base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(raw), `"amount":"1000"`, `"amount":"1"`, 1)))
		}, After: func(a *x402.Authorization) { a.Value = "1" }}, nil, string(mpp.CodeInvalidChallenge)},
		{"tampered value after signing", paid, mpptest.Payment{After: func(a *x402.Authorization) { a.Value = "1" }}, nil, string(mpp.CodePaymentInsufficient)},
		{"signed a higher value", paid, mpptest.Payment{Edit: func(a *x402.Authorization) { a.Value = "2000" }}, nil, string(mpp.CodeVerificationFailed)},
		{"tampered payee", paid, mpptest.Payment{Edit: func(a *x402.Authorization) { a.To = x402test.Address(9) }}, nil, string(mpp.CodeVerificationFailed)},
		{"signed by another key", paid, mpptest.Payment{After: func(a *x402.Authorization) { a.From = x402test.Address(2) }}, nil, string(mpp.CodeVerificationFailed)},
		{"nonce of another challenge", paid, mpptest.Payment{Edit: func(a *x402.Authorization) { a.Nonce = mpp.ChallengeHash("other", "api.test") }}, nil, string(mpp.CodeVerificationFailed)},
		{"challenge of a cheaper route", dear, mpptest.Payment{}, nil, string(mpp.CodeInvalidChallenge)},
		{"expired challenge", paid, mpptest.Payment{}, func(f *mppFixture) { *f.clock = f.clock.Add(6 * time.Minute) }, string(mpp.CodePaymentExpired)},
		{"another realm", paid, mpptest.Payment{EditChallenge: func(ch map[string]string) { ch["realm"] = "evil.test" }}, nil, string(mpp.CodeInvalidChallenge)},
		{"payer cannot pay (facilitator's verify)", paid, mpptest.Payment{Key: x402test.Key(3)}, nil, string(mpp.CodePaymentInsufficient)},
		{"route not paid per call", &policy.Route{Name: "chat"}, mpptest.Payment{}, nil, string(x402.ReasonNoMatchingOffer)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newMPPFixture(t, nil)
			cred := f.pay(t, paid, tt.p)
			if tt.setup != nil {
				tt.setup(f)
			}
			_, err := admitMPP(f, tt.route, cred)
			if !isRefusal(err, tt.reason) {
				t.Fatalf("err = %v, want refusal %s", err, tt.reason)
			}
			if f.fac.Settlements() != 0 || f.store.Len() != 0 {
				t.Errorf("settlements %d, claims kept %d; want none", f.fac.Settlements(), f.store.Len())
			}
		})
	}
}

func TestMPPMalformedAndOff(t *testing.T) {
	tests := []struct {
		name, header string
		on           bool
		reason       string
	}{
		{"not base64url", "Payment not*base64", true, string(mpp.CodeMalformedCredential)},
		{"padded", "Payment e30=", true, string(mpp.CodeMalformedCredential)},
		{"no challenge", "Payment " + base64.RawURLEncoding.EncodeToString([]byte(`{"payload":{}}`)), true, string(mpp.CodeMalformedCredential)},
		{"scheme off", "Payment e30", false, string(mpp.CodeMethodUnsupported)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newMPPFixture(t, nil)
			if !tt.on {
				f.fixture = newFixture(t, nil)
			}
			_, err := admitMPP(f, paid, tt.header)
			if !isRefusal(err, tt.reason) {
				t.Fatalf("err = %v, want refusal %s", err, tt.reason)
			}
			var r *Refusal
			if errors.As(err, &r) && strings.Contains(r.Detail, tt.header[8:]) {
				t.Errorf("the refusal %q repeats the credential", r.Detail)
			}
		})
	}
}

// A challenge is consumed once: another payer's credential for the same
// challenge is refused too (the draft's "Replay Protection").
func TestMPPChallengeUsedOnce(t *testing.T) {
	f := newMPPFixture(t, nil)
	f.fac.Mint(asset, x402test.Address(2), big.NewInt(10_000))
	first := f.pay(t, paid, mpptest.Payment{})
	second := f.pay(t, paid, mpptest.Payment{Key: x402test.Key(2)})
	if _, err := admitMPP(f, paid, first); err != nil {
		t.Fatal(err)
	}
	if _, err := admitMPP(f, paid, second); !isRefusal(err, string(mpp.CodeInvalidChallenge)) {
		t.Errorf("a second credential for the challenge: %v, want refused", err)
	}
	// The next second's challenge is a new one.
	*f.clock = f.clock.Add(time.Second)
	if _, err := admitMPP(f, paid, f.pay(t, paid, mpptest.Payment{Key: x402test.Key(2)})); err != nil {
		t.Errorf("a new challenge: %v", err)
	}
}

func TestMPPFailedUpstreamIsReleased(t *testing.T) {
	f := newMPPFixture(t, nil)
	cred := f.pay(t, paid, mpptest.Payment{})
	adm, err := admitMPP(f, paid, cred)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := f.g.Settle(context.Background(), adm.Key, 503, routes); r != "" || err != nil || f.fac.Settlements() != 0 {
		t.Fatalf("Settle on 503 = %q, %v, settlements %d; want nothing", r, err, f.fac.Settlements())
	}
	if _, err := admitMPP(f, paid, cred); err != nil {
		t.Errorf("the unspent credential again: %v", err)
	}
}

func TestMPPFacilitatorDownAndReconciled(t *testing.T) {
	fl := &flaky{verifyErr: errors.New("connection refused")}
	f := newMPPFixture(t, fl)
	fl.LocalFacilitator = f.fac
	cred := f.pay(t, paid, mpptest.Payment{})
	if _, err := admitMPP(f, paid, cred); !errors.Is(err, ErrUnavailable) || f.store.Len() != 0 {
		t.Fatalf("verify down: %v, claims %d; want ErrUnavailable and the claim released", err, f.store.Len())
	}
	fl.verifyErr = nil
	adm, err := admitMPP(f, paid, cred)
	if err != nil {
		t.Fatal(err)
	}
	fl.settleErr = x402.ErrSettleOutcomeUnknown
	if _, err := f.g.Settle(context.Background(), adm.Key, 200, routes); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("settle outcome unknown: %v", err)
	}
	fl.settleErr = nil
	f.reconcileOnce(t, fl, *f.clock, adm.Key)
}
