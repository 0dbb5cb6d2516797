// Package mpptest pays Payment scheme (MPP) challenges for tests, as
// mppx's evm client does: it reads a `WWW-Authenticate: Payment` value,
// signs an EIP-3009 authorization for its request and returns the
// `Authorization: Payment` value to retry with.
package mpptest

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/tollgate-authz/tollgate/mpp"
	"github.com/tollgate-authz/tollgate/x402"
)

// Payment is what a client pays: a challenge, with changes.
type Payment struct {
	// Challenge is one `WWW-Authenticate: Payment …` value.
	Challenge string
	// Key signs the authorization (required).
	Key *secp256k1.PrivateKey
	// TokenName and TokenVersion are the token's EIP-712 domain.
	TokenName, TokenVersion string
	// EditChallenge changes the echoed challenge (tampering); Edit the
	// authorization before signing; After the payload after signing.
	EditChallenge func(map[string]string)
	Edit          func(*x402.Authorization)
	After         func(*x402.Authorization)
}

// Params parses a Payment challenge's auth-params (quoted values without
// escapes, as tollgate writes them).
func Params(t testing.TB, header string) map[string]string {
	t.Helper()
	rest, ok := strings.CutPrefix(header, "Payment ")
	if !ok {
		t.Fatalf("not a Payment challenge: %q", header)
	}
	m := map[string]string{}
	for rest != "" {
		name, v, ok := strings.Cut(rest, `="`)
		if !ok {
			t.Fatalf("challenge %q: bad auth-param at %q", header, rest)
		}
		end := strings.IndexByte(v, '"')
		if end < 0 {
			t.Fatalf("challenge %q: unterminated value", header)
		}
		m[strings.TrimSpace(name)] = v[:end]
		rest = strings.TrimPrefix(v[end+1:], ", ")
	}
	return m
}

// Authorization signs p and returns the `Authorization` header value.
func Authorization(t testing.TB, p Payment) string {
	t.Helper()
	ch := Params(t, p.Challenge)
	raw, err := base64.RawURLEncoding.DecodeString(ch["request"])
	if err != nil {
		t.Fatal(err)
	}
	var req struct {
		Amount, Currency, Recipient string
		MethodDetails               struct {
			ChainID uint64 `json:"chainId"`
		} `json:"methodDetails"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		t.Fatal(err)
	}
	exp, err := time.Parse(time.RFC3339, ch["expires"])
	if err != nil {
		t.Fatal(err)
	}
	a := x402.Authorization{
		From: x402.AddressOfKey(p.Key), To: req.Recipient, Value: req.Amount, ValidAfter: "0",
		ValidBefore: strconv.FormatInt(exp.Unix(), 10), Nonce: mpp.ChallengeHash(ch["id"], ch["realm"]),
	}
	if p.Edit != nil {
		p.Edit(&a)
	}
	sig, err := x402.SignAuthorization(p.Key, x402.Domain{Name: p.TokenName, Version: p.TokenVersion, ChainID: req.MethodDetails.ChainID, VerifyingContract: req.Currency}, a)
	if err != nil {
		t.Fatal(err)
	}
	if p.After != nil {
		p.After(&a)
	}
	if p.EditChallenge != nil {
		p.EditChallenge(ch)
	}
	cred := map[string]any{
		"challenge": ch,
		"source":    "did:pkh:eip155:" + strconv.FormatUint(req.MethodDetails.ChainID, 10) + ":" + a.From,
		"payload": map[string]string{
			"type": "authorization", "from": a.From, "to": a.To, "value": a.Value,
			"validAfter": a.ValidAfter, "validBefore": a.ValidBefore, "nonce": a.Nonce, "signature": sig,
		},
	}
	b, err := json.Marshal(cred)
	if err != nil {
		t.Fatal(err)
	}
	return "Payment " + base64.RawURLEncoding.EncodeToString(b)
}
