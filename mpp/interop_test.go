package mpp

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/mppx"
	"github.com/tollgate-authz/tollgate/x402"
)

type mppxResult struct {
	Status       int     `json:"status"`
	Body         string  `json:"body"`
	Receipt      Receipt `json:"receipt"`
	CacheControl string  `json:"cacheControl"`
	Payer        string  `json:"payer"`
	Error        string  `json:"error"`
	Requests     []struct {
		Authorization   *string `json:"authorization"`
		Status          int     `json:"status"`
		WWWAuthenticate *string `json:"wwwAuthenticate"`
	} `json:"requests"`
}

// TestInteropMppx: mppx 0.11.0's client, with its evm charge method and a
// local signing key, meets a server built from this package. The server's
// 402 carries two Payment challenges (lightning, which the client cannot
// pay, and evm); the client must pick evm, sign an EIP-3009 authorization
// bound to the challenge, and retry; the server parses the credential
// strictly, checks the challenge (HMAC, expiry, offer), verifies the
// signature and settles through x402's LocalFacilitator (real signature
// checks, balances in memory), and answers 200 with a Payment-Receipt that
// mppx's Receipt.fromResponse accepts.
func TestInteropMppx(t *testing.T) {
	dir, script := mppx.Client(t, filepath.Join("testdata", "client"))

	const tokenName, tokenVersion = "USDC", "2"
	payer := testPrivKey(7)
	f := x402.NewLocalFacilitator(time.Now, "eip155:84532")
	f.Mint(testAsset, x402.AddressOfKey(payer), big.NewInt(1_000_000))
	m, err := NewEVMCharge(EVMChargeConfig{
		ChainID: 84532, Currency: testAsset, Recipient: testPayTo, TokenName: tokenName, TokenVersion: tokenVersion,
		Decimals: 6, Facilitator: f,
	})
	if err != nil {
		t.Fatal(err)
	}
	evmReq, err := m.Request("10000", "one call", "")
	if err != nil {
		t.Fatal(err)
	}
	lnReq, err := EncodeRequest(map[string]any{"amount": "10", "currency": "sat", "methodDetails": map[string]string{"invoice": "lnbcrt100n1fake", "paymentHash": strings.Repeat("ab", 32)}})
	if err != nil {
		t.Fatal(err)
	}
	c := NewChallenger([]byte(testKey), "127.0.0.1", 5*time.Minute, time.Now)

	var mu sync.Mutex
	var refusals []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse := func(code Code, why string) {
			mu.Lock()
			refusals = append(refusals, why)
			mu.Unlock()
			for _, off := range []struct {
				method string
				req    EncodedRequest
			}{{"lightning", lnReq}, {MethodEVM, evmReq}} {
				h, _, err := c.Challenge(off.method, IntentCharge, off.req)
				if err != nil {
					t.Error(err)
				}
				w.Header().Add(HeaderWWWAuthenticate, h)
			}
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(code.Status())
			json.NewEncoder(w).Encode(map[string]any{"type": code.ProblemType(), "status": code.Status()})
		}
		cred, found, err := FromHeaders(r.Header)
		if !found {
			refuse(CodePaymentRequired, "")
			return
		}
		if err == nil {
			err = c.CheckOffer(cred, MethodEVM, IntentCharge, evmReq)
		}
		var rc Receipt
		if err == nil {
			rc, err = m.Verify(r.Context(), cred.Challenge, cred.Payload)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				http.Error(w, "fault", http.StatusInternalServerError)
				t.Error(err)
				return
			}
			refuse(e.Code, err.Error())
			return
		}
		h, err := EncodeReceipt(rc)
		if err != nil {
			t.Error(err)
		}
		w.Header().Set(HeaderPaymentReceipt, h)
		w.Header().Set("Cache-Control", "private")
		w.Write([]byte(`{"answer":42}`))
	}))
	defer srv.Close()

	out := mppx.Pay(t, dir, script, srv.URL+"/paid", "0x"+hex.EncodeToString(payer.Serialize()), tokenName, tokenVersion)
	var got mppxResult
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("client output: %v\n%s", err, out)
	}
	if got.Error != "" {
		t.Fatalf("client error: %s\nserver refusals: %q", got.Error, refusals)
	}
	if got.Status != http.StatusOK || got.Body != `{"answer":42}` {
		t.Fatalf("status %d body %q, want 200 {\"answer\":42}; server refusals: %q", got.Status, got.Body, refusals)
	}
	if len(got.Requests) != 2 || got.Requests[0].Status != 402 || got.Requests[0].Authorization != nil || got.Requests[1].Authorization == nil {
		t.Fatalf("requests = %+v, want a 402 without credential, then one with", got.Requests)
	}
	if w := got.Requests[0].WWWAuthenticate; w == nil || strings.Count(*w, "Payment id=") != 2 {
		t.Errorf("402 carried %v, want two Payment challenges", w)
	}
	if got.Receipt.Status != StatusSuccess || got.Receipt.Method != MethodEVM || got.Receipt.ChainID != 84532 || !strings.HasPrefix(got.Receipt.Reference, "0x") {
		t.Errorf("receipt = %+v", got.Receipt)
	}
	if got.CacheControl != "private" {
		t.Errorf("Cache-Control = %q, want private", got.CacheControl)
	}
	if !strings.EqualFold(got.Payer, x402.AddressOfKey(payer)) {
		t.Errorf("payer = %s, want %s", got.Payer, x402.AddressOfKey(payer))
	}
	if got, want := f.Balance(testAsset, testPayTo).Int64(), int64(10000); got != want {
		t.Errorf("recipient balance = %d, want %d", got, want)
	}
	if got, want := f.Settlements(), 1; got != want {
		t.Errorf("settlements = %d, want %d", got, want)
	}
}
