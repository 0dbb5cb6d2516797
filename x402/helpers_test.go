package x402

import (
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

const (
	testAsset = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
	testPayTo = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
	testOther = "0x000000000000000000000000000000000000dEaD"
)

// testNow is a fixed clock; nothing here reads the wall clock.
var testNow = time.Unix(1_800_000_000, 0)

func testOffer() PaymentRequirements {
	return PaymentRequirements{
		Scheme: SchemeExact, Network: "eip155:84532", Amount: "10000", Asset: testAsset,
		PayTo: testPayTo, MaxTimeoutSeconds: 60, Extra: Extra{Name: "USDC", Version: "2"},
	}
}

func testKey(t testing.TB, n byte) *secp256k1.PrivateKey {
	t.Helper()
	b := make([]byte, 32)
	b[31] = n
	b[0] = 0x42
	return secp256k1.PrivKeyFromBytes(b)
}

// signedPayload builds what the SDK would send for req at testNow, nonce n;
// edit adjusts the authorization before signing.
func signedPayload(t testing.TB, key *secp256k1.PrivateKey, req PaymentRequirements, n int, edit func(*Authorization)) PaymentPayload {
	t.Helper()
	a := Authorization{
		From: AddressOfKey(key), To: req.PayTo, Value: req.Amount, ValidAfter: "0",
		ValidBefore: fmt.Sprint(testNow.Unix() + req.MaxTimeoutSeconds),
		Nonce:       "0x" + hex.EncodeToString(append(make([]byte, 31), byte(n))),
	}
	if edit != nil {
		edit(&a)
	}
	d, err := DomainOf(req)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := SignAuthorization(key, d, a)
	if err != nil {
		t.Fatal(err)
	}
	acc := req
	return PaymentPayload{
		X402Version: Version, Resource: &Resource{URL: "http://api.test/paid"}, Accepted: &acc,
		Payload: ExactEVMPayload{Signature: sig, Authorization: a},
	}
}
