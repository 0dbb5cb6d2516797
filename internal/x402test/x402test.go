// Package x402test signs x402 payments for tests: a payer key, and the
// PAYMENT-SIGNATURE header a client would send for an offer.
package x402test

import (
	"encoding/hex"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/tollgate-authz/tollgate/x402"
)

// Key is a payer's private key, fixed by n.
func Key(n byte) *secp256k1.PrivateKey {
	b := make([]byte, 32)
	b[0], b[31] = 0x42, n
	return secp256k1.PrivKeyFromBytes(b)
}

// Address is the payer address of Key(n).
func Address(n byte) string { return x402.AddressOfKey(Key(n)) }

// Payment is what a client signs: the offer it accepts, with changes.
type Payment struct {
	Offer x402.PaymentRequirements
	Key   *secp256k1.PrivateKey
	Nonce int
	// ValidBefore defaults to an hour after ValidAfter's now.
	Now      time.Time
	ValidFor time.Duration
	// PaymentID, when set, adds the payment-identifier extension.
	PaymentID string
	// Edit changes the authorization before signing; After changes the
	// payload after signing (tampering).
	Edit  func(*x402.Authorization)
	After func(*x402.PaymentPayload)
}

// Header signs p and returns the PAYMENT-SIGNATURE value.
func Header(t testing.TB, p Payment) string {
	t.Helper()
	if p.Key == nil {
		p.Key = Key(1)
	}
	if p.ValidFor == 0 {
		p.ValidFor = 50 * time.Second
	}
	req := p.Offer
	a := x402.Authorization{
		From: x402.AddressOfKey(p.Key), To: req.PayTo, Value: req.Amount, ValidAfter: "0",
		ValidBefore: strconv.FormatInt(p.Now.Add(p.ValidFor).Unix(), 10),
		Nonce:       "0x" + hex.EncodeToString(append(make([]byte, 28), byte(p.Nonce>>24), byte(p.Nonce>>16), byte(p.Nonce>>8), byte(p.Nonce))),
	}
	if p.Edit != nil {
		p.Edit(&a)
	}
	d, err := x402.DomainOf(req)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := x402.SignAuthorization(p.Key, d, a)
	if err != nil {
		t.Fatal(err)
	}
	pl := x402.PaymentPayload{X402Version: x402.Version, Accepted: &req, Payload: x402.ExactEVMPayload{Signature: sig, Authorization: a}}
	if p.PaymentID != "" {
		ext, _ := json.Marshal(map[string]any{"info": map[string]any{"required": false, "id": p.PaymentID}})
		pl.Extensions = map[string]json.RawMessage{"payment-identifier": ext}
	}
	if p.After != nil {
		p.After(&pl)
	}
	h, err := x402.EncodeHeader(pl)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
