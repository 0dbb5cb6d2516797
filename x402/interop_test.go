package x402

import (
	"github.com/tollgate-authz/tollgate/internal/sdktest"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"testing"
	"time"
)

// clientDir returns a directory holding node_modules installed from
// testdata/client's lockfile (cached in the user cache directory) and the
// path of client.mjs there.
func clientDir(t *testing.T) (dir, script string) {
	t.Helper()
	dir, script, skip, err := sdktest.Install("testdata/client", "tollgate-x402-client", "client.mjs", "@x402/fetch/package.json")
	if err != nil {
		t.Fatal(err)
	}
	if skip != "" {
		sdktest.Skip(t, "%s", skip)
	}
	return dir, script
}

func lastBytes(b []byte, n int) []byte { return sdktest.Tail(b, n) }

type clientResult struct {
	Status          int             `json:"status"`
	Body            string          `json:"body"`
	PaymentResponse *SettleResponse `json:"paymentResponse"`
	Requests        []struct {
		PaymentSignature *string `json:"paymentSignature"`
		XPayment         *string `json:"xPayment"`
	} `json:"requests"`
	Payer string `json:"payer"`
	Error string `json:"error"`
}

// paidServer is a resource server built from this package: a request
// without payment gets 402 with PAYMENT-REQUIRED; one with payment is
// decoded, matched to the offer, verified and settled by the facilitator,
// then answered 200 with PAYMENT-RESPONSE.
func paidServer(t *testing.T, offers []PaymentRequirements, f Facilitator) *httptest.Server {
	t.Helper()
	challenge := func(w http.ResponseWriter, r *http.Request, reason string) {
		h, err := EncodePaymentRequired(PaymentRequired{
			X402Version: Version, Error: reason,
			Resource: Resource{URL: "http://" + r.Host + r.URL.Path, Description: "a paid call", MimeType: "application/json"},
			Accepts:  offers,
		})
		if err != nil {
			t.Error(err)
		}
		w.Header().Set(HeaderPaymentRequired, h)
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusPaymentRequired)
		fmt.Fprintf(w, `{"type":"about:blank","title":"Payment Required","status":402,"code":%q}`, reason)
	}
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, found, err := FromHeaders(r.Header)
		if !found {
			challenge(w, r, "PAYMENT-SIGNATURE header is required")
			return
		}
		if err != nil {
			challenge(w, r, string(err.(*Error).Reason))
			return
		}
		req, err := Match(offers, p, time.Now())
		if err != nil {
			challenge(w, r, string(err.(*Error).Reason))
			return
		}
		v, err := f.Verify(r.Context(), p, req)
		if err != nil || !v.IsValid {
			challenge(w, r, v.InvalidReason)
			return
		}
		s, err := f.Settle(r.Context(), p, req)
		if err != nil || !s.Success {
			challenge(w, r, s.ErrorReason)
			return
		}
		h, _ := EncodePaymentResponse(s)
		w.Header().Set(HeaderPaymentResponse, h)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"answer":42}`)
	}))
}

// TestRealClientSDKPays runs the x402 Foundation's own client (npm
// @x402/fetch with @x402/evm and a viem local account) against a server
// built from this package and a LocalFacilitator.
func TestRealClientSDKPays(t *testing.T) {
	if testing.Short() {
		t.Skip("runs node; skipped with -short")
	}
	dir, script := clientDir(t)
	const key = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
	payer := AddressOfKey(keyFromHex(t, key))
	offer := testOffer()
	local := NewLocalFacilitator(time.Now, offer.Network)
	local.Mint(offer.Asset, payer, big.NewInt(15000))
	srv := paidServer(t, []PaymentRequirements{offer}, local)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "X402_URL="+srv.URL+"/paid", "X402_PRIVATE_KEY="+key)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res clientResult
	if jerr := json.Unmarshal(bytes.TrimSpace(out), &res); jerr != nil {
		t.Fatalf("client output %q (run err %v, stderr %s)", out, err, lastBytes(stderr.Bytes(), 2000))
	}
	if res.Error != "" || err != nil {
		t.Fatalf("client failed: %s (%v), stderr %s", res.Error, err, lastBytes(stderr.Bytes(), 2000))
	}
	if got, want := res.Status, http.StatusOK; got != want {
		t.Fatalf("status = %d, want %d; body %s", got, want, res.Body)
	}
	if got, want := res.Body, `{"answer":42}`; got != want {
		t.Errorf("body = %s, want %s", got, want)
	}
	if res.PaymentResponse == nil || !res.PaymentResponse.Success || res.PaymentResponse.Network != offer.Network ||
		res.PaymentResponse.Transaction == "" || !sameAddress(res.PaymentResponse.Payer, payer) {
		t.Errorf("PAYMENT-RESPONSE = %+v, want success for %s", res.PaymentResponse, payer)
	}
	// Two requests: the bare one, then the paid retry on PAYMENT-SIGNATURE (v2).
	if got, want := len(res.Requests), 2; got != want {
		t.Fatalf("requests = %d, want %d", got, want)
	}
	sig := res.Requests[1].PaymentSignature
	if sig == nil || res.Requests[1].XPayment != nil || res.Requests[0].PaymentSignature != nil {
		t.Fatalf("headers sent = %+v, want PAYMENT-SIGNATURE on the retry only", res.Requests)
	}
	if got, want := local.Balance(offer.Asset, payer), big.NewInt(5000); got.Cmp(want) != 0 {
		t.Errorf("payer balance = %v, want %v", got, want)
	}
	if got, want := local.Balance(offer.Asset, offer.PayTo), big.NewInt(10000); got.Cmp(want) != 0 {
		t.Errorf("payee balance = %v, want %v", got, want)
	}

	// Replaying the SDK's exact header is refused, and nothing moves.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/paid", nil)
	req.Header.Set(HeaderPaymentSignature, *sig)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.StatusCode, http.StatusPaymentRequired; got != want {
		t.Errorf("replay status = %d, want %d", got, want)
	}
	var pr struct {
		Error string `json:"error"`
	}
	if h := resp.Header.Get(HeaderPaymentRequired); h != "" {
		raw, _ := b64.DecodeString(h)
		_ = json.Unmarshal(raw, &pr)
	}
	if got, want := pr.Error, string(ReasonNonceUsed); got != want {
		t.Errorf("replay refused with %q, want %q", got, want)
	}
	if got, want := local.Settlements(), 1; got != want {
		t.Errorf("settlements = %d, want %d", got, want)
	}
	if got, want := local.Balance(offer.Asset, payer), big.NewInt(5000); got.Cmp(want) != 0 {
		t.Errorf("payer balance after replay = %v, want %v", got, want)
	}
	if errors.Is(nil, ErrNonceUsed) {
		t.Fatal("unreachable")
	}
}
