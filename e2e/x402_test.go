//go:build e2e

package e2e

// Machine payments (x402 v2) through a real Envoy: tollgate serves
// examples/tollgate-x402.yaml behind examples/envoy-x402.yaml (a 200 ms
// ext_authz for ordinary routes, a second ext_authz instance with the
// payments timeout on paid routes, and ext_proc that settles on the
// response). The client is the x402 Foundation's own SDK (npm @x402/fetch
// with @x402/evm and @x402/extensions, a viem local account), run by node.
//
// The facilitator is x402.LocalFacilitator served over HTTP by
// x402.FacilitatorHandler: it verifies every EIP-712 (EIP-3009) signature
// for real, refuses a used nonce, and keeps token balances in memory, which
// move at most once per nonce; nothing reaches a chain. The tests read its
// settlements and balances to prove money moved once, or not at all.

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/x402"
)

// TestX402 runs every payment case on one shared environment, in order:
// each case reads the counters before it acts and checks what it changed.
func TestX402(t *testing.T) {
	e := x402Environment(t)
	paid := func(path string) string { return e.envoy.url("/v1/paid/" + path) }

	// The paid retry the SDK made in "sdk pays per call", for the replay.
	var sdkSignature string

	t.Run("challenge", func(t *testing.T) {
		r := do(t, "GET", paid("challenge"))
		if got, want := r.status, http.StatusPaymentRequired; got != want {
			t.Fatalf("status = %d, want %d; body %s", got, want, r.body)
		}
		p := problemOf(t, r)
		if got, want := p.Code, "payment_required"; got != want {
			t.Errorf("code = %q, want %q", got, want)
		}
		pr := challengeOf(t, r)
		if got, want := len(pr.Accepts), 1; got != want {
			t.Fatalf("accepts = %+v, want one offer", pr.Accepts)
		}
		if got, want := pr.Accepts[0], e.offer; got != want {
			t.Errorf("offer = %+v, want %+v", got, want)
		}
		if got, want := pr.X402Version, 2; got != want {
			t.Errorf("x402Version = %d, want %d", got, want)
		}
		if !strings.HasSuffix(pr.Resource.URL, "/v1/paid/challenge") {
			t.Errorf("resource.url = %q, want the path asked for", pr.Resource.URL)
		}
		// The same offer in the body, for people and for clients that read it there.
		if p.X402 == nil || len(p.X402.Accepts) != 1 || p.X402.Accepts[0] != e.offer || len(p.Offers) != 1 {
			t.Errorf("body offers = %s, want the header's offer", r.body)
		}
		if got := e.api.count("/v1/paid/challenge"); got != 0 {
			t.Errorf("upstream reached %d times, want 0", got)
		}
	})

	t.Run("sdk pays per call", func(t *testing.T) {
		settled, paidBefore := e.fac.local.Settlements(), e.paidChecks(t)
		from, to := e.balances(e.sdkAddr)
		res := pay(t, paid("answer"), sdkOpts{})
		if res.Error != "" {
			t.Fatalf("the SDK failed: %s (requests %+v)", res.Error, res.Requests)
		}
		if got, want := res.Status, http.StatusOK; got != want {
			t.Fatalf("status = %d, want %d; body %s", got, want, res.Body)
		}
		if !strings.Contains(res.Body, `"answer":42`) || !strings.Contains(res.Body, `"path":"/v1/paid/answer"`) {
			t.Errorf("body = %s, want the upstream's answer", res.Body)
		}
		// The upstream learns who paid (x-tollgate-payer).
		if !strings.Contains(strings.ToLower(res.Body), strings.ToLower(e.sdkAddr)) {
			t.Errorf("body = %s, want the payer %s seen upstream", res.Body, e.sdkAddr)
		}
		// Our 402, then the paid retry.
		if got, want := len(res.Requests), 2; got != want {
			t.Fatalf("requests = %+v, want 2", res.Requests)
		}
		if res.Requests[0].Status != http.StatusPaymentRequired || res.Requests[0].PaymentSignature != nil || res.Requests[1].PaymentSignature == nil {
			t.Errorf("requests = %+v, want a bare 402 then a PAYMENT-SIGNATURE", res.Requests)
		}
		sdkSignature = res.signature(t)
		pr := res.PaymentResponse
		if pr == nil {
			t.Fatal("no PAYMENT-RESPONSE the SDK could decode")
		}
		if !pr.Success || pr.Transaction == "" || pr.Network != e.offer.Network || !strings.EqualFold(pr.Payer, e.sdkAddr) {
			t.Errorf("PAYMENT-RESPONSE = %+v, want success on %s for %s", pr, e.offer.Network, e.sdkAddr)
		}
		if got, want := e.fac.local.Settlements(), settled+1; got != want {
			t.Errorf("settlements = %d, want %d", got, want)
		}
		from2, to2 := e.balances(e.sdkAddr)
		if from2 != from-1000 || to2 != to+1000 {
			t.Errorf("balances (payer, payee) = (%d, %d), want (%d, %d)", from2, to2, from-1000, to+1000)
		}
		if got, want := e.api.count("/v1/paid/answer"), 1; got != want {
			t.Errorf("upstream reached %d times, want %d", got, want)
		}
		// Both Checks went through the paid ext_authz instance.
		if got, want := e.paidChecks(t), paidBefore+2; got != want {
			t.Errorf("paid ext_authz checks = %d, want %d", got, want)
		}
	})

	t.Run("replayed payment", func(t *testing.T) {
		if sdkSignature == "" {
			t.Skip("needs the SDK's payment")
		}
		settled, verified := e.fac.local.Settlements(), e.fac.verify.Load()
		from, _ := e.balances(e.sdkAddr)
		r := do(t, "GET", paid("answer"), "payment-signature: "+sdkSignature)
		if got, want := r.status, http.StatusPaymentRequired; got != want {
			t.Fatalf("status = %d, want %d; body %s", got, want, r.body)
		}
		if got, want := problemOf(t, r).Code, "payment_invalid"; got != want {
			t.Errorf("code = %q, want %q", got, want)
		}
		challengeOf(t, r) // a fresh offer to pay again
		if got, want := e.fac.local.Settlements(), settled; got != want {
			t.Errorf("settlements = %d, want %d", got, want)
		}
		if from2, _ := e.balances(e.sdkAddr); from2 != from {
			t.Errorf("payer balance = %d, want %d", from2, from)
		}
		// tollgate knows the payment was used: the facilitator is not asked.
		if got := e.fac.verify.Load(); got != verified {
			t.Errorf("facilitator /verify calls = %d, want %d", got, verified)
		}
		if got, want := e.api.count("/v1/paid/answer"), 1; got != want {
			t.Errorf("upstream reached %d times, want %d (only the paid call)", got, want)
		}
	})

	t.Run("tampered or expired payment", func(t *testing.T) {
		const attacker = "0x000000000000000000000000000000000000dEaD"
		later := time.Now().Add(time.Minute)
		cases := []struct {
			name string
			pay  func() x402.PaymentPayload
		}{
			{"payTo changed after signing", func() x402.PaymentPayload {
				p := sign(t, e.goKey, e.offer, later, nil)
				p.Accepted.PayTo, p.Payload.Authorization.To = attacker, attacker
				return p
			}},
			{"payTo signed for someone else", func() x402.PaymentPayload {
				o := e.offer
				o.PayTo = attacker
				return sign(t, e.goKey, o, later, nil)
			}},
			{"amount lowered", func() x402.PaymentPayload {
				o := e.offer
				o.Amount = "1"
				return sign(t, e.goKey, o, later, nil)
			}},
			{"value changed after signing", func() x402.PaymentPayload {
				p := sign(t, e.goKey, e.offer, later, nil)
				p.Payload.Authorization.Value = "1"
				return p
			}},
			{"nonce changed after signing", func() x402.PaymentPayload {
				p := sign(t, e.goKey, e.offer, later, nil)
				n := []byte(p.Payload.Authorization.Nonce)
				n[len(n)-1] ^= 1 // still hex
				if n[len(n)-1] > 'f' || (n[len(n)-1] > '9' && n[len(n)-1] < 'a') {
					n[len(n)-1] = '0'
				}
				p.Payload.Authorization.Nonce = string(n)
				return p
			}},
			{"expired", func() x402.PaymentPayload {
				return sign(t, e.goKey, e.offer, time.Now().Add(-time.Hour), nil)
			}},
			{"not valid yet", func() x402.PaymentPayload {
				return sign(t, e.goKey, e.offer, later, func(a *x402.Authorization) {
					a.ValidAfter = x402Unix(time.Now().Add(30 * time.Minute))
				})
			}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				settled, verified := e.fac.local.Settlements(), e.fac.verify.Load()
				from, to := e.balances(e.goAddr)
				r := do(t, "GET", paid("tampered"), "payment-signature: "+encodePayment(t, c.pay()))
				if got, want := r.status, http.StatusPaymentRequired; got != want {
					t.Fatalf("status = %d, want %d; body %s", got, want, r.body)
				}
				if got, want := problemOf(t, r).Code, "payment_invalid"; got != want {
					t.Errorf("code = %q, want %q; body %s", got, want, r.body)
				}
				if got, want := e.fac.local.Settlements(), settled; got != want {
					t.Errorf("settlements = %d, want %d", got, want)
				}
				if from2, to2 := e.balances(e.goAddr); from2 != from || to2 != to {
					t.Errorf("balances = (%d, %d), want (%d, %d)", from2, to2, from, to)
				}
				// Refused at the door: no facilitator round trip for it.
				if got := e.fac.verify.Load(); got != verified {
					t.Errorf("facilitator /verify calls = %d, want %d", got, verified)
				}
				if got := e.api.count("/v1/paid/tampered"); got != 0 {
					t.Errorf("upstream reached %d times, want 0", got)
				}
			})
		}
	})

	t.Run("upstream 5xx is not settled", func(t *testing.T) {
		settled := e.fac.local.Settlements()
		from, to := e.balances(e.sdkAddr)
		res := pay(t, paid("fails"), sdkOpts{headers: map[string]string{"x-test-status": "503"}})
		if got, want := res.Status, http.StatusServiceUnavailable; got != want {
			t.Fatalf("status = %d, want %d (the upstream's); body %s, error %s", got, want, res.Body, res.Error)
		}
		if res.PaymentResponse != nil {
			t.Errorf("PAYMENT-RESPONSE = %+v on a failed upstream, want none", res.PaymentResponse)
		}
		if got, want := e.api.count("/v1/paid/fails"), 1; got != want {
			t.Errorf("upstream reached %d times, want %d", got, want)
		}
		if got, want := e.fac.local.Settlements(), settled; got != want {
			t.Errorf("settlements = %d, want %d", got, want)
		}
		if from2, to2 := e.balances(e.sdkAddr); from2 != from || to2 != to {
			t.Errorf("balances = (%d, %d), want (%d, %d)", from2, to2, from, to)
		}
		// Released, not spent: the same signed payment buys a call that succeeds.
		r := do(t, "GET", paid("fails"), "payment-signature: "+res.signature(t))
		if got, want := r.status, http.StatusOK; got != want {
			t.Fatalf("the released payment again: status = %d, want %d; body %s", got, want, r.body)
		}
		if r.header.Get("payment-response") == "" {
			t.Error("the released payment again: no PAYMENT-RESPONSE")
		}
		if got, want := e.fac.local.Settlements(), settled+1; got != want {
			t.Errorf("settlements = %d, want %d", got, want)
		}
	})

	t.Run("facilitator slow", func(t *testing.T) {
		held := e.fac.held.Load()
		settled := e.fac.local.Settlements()
		h := encodePayment(t, sign(t, e.goKey, e.offer, time.Now().Add(time.Minute), nil))
		e.fac.setMode(facHold)
		r := do(t, "GET", paid("slow"), "payment-signature: "+h)
		e.fac.setMode(facUp)
		// tollgate's verify_timeout (3s) ends it, well inside the paid
		// ext_authz filter's 15s: tollgate's 503, not Envoy's 403 or 504.
		if got, want := r.status, http.StatusServiceUnavailable; got != want {
			t.Fatalf("status = %d, want %d; body %s", got, want, r.body)
		}
		if got, want := problemOf(t, r).Code, "payment_unavailable"; got != want {
			t.Errorf("code = %q, want %q", got, want)
		}
		if r.header.Get("retry-after") == "" {
			t.Error("no Retry-After")
		}
		if got := e.fac.held.Load(); got <= held {
			t.Errorf("the facilitator held %d /verify calls, want more than %d", got, held)
		}
		if got := e.api.count("/v1/paid/slow"); got != 0 {
			t.Errorf("upstream reached %d times, want 0", got)
		}
		// Nobody who has paid is locked out by a fault of ours: the same
		// payment goes through once the facilitator answers again.
		r = do(t, "GET", paid("slow"), "payment-signature: "+h)
		if got, want := r.status, http.StatusOK; got != want {
			t.Fatalf("once the facilitator is back: status = %d, want %d; body %s", got, want, r.body)
		}
		if got, want := e.fac.local.Settlements(), settled+1; got != want {
			t.Errorf("settlements = %d, want %d", got, want)
		}
	})

	t.Run("facilitator down", func(t *testing.T) {
		settled := e.fac.local.Settlements()
		h := encodePayment(t, sign(t, e.goKey, e.offer, time.Now().Add(time.Minute), nil))
		e.fac.setMode(facDown)
		r := do(t, "GET", paid("down"), "payment-signature: "+h)
		e.fac.setMode(facUp)
		if got, want := r.status, http.StatusServiceUnavailable; got != want {
			t.Fatalf("status = %d, want %d; body %s", got, want, r.body)
		}
		if got, want := problemOf(t, r).Code, "payment_unavailable"; got != want {
			t.Errorf("code = %q, want %q", got, want)
		}
		if got := e.api.count("/v1/paid/down"); got != 0 {
			t.Errorf("upstream reached %d times, want 0", got)
		}
		if got, want := e.fac.local.Settlements(), settled; got != want {
			t.Errorf("settlements = %d, want %d", got, want)
		}
		r = do(t, "GET", paid("down"), "payment-signature: "+h)
		if got, want := r.status, http.StatusOK; got != want {
			t.Fatalf("once the facilitator is back: status = %d, want %d; body %s", got, want, r.body)
		}
	})

	t.Run("top-up becomes credits", func(t *testing.T) {
		render := e.envoy.url("/v1/render")
		key := "x-api-key: " + creditsKey
		// The route costs 4 credits; the subject holds 2.
		r := do(t, "POST", render, key)
		if got, want := r.status, http.StatusPaymentRequired; got != want {
			t.Fatalf("status = %d, want %d; body %s", got, want, r.body)
		}
		if got, want := problemOf(t, r).Code, "insufficient_credits"; got != want {
			t.Errorf("code = %q, want %q", got, want)
		}
		pr := challengeOf(t, r)
		if got, want := len(pr.Accepts), 2; got != want {
			t.Fatalf("accepts = %+v, want the two top-ups", pr.Accepts)
		}
		if got, want := pr.Accepts[0].Amount, "50000"; got != want {
			t.Errorf("first top-up amount = %q, want %q (0.05 USDC)", got, want)
		}

		settled := e.fac.local.Settlements()
		from, to := e.balances(e.sdkAddr)
		res := pay(t, render, sdkOpts{method: "POST", headers: map[string]string{"x-api-key": creditsKey}})
		if got, want := res.Status, http.StatusOK; got != want {
			t.Fatalf("status = %d, want %d; body %s, error %s", got, want, res.Body, res.Error)
		}
		if p := res.PaymentResponse; p == nil || !p.Success || !strings.EqualFold(p.Payer, e.sdkAddr) {
			t.Errorf("PAYMENT-RESPONSE = %+v, want the top-up's receipt", p)
		}
		if got, want := e.fac.local.Settlements(), settled+1; got != want {
			t.Errorf("settlements = %d, want %d", got, want)
		}
		if from2, to2 := e.balances(e.sdkAddr); from2 != from-50000 || to2 != to+50000 {
			t.Errorf("balances = (%d, %d), want (%d, %d)", from2, to2, from-50000, to+50000)
		}
		// 2 held + 100 bought - 4 spent by the request that bought them.
		var rep struct {
			Quotas []struct {
				Name      string `json:"name"`
				Remaining int64  `json:"remaining"`
			} `json:"quotas"`
		}
		body := e.usage(t, creditsSubject)
		if err := jsonUnmarshal(body, &rep); err != nil {
			t.Fatal(err)
		}
		remaining := int64(-1)
		for _, q := range rep.Quotas {
			if q.Name == "credits" {
				remaining = q.Remaining
			}
		}
		if got, want := remaining, int64(creditsBalance+100-4); got != want {
			t.Errorf("credits remaining = %d, want %d; /v1/usage: %s", got, want, body)
		}
		// The credits bought pay for the next request with no payment.
		if r := do(t, "POST", render, key); r.status != http.StatusOK {
			t.Errorf("next request: status = %d, want 200; body %s", r.status, r.body)
		}
	})

	t.Run("payment-identifier", func(t *testing.T) {
		id := "e2e_" + strings.ReplaceAll(time.Now().Format("150405.000000000"), ".", "_")
		settled := e.fac.local.Settlements()
		first := pay(t, paid("idem"), sdkOpts{paymentID: id})
		if first.Status != http.StatusOK || first.PaymentResponse == nil {
			t.Fatalf("first: status %d, receipt %+v, body %s, error %s", first.Status, first.PaymentResponse, first.Body, first.Error)
		}
		if got, want := e.fac.local.Settlements(), settled+1; got != want {
			t.Fatalf("settlements = %d, want %d", got, want)
		}
		if p := decodePayment(t, first.signature(t)); !strings.Contains(string(p.Extensions["payment-identifier"]), id) {
			t.Fatalf("the SDK sent extensions %s, want the id %s", p.Extensions["payment-identifier"], id)
		}
		from, _ := e.balances(e.sdkAddr)

		// The SDK again with the same id: a new authorization (a new
		// nonce) for the same purchase gets the first result back.
		again := pay(t, paid("idem"), sdkOpts{paymentID: id})
		if got, want := again.Status, http.StatusOK; got != want {
			t.Fatalf("retry: status = %d, want %d; body %s", got, want, again.Body)
		}
		if again.PaymentResponse == nil || *again.PaymentResponse != *first.PaymentResponse {
			t.Errorf("retry: PAYMENT-RESPONSE = %+v, want the first %+v", again.PaymentResponse, first.PaymentResponse)
		}
		if decodePayment(t, again.signature(t)).Payload.Authorization.Nonce == decodePayment(t, first.signature(t)).Payload.Authorization.Nonce {
			t.Error("the SDK reused its nonce: the case is not a new authorization")
		}
		// The exact same header again, as a client retrying after a lost answer.
		r := do(t, "GET", paid("idem"), "payment-signature: "+first.signature(t))
		if got, want := r.status, http.StatusOK; got != want {
			t.Fatalf("same header: status = %d, want %d; body %s", got, want, r.body)
		}
		if got, want := r.header.Get("payment-response"), mustEncode(t, *first.PaymentResponse); got != want {
			t.Errorf("same header: PAYMENT-RESPONSE = %s, want the first %s", got, want)
		}
		if got, want := e.fac.local.Settlements(), settled+1; got != want {
			t.Errorf("settlements = %d, want %d (nothing new)", got, want)
		}
		if from2, _ := e.balances(e.sdkAddr); from2 != from {
			t.Errorf("payer balance = %d, want %d", from2, from)
		}

		// The same id for another purchase (another path) is a conflict.
		other := pay(t, paid("idem-other"), sdkOpts{paymentID: id})
		if got, want := other.Status, http.StatusConflict; got != want {
			t.Fatalf("other path: status = %d, want %d; body %s", got, want, other.Body)
		}
		if !strings.Contains(other.Body, `"code":"payment_conflict"`) {
			t.Errorf("other path: body %s, want code payment_conflict", other.Body)
		}
		if got, want := e.fac.local.Settlements(), settled+1; got != want {
			t.Errorf("settlements = %d, want %d", got, want)
		}
		if got := e.api.count("/v1/paid/idem-other"); got != 0 {
			t.Errorf("upstream reached %d times on a conflict, want 0", got)
		}
	})

	t.Run("ordinary routes keep the fast filter", func(t *testing.T) {
		// The paid filter is off here: the Check is the fast filter's.
		fast, slow := e.envoy.stat(t, "http."+e.envoy.statPrefix+".ext_authz.ok"), e.paidChecks(t)
		r := do(t, "GET", e.envoy.url("/v1/search"), "x-api-key: demo-free-key")
		if got, want := r.status, http.StatusOK; got != want {
			t.Fatalf("status = %d, want %d; body %s", got, want, r.body)
		}
		if got, want := e.envoy.stat(t, "http."+e.envoy.statPrefix+".ext_authz.ok"), fast+1; got != want {
			t.Errorf("fast ext_authz.ok = %d, want %d", got, want)
		}
		if got, want := e.paidChecks(t), slow; got != want {
			t.Errorf("paid ext_authz checks = %d, want %d", got, want)
		}
	})
}
