package x402

import (
	"context"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// serveLocal runs a LocalFacilitator behind FacilitatorHandler and returns
// it with an HTTP client for it.
func serveLocal(t *testing.T, now func() time.Time) (*LocalFacilitator, *HTTPFacilitator) {
	t.Helper()
	local := NewLocalFacilitator(now, "eip155:84532")
	srv := httptest.NewServer(FacilitatorHandler(local))
	t.Cleanup(srv.Close)
	return local, &HTTPFacilitator{URL: srv.URL, Client: srv.Client(), VerifyTimeout: 10 * time.Second, SettleTimeout: 10 * time.Second}
}

func TestLocalFacilitatorOverHTTP(t *testing.T) {
	ctx := context.Background()
	key, poor := testKey(t, 1), testKey(t, 2)
	now := testNow
	local, client := serveLocal(t, func() time.Time { return now })
	req := testOffer()
	payer := AddressOfKey(key)
	local.Mint(testAsset, payer, big.NewInt(25000))

	p := signedPayload(t, key, req, 1, nil)
	v, err := client.Verify(ctx, p, req)
	if err != nil || !v.IsValid || v.Payer != payer {
		t.Fatalf("verify = %+v, %v; want valid, payer %s", v, err, payer)
	}
	s1, err := client.Settle(ctx, p, req)
	if err != nil || !s1.Success || s1.Transaction == "" || s1.Network != req.Network {
		t.Fatalf("settle = %+v, %v", s1, err)
	}
	if got, want := local.Balance(testAsset, payer), big.NewInt(15000); got.Cmp(want) != 0 {
		t.Errorf("payer balance = %v, want %v", got, want)
	}
	if got, want := local.Balance(testAsset, testPayTo), big.NewInt(10000); got.Cmp(want) != 0 {
		t.Errorf("payee balance = %v, want %v", got, want)
	}

	// The same settle again: the first result, no second transfer.
	s2, err := client.Settle(ctx, p, req)
	if err != nil || s2 != s1 {
		t.Errorf("second settle = %+v, %v; want the first %+v", s2, err, s1)
	}
	if got, want := local.Balance(testAsset, payer), big.NewInt(15000); got.Cmp(want) != 0 {
		t.Errorf("payer balance after second settle = %v, want %v", got, want)
	}

	refusals := []struct {
		name string
		p    PaymentPayload
		req  PaymentRequirements
		want Reason
	}{
		{"replayed nonce at verify", p, req, ReasonNonceUsed},
		{"same nonce, new signature", signedPayload(t, key, req, 1, func(a *Authorization) { a.ValidAfter = "1" }), req, ReasonNonceUsed},
		{"insufficient balance", signedPayload(t, poor, req, 2, nil), req, ReasonInsufficientFunds},
		{"signed by another key", func() PaymentPayload {
			q := signedPayload(t, poor, req, 3, nil)
			q.Payload.Authorization.From = payer
			return q
		}(), req, ReasonInvalidSignature},
		{"tampered value", func() PaymentPayload {
			q := signedPayload(t, key, req, 4, nil)
			q.Payload.Authorization.Value = "1"
			return q
		}(), req, ReasonValueMismatch},
		{"signed for another domain", func() PaymentPayload {
			other := req
			other.Extra.Name = "Fake USDC"
			q := signedPayload(t, key, other, 5, nil)
			q.Accepted = &req
			return q
		}(), req, ReasonInvalidSignature},
		{"unsupported network", signedPayload(t, key, func() PaymentRequirements { r := req; r.Network = "eip155:1"; return r }(), 6, nil),
			func() PaymentRequirements { r := req; r.Network = "eip155:1"; return r }(), ReasonInvalidNetwork},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			v, err := client.Verify(ctx, tt.p, tt.req)
			if err != nil || v.IsValid || v.InvalidReason != string(tt.want) {
				t.Errorf("verify = %+v, %v; want invalid %s", v, err, tt.want)
			}
			s, err := client.Settle(ctx, tt.p, tt.req)
			if tt.name == "replayed nonce at verify" {
				// Settling the very same authorization again is idempotent.
				if err != nil || s != s1 {
					t.Errorf("settle = %+v, %v; want the first result", s, err)
				}
				return
			}
			if err != nil || s.Success || s.ErrorReason != string(tt.want) {
				t.Errorf("settle = %+v, %v; want refused %s", s, err, tt.want)
			}
		})
	}
	if got, want := local.Balance(testAsset, payer), big.NewInt(15000); got.Cmp(want) != 0 {
		t.Errorf("payer balance after refusals = %v, want %v", got, want)
	}

	// Expired between verify and settle: refused, nothing moves.
	p7 := signedPayload(t, key, req, 7, nil)
	now = testNow.Add(time.Duration(req.MaxTimeoutSeconds) * time.Second)
	if s, err := client.Settle(ctx, p7, req); err != nil || s.Success || s.ErrorReason != string(ReasonExpired) {
		t.Errorf("expired settle = %+v, %v; want %s", s, err, ReasonExpired)
	}
	if got, want := local.Settlements(), 1; got != want {
		t.Errorf("settlements = %d, want %d", got, want)
	}

	sup, err := client.Supported(ctx)
	if err != nil || len(sup.Kinds) != 1 || sup.Kinds[0].Network != "eip155:84532" {
		t.Errorf("supported = %+v, %v", sup, err)
	}
}

func TestFacilitatorHandlerRefusesMalformed(t *testing.T) {
	_, client := serveLocal(t, func() time.Time { return testNow })
	p := signedPayload(t, testKey(t, 1), testOffer(), 1, nil)
	p.Payload.Signature = "0x12"
	v, err := client.Verify(context.Background(), p, testOffer())
	if err != nil || v.IsValid || v.InvalidReason != string(ReasonInvalidPayload) {
		t.Errorf("verify = %+v, %v; want a refusal with invalid_payload", v, err)
	}
}

// A facilitator that never answers: a settle that times out is "outcome
// unknown", a verify that times out is "unavailable".
func TestHTTPFacilitatorTimeouts(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	f := &HTTPFacilitator{URL: srv.URL, Client: srv.Client(), VerifyTimeout: 50 * time.Millisecond, SettleTimeout: 50 * time.Millisecond}
	p := signedPayload(t, testKey(t, 1), testOffer(), 1, nil)

	_, err := f.Settle(context.Background(), p, testOffer())
	if !errors.Is(err, ErrSettleOutcomeUnknown) || errors.Is(err, ErrFacilitatorUnavailable) {
		t.Errorf("settle timeout: err = %v, want ErrSettleOutcomeUnknown only", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("settle timeout: err = %v, want it to wrap context.DeadlineExceeded", err)
	}
	_, err = f.Verify(context.Background(), p, testOffer())
	if !errors.Is(err, ErrFacilitatorUnavailable) || errors.Is(err, ErrSettleOutcomeUnknown) {
		t.Errorf("verify timeout: err = %v, want ErrFacilitatorUnavailable", err)
	}
}

func TestHTTPFacilitatorDownAndBroken(t *testing.T) {
	// A port nobody listens on: the settle never left, so nothing happened.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := signedPayload(t, testKey(t, 1), testOffer(), 1, nil)
	down := &HTTPFacilitator{URL: "http://" + addr, SettleTimeout: 5 * time.Second}
	if _, err := down.Settle(context.Background(), p, testOffer()); !errors.Is(err, ErrFacilitatorUnavailable) {
		t.Errorf("settle to a closed port: err = %v, want ErrFacilitatorUnavailable", err)
	}

	tests := []struct {
		name    string
		status  int
		body    string
		unknown bool
		answer  bool
	}{
		{"5xx", http.StatusBadGateway, "oops", true, false},
		{"200 not JSON", http.StatusOK, "<html>", true, false},
		{"400 refusal body", http.StatusBadRequest, `{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"eip155:84532"}`, false, true},
		{"400 without refusal", http.StatusBadRequest, `{"error":"bad"}`, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			f := &HTTPFacilitator{URL: srv.URL, Client: srv.Client(), SettleTimeout: 5 * time.Second}
			s, err := f.Settle(context.Background(), p, testOffer())
			if tt.answer {
				if err != nil || s.Success || s.ErrorReason != "insufficient_funds" {
					t.Errorf("settle = %+v, %v; want the refusal", s, err)
				}
				return
			}
			if got := errors.Is(err, ErrSettleOutcomeUnknown); got != tt.unknown {
				t.Errorf("err = %v; outcome unknown = %v, want %v", err, got, tt.unknown)
			}
			if err == nil {
				t.Errorf("err = nil, want an error")
			}
		})
	}
}
