package authz_test

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/internal/mpptest"
	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/x402"
)

// mppServer is paidServer taking the Payment scheme too.
func mppServer(t *testing.T) (*authz.Server, *x402.LocalFacilitator) {
	t.Helper()
	return paidServer(t, func(o *payment.Options) {
		o.MPP = &payment.MPP{Key: []byte("0123456789abcdef0123456789abcdef-authz"), Realm: "api.example.com"}
	})
}

// wwwAuthenticate lists a refusal's WWW-Authenticate headers in order.
func wwwAuthenticate(resp *authv3.CheckResponse) []*corev3.HeaderValueOption {
	var hs []*corev3.HeaderValueOption
	for _, h := range resp.GetDeniedResponse().GetHeaders() {
		if h.GetHeader().GetKey() == "www-authenticate" {
			hs = append(hs, h)
		}
	}
	return hs
}

// paymentChallenge is the Payment challenge of a refusal, or "".
func paymentChallenge(resp *authv3.CheckResponse) string {
	for _, h := range wwwAuthenticate(resp) {
		if v := h.GetHeader().GetValue(); strings.HasPrefix(v, "Payment ") {
			return v
		}
	}
	return ""
}

// mppCredential pays the Payment challenge of a 402 on path.
func mppCredential(t *testing.T, s *authz.Server, path string, p mpptest.Payment) string {
	t.Helper()
	resp, _ := s.Decide(context.Background(), req("GET", path, nil))
	p.Challenge = paymentChallenge(resp)
	if p.Challenge == "" {
		t.Fatalf("the 402 on %s has no Payment challenge", path)
	}
	if p.Key == nil {
		p.Key = x402test.Key(1)
	}
	p.TokenName, p.TokenVersion = "USDC", "2"
	return mpptest.Authorization(t, p)
}

func TestMPPChallengeBesideX402(t *testing.T) {
	s, _ := mppServer(t)
	bad := "Payment " + base64.RawURLEncoding.EncodeToString([]byte(`{"payload":{}}`))
	tests := []struct {
		name    string
		path    string
		headers map[string]string
		code    string
		// want: the WWW-Authenticate schemes in order; x402: PAYMENT-REQUIRED too
		want []string
		x402 bool
	}{
		{"no credentials on a priced route", "/forecast", nil, "payment_required", []string{"Bearer", "Payment"}, true},
		{"a malformed credential: a fresh challenge", "/forecast", map[string]string{"authorization": bad}, "payment_invalid", []string{"Payment"}, true},
		{"out of credits on an unpriced route: top-ups, x402 only", "/chat", map[string]string{"x-api-key": "demo-pro-key"}, "insufficient_credits", nil, true},
		{"no credentials on an unpriced route", "/chat", nil, "missing_credentials", []string{"Bearer"}, false},
		{"a gRPC client gets no challenge", "/forecast", map[string]string{"content-type": "application/grpc"}, "payment_required", []string{"Bearer"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, res := s.Decide(context.Background(), req("GET", tt.path, tt.headers))
			if got := res.Code.String(); got != tt.code {
				t.Fatalf("code %s, want %s", got, tt.code)
			}
			if got := deniedHeader(resp, "payment-required") != ""; got != tt.x402 {
				t.Errorf("PAYMENT-REQUIRED present %v, want %v", got, tt.x402)
			}
			hs := wwwAuthenticate(resp)
			var got []string
			for i, h := range hs {
				scheme, _, _ := strings.Cut(h.GetHeader().GetValue(), " ")
				got = append(got, scheme)
				// The first overwrites what the upstream might send; a
				// second is appended beside it, or Envoy would keep one.
				want := corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
				if i > 0 || scheme == "Payment" {
					want = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
				}
				if h.GetAppendAction() != want {
					t.Errorf("%s challenge: append_action %v, want %v", scheme, h.GetAppendAction(), want)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("WWW-Authenticate schemes %v, want %v", got, tt.want)
			}
			if c := paymentChallenge(resp); c != "" {
				p := mpptest.Params(t, c)
				if p["method"] != "evm" || p["intent"] != "charge" || p["realm"] != "api.example.com" {
					t.Errorf("Payment challenge %v", p)
				}
			}
		})
	}
}

func TestMPPPaidRequestIsAllowed(t *testing.T) {
	payer := strings.ToLower(x402test.Address(1))
	tests := []struct {
		name    string
		headers map[string]string
		subject string
		plan    string
	}{
		{"anonymous payer", nil, "mpp:" + payer, "mpp"},
		{"with an API key in x-api-key", map[string]string{"x-api-key": "demo-pro-key"}, "acme", "pro"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fac := mppServer(t)
			h := map[string]string{"authorization": mppCredential(t, s, "/forecast", mpptest.Payment{})}
			for k, v := range tt.headers {
				h[k] = v
			}
			resp, res := s.Decide(context.Background(), req("GET", "/forecast", h))
			if !res.Allowed || res.Payment != "per_call" {
				t.Fatalf("result %+v, want allowed per_call", res)
			}
			wantUpstream(t, resp, map[string]string{"x-tollgate-payer": payer, "x-tollgate-subject": tt.subject, "x-tollgate-plan": tt.plan})
			md := resp.GetDynamicMetadata().GetFields()
			if md[authz.MPPPaymentKey].GetStringValue() == "" || md[authz.PaymentKey] != nil {
				t.Errorf("metadata %v: want the key under %q only (its receipt is a Payment-Receipt)", md, authz.MPPPaymentKey)
			}
			if fac.Settlements() != 0 {
				t.Error("settled in the Check: pay-per-call settles after the upstream")
			}
			// The same credential again is a replay.
			resp, res = s.Decide(context.Background(), req("GET", "/forecast", h))
			if res.Code.String() != "payment_invalid" || paymentChallenge(resp) == "" {
				t.Errorf("replay: %s, want payment_invalid with a fresh challenge", res.Code)
			}
		})
	}
}

func TestMPPTamperedIsRefused(t *testing.T) {
	tests := []struct {
		name string
		p    mpptest.Payment
	}{
		{"amount lowered after signing", mpptest.Payment{After: func(a *x402.Authorization) { a.Value = "1" }}},
		{"amount lowered in the echoed challenge", mpptest.Payment{EditChallenge: func(ch map[string]string) {
			raw, _ := base64.RawURLEncoding.DecodeString(ch["request"])
			ch["request"] = base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(raw), `"amount":"1000"`, `"amount":"1"`, 1)))
		}, Edit: func(a *x402.Authorization) { a.Value = "1" }}},
		{"payee changed", mpptest.Payment{Edit: func(a *x402.Authorization) { a.To = x402test.Address(9) }}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fac := mppServer(t)
			cred := mppCredential(t, s, "/forecast", tt.p)
			resp, res := s.Decide(context.Background(), req("GET", "/forecast", map[string]string{"authorization": cred}))
			if res.Code.String() != "payment_invalid" {
				t.Fatalf("code %s, want payment_invalid", res.Code)
			}
			if resp.GetDynamicMetadata().GetFields()[authz.MPPPaymentKey] != nil || fac.Settlements() != 0 {
				t.Error("a refused payment left something to settle")
			}
		})
	}
}
