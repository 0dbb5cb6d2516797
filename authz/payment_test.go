package authz_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

const (
	payAsset = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
	payTo    = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
)

const paidConfig = `
server: {grpc_address: 127.0.0.1:0, admin_address: 127.0.0.1:0}
identity: [{api_key: {header: x-api-key}}]
entitlements: {source: file, file: {path: ents.yaml}}
plans:
  pro: {features: [search]}
routes:
  - {name: forecast, match: {path: {prefix: /forecast}}, feature: search, price: "0.001"}
  - {name: chat, match: {path: {prefix: /chat}}, quota: credits, cost: 10}
payments:
  x402:
    network: eip155:84532
    asset: "` + payAsset + `"
    asset_name: USDC
    asset_version: "2"
    decimals: 6
    pay_to: "` + payTo + `"
    facilitator: {url: "http://127.0.0.1:1"}
  top_ups: [{credits: 100, price: "0.5"}]
`

const paidEntitlements = `
subjects:
  - id: acme
    plan: pro
    status: active
    credits: 5
    api_key_sha256: [1fbfd5e2a34698deb796eb78add256a067ec065519b8329b1eb85f5e2ef906d4]  # demo-pro-key
`

// paidServer is a decision server whose forecast route costs 0.001 USDC a
// call and whose credits can be topped up, over a LocalFacilitator.
func paidServer(t *testing.T, edit ...func(*payment.Options)) (*authz.Server, *x402.LocalFacilitator) {
	t.Helper()
	s, _, fac := paidServerGate(t, edit...)
	return s, fac
}

// paidServerGate is paidServer with its gate, for settling.
func paidServerGate(t *testing.T, edit ...func(*payment.Options)) (*authz.Server, *payment.Gate, *x402.LocalFacilitator) {
	t.Helper()
	return paidServerFrom(t, paidConfig, edit...)
}

// paidServerFrom is paidServerGate with another config.
func paidServerFrom(t *testing.T, configText string, edit ...func(*payment.Options)) (*authz.Server, *payment.Gate, *x402.LocalFacilitator) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"tollgate.yaml": configText, "ents.yaml": paidEntitlements} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(filepath.Join(dir, "tollgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return fixedNow }
	fac := x402.NewLocalFacilitator(now, "eip155:84532")
	fac.Mint(payAsset, x402test.Address(1), big.NewInt(10_000_000))
	var credited int64
	o := payment.Options{
		Network: "eip155:84532", Asset: payAsset, PayTo: payTo, AssetName: "USDC", AssetVersion: "2", Decimals: 6, Currency: "USDC",
		TopUps: []payment.TopUp{{Credits: 100, Price: "0.5"}}, Facilitator: fac, Store: paystore.NewMemory(now, 100), Now: now,
		Credit: func(context.Context, *entitlement.Entitlement, int64, time.Time) error { credited++; return nil },
	}
	for _, e := range edit {
		e(&o)
	}
	g, err := payment.New(o)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := authzconfig.RulesWith(cfg, g)
	if err != nil {
		t.Fatal(err)
	}
	src, err := filesource.Open(cfg.Entitlements.File.Path, filesource.Options{Check: cfg.Policy.CheckEntitlement})
	if err != nil {
		t.Fatal(err)
	}
	return authz.NewServer(rt, authz.Deps{Now: now, Entitlements: cache.New(src, cache.Options{Now: now})}), g, fac
}

func perCallOffer() x402.PaymentRequirements {
	return x402.PaymentRequirements{Scheme: "exact", Network: "eip155:84532", Amount: "1000", Asset: payAsset, PayTo: payTo,
		MaxTimeoutSeconds: 60, Extra: x402.Extra{Name: "USDC", Version: "2"}}
}

func deniedHeader(resp *authv3.CheckResponse, name string) string {
	for _, h := range resp.GetDeniedResponse().GetHeaders() {
		if h.GetHeader().GetKey() == name {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

func TestPaidRefusalsCarryTheOffer(t *testing.T) {
	s, _ := paidServer(t)
	tests := []struct {
		name    string
		path    string
		headers map[string]string
		code    string
		amounts []string // the challenge's offers; nil: no challenge
	}{
		{"no credentials on a priced route", "/forecast", nil, "payment_required", []string{"1000"}},
		{"out of credits: a top-up", "/chat", map[string]string{"x-api-key": "demo-pro-key"}, "insufficient_credits", []string{"500000"}},
		{"no credentials on an unpriced route", "/chat", nil, "missing_credentials", nil},
		{"a gRPC client gets no challenge", "/forecast", map[string]string{"content-type": "application/grpc"}, "payment_required", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, res := s.Decide(context.Background(), req("GET", tt.path, tt.headers))
			if got := res.Code.String(); got != tt.code {
				t.Fatalf("code %s, want %s", got, tt.code)
			}
			h := deniedHeader(resp, "payment-required")
			if tt.amounts == nil {
				if h != "" {
					t.Fatalf("a challenge where none belongs: %s", h)
				}
				return
			}
			raw, err := base64.StdEncoding.DecodeString(h)
			if err != nil {
				t.Fatalf("PAYMENT-REQUIRED %q: %v", h, err)
			}
			var pr x402.PaymentRequired
			if err := json.Unmarshal(raw, &pr); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range pr.Accepts {
				got = append(got, a.Amount)
			}
			if strings.Join(got, ",") != strings.Join(tt.amounts, ",") || pr.Resource.URL != "https://api.example.com"+tt.path {
				t.Errorf("challenge %+v, want amounts %v for the request's URL", pr, tt.amounts)
			}
			var body struct {
				Code   string                `json:"code"`
				Offers []payment.Offer       `json:"offers"`
				X402   *x402.PaymentRequired `json:"x402"`
			}
			if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body); err != nil {
				t.Fatal(err)
			}
			if body.X402 == nil || len(body.X402.Accepts) != len(tt.amounts) || len(body.Offers) != len(tt.amounts) {
				t.Errorf("body %s does not carry the offer", resp.GetDeniedResponse().GetBody())
			}
		})
	}
}

func TestPaidRequestIsAllowed(t *testing.T) {
	s, fac := paidServer(t)
	h := x402test.Header(t, x402test.Payment{Offer: perCallOffer(), Now: fixedNow, Nonce: 1})
	resp, res := s.Decide(context.Background(), req("GET", "/forecast", map[string]string{"payment-signature": h}))
	if !res.Allowed || res.Payment != "per_call" {
		t.Fatalf("result %+v, want allowed per_call", res)
	}
	payer := strings.ToLower(x402test.Address(1))
	wantUpstream(t, resp, map[string]string{"x-tollgate-payer": payer, "x-tollgate-subject": "x402:" + payer, "x-tollgate-plan": "x402"})
	if rm := resp.GetOkResponse().GetHeadersToRemove(); !slices.Contains(rm, "payment-signature") || !slices.Contains(rm, "x-payment") {
		t.Errorf("headers removed upstream %v: the spent payment goes on to the upstream", rm)
	}
	if key := resp.GetDynamicMetadata().GetFields()[authz.PaymentKey].GetStringValue(); key == "" {
		t.Error("no payment key in dynamic metadata: nothing would settle it")
	}
	if fac.Settlements() != 0 {
		t.Error("settled in the Check: pay-per-call settles after the upstream")
	}
	// The same header again is a replay.
	_, res = s.Decide(context.Background(), req("GET", "/forecast", map[string]string{"payment-signature": h}))
	if res.Code.String() != "payment_invalid" {
		t.Errorf("replay: %s, want payment_invalid", res.Code)
	}
}

func TestTopUpInTheCheck(t *testing.T) {
	s, fac := paidServer(t)
	offer := perCallOffer()
	offer.Amount = "500000"
	h := x402test.Header(t, x402test.Payment{Offer: offer, Now: fixedNow, Nonce: 2})
	resp, res := s.Decide(context.Background(), req("GET", "/chat", map[string]string{"x-api-key": "demo-pro-key", "payment-signature": h}))
	if res.Payment != "top_up" || fac.Settlements() != 1 {
		t.Fatalf("result %+v, settlements %d: want a settled top-up", res, fac.Settlements())
	}
	// The credit function here counts but does not raise the balance, so
	// the request is refused; the receipt still goes to the client.
	if got := deniedHeader(resp, "payment-response"); got == "" {
		t.Error("the refusal after a settled top-up carries no PAYMENT-RESPONSE")
	}
}

// TestShadowTakesNoMoney: shadow mode decides and allows everything; a
// payment sent then is neither verified nor settled.
func TestShadowTakesNoMoney(t *testing.T) {
	s, _, fac := paidServerFrom(t, "shadow: true\n"+paidConfig)
	h := x402test.Header(t, x402test.Payment{Offer: perCallOffer(), Now: fixedNow, Nonce: 9})
	resp, res := s.Decide(context.Background(), req("GET", "/forecast", map[string]string{"payment-signature": h}))
	if !res.Allowed || !res.Shadow || res.Payment != "" || res.Code.String() != "payment_required" {
		t.Fatalf("result %+v: want a shadow allow of what would be payment_required, with no payment taken", res)
	}
	if resp.GetDynamicMetadata().GetFields()[authz.PaymentKey] != nil || fac.Settlements() != 0 {
		t.Error("shadow mode admitted the payment")
	}
}

// wantUpstream fails unless an allow sets each of want's headers upstream
// with its value.
func wantUpstream(t *testing.T, resp *authv3.CheckResponse, want map[string]string) {
	t.Helper()
	want = maps.Clone(want)
	for _, hv := range resp.GetOkResponse().GetHeaders() {
		if w, ok := want[hv.GetHeader().GetKey()]; ok {
			if hv.GetHeader().GetValue() != w {
				t.Errorf("%s: %s, want %s", hv.GetHeader().GetKey(), hv.GetHeader().GetValue(), w)
			}
			delete(want, hv.GetHeader().GetKey())
		}
	}
	if len(want) > 0 {
		t.Errorf("headers upstream lack %v", want)
	}
}
