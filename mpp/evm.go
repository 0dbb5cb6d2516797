package mpp

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/sha3"

	"github.com/tollgate-authz/tollgate/x402"
)

// MethodEVM is the payment method identifier of draft-evm-charge.
const MethodEVM = "evm"

// credentialTypeAuthorization is the EIP-3009 credential type of
// draft-evm-charge ("Authorization Payload (type="authorization")"), the
// only one EVMCharge offers and verifies.
const credentialTypeAuthorization = "authorization"

// EVMChargeConfig configures the `evm` method, `charge` intent, with
// EIP-3009 `authorization` credentials: the client signs a
// transferWithAuthorization off-chain; we verify it and have it submitted.
type EVMChargeConfig struct {
	ChainID      uint64 // EIP-155 chain id
	Currency     string // the token contract; it must implement EIP-3009
	Recipient    string // who is paid
	TokenName    string // the token's EIP-712 domain name (e.g. "USD Coin")
	TokenVersion string // and version (e.g. "2")
	Decimals     int    // token decimals, sent to clients for display; 0 leaves it out
	// MaxTimeoutSeconds bounds how far ahead an authorization's
	// validBefore may lie; at least the Challenger's TTL. Default 300.
	MaxTimeoutSeconds int64
	// Facilitator submits the transfer: any x402 facilitator (the EIP-3009
	// call is the same one x402's exact scheme makes), or
	// x402.LocalFacilitator in tests.
	Facilitator x402.Facilitator
	Now         func() time.Time
}

// EVMCharge verifies and settles `evm` charge credentials of type
// `authorization`. Safe for concurrent use if its Facilitator is.
type EVMCharge struct {
	cfg EVMChargeConfig
	req x402.PaymentRequirements // the same offer in x402 terms, for the facilitator
}

var _ Method = (*EVMCharge)(nil)

// NewEVMCharge validates cfg and returns the method.
func NewEVMCharge(cfg EVMChargeConfig) (*EVMCharge, error) {
	if cfg.MaxTimeoutSeconds == 0 {
		cfg.MaxTimeoutSeconds = 300
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	switch {
	case cfg.ChainID == 0:
		return nil, errors.New("mpp: evm: chain_id is required")
	case !isAddress(cfg.Currency):
		return nil, errors.New("mpp: evm: currency: want 0x and 40 hex digits (EIP-55 if mixed case)")
	case !isAddress(cfg.Recipient):
		return nil, errors.New("mpp: evm: recipient: want 0x and 40 hex digits (EIP-55 if mixed case)")
	case cfg.TokenName == "" || cfg.TokenVersion == "":
		return nil, errors.New("mpp: evm: the token's EIP-712 name and version are required")
	case cfg.Decimals < 0 || cfg.Decimals > 36:
		return nil, errors.New("mpp: evm: decimals: want 0 to 36")
	case cfg.MaxTimeoutSeconds < 0 || cfg.MaxTimeoutSeconds > 86400:
		return nil, errors.New("mpp: evm: max_timeout_seconds: want 1 to 86400")
	case cfg.Facilitator == nil:
		return nil, errors.New("mpp: evm: a facilitator is required to settle")
	}
	cfg.Currency = x402.ChecksumAddress(cfg.Currency)
	cfg.Recipient = x402.ChecksumAddress(cfg.Recipient)
	return &EVMCharge{cfg: cfg, req: x402.PaymentRequirements{
		Scheme: x402.SchemeExact, Network: "eip155:" + strconv.FormatUint(cfg.ChainID, 10),
		Asset: cfg.Currency, PayTo: cfg.Recipient, MaxTimeoutSeconds: cfg.MaxTimeoutSeconds,
		Extra: x402.Extra{Name: cfg.TokenName, Version: cfg.TokenVersion, AssetTransferMethod: "eip3009"},
	}}, nil
}

// Name is "evm".
func (m *EVMCharge) Name() string { return MethodEVM }

// evmRequest is the charge request of draft-evm-charge ("Request Schema").
type evmRequest struct {
	Amount        string           `json:"amount"`
	Currency      string           `json:"currency"`
	Recipient     string           `json:"recipient"`
	Description   string           `json:"description,omitempty"`
	ExternalID    string           `json:"externalId,omitempty"`
	MethodDetails evmMethodDetails `json:"methodDetails"`
}

type evmMethodDetails struct {
	ChainID         uint64            `json:"chainId"`
	CredentialTypes []string          `json:"credentialTypes,omitempty"`
	Decimals        int               `json:"decimals,omitempty"`
	Splits          []json.RawMessage `json:"splits,omitempty"`
}

// Request builds the `request` of a charge of amount (atomic units,
// canonical decimal) for Challenger.Challenge; description and externalID
// are optional. Build it once per price and reuse it.
func (m *EVMCharge) Request(amount, description, externalID string) (EncodedRequest, error) {
	if _, ok := parseUint256(amount); !ok || amount == "0" {
		return "", errors.New("mpp: evm: amount: want a positive decimal integer below 2^256")
	}
	return EncodeRequest(evmRequest{
		Amount: amount, Currency: m.cfg.Currency, Recipient: m.cfg.Recipient,
		Description: description, ExternalID: externalID,
		MethodDetails: evmMethodDetails{
			ChainID: m.cfg.ChainID, CredentialTypes: []string{credentialTypeAuthorization}, Decimals: m.cfg.Decimals,
		},
	})
}

// evmAuthorization is draft-evm-charge's `authorization` payload.
type evmAuthorization struct {
	Type        string `json:"type"`
	From        string `json:"from"`
	To          string `json:"to"`
	Value       string `json:"value"`
	ValidAfter  string `json:"validAfter"`
	ValidBefore string `json:"validBefore"`
	Nonce       string `json:"nonce"`
	Signature   string `json:"signature"`
}

// Authorized is a credential EVMCharge.Authorize accepted and the
// facilitator verified: what Settle needs to move the money.
type Authorized struct {
	Challenge  Challenge
	Payer      string // EIP-55
	ExternalID string
	payload    x402.PaymentPayload
	req        x402.PaymentRequirements
}

// Verify is Authorize then Settle.
func (m *EVMCharge) Verify(ctx context.Context, ch Challenge, payload json.RawMessage) (Receipt, error) {
	a, err := m.Authorize(ctx, ch, payload)
	if err != nil {
		return Receipt{}, err
	}
	return m.Settle(ctx, a)
}

func refuse(field, detail string) *Error {
	return &Error{Code: CodeVerificationFailed, Field: field, Detail: detail}
}

// Authorize runs draft-evm-charge's "Authorization Verification" on a
// challenge Check accepted, without moving money: Inspect, then the
// facilitator's /verify (balance, nonce unused on chain).
func (m *EVMCharge) Authorize(ctx context.Context, ch Challenge, payload json.RawMessage) (Authorized, error) {
	a, err := m.Inspect(ch, payload)
	if err != nil {
		return Authorized{}, err
	}
	vr, err := m.cfg.Facilitator.Verify(ctx, a.payload, a.req)
	if err != nil {
		return Authorized{}, fmt.Errorf("mpp: evm: facilitator verify: %w", err)
	}
	if !vr.IsValid {
		return Authorized{}, FacilitatorRefusal(vr.InvalidReason)
	}
	return a, nil
}

// Inspect is every step of Authorize that needs no facilitator, so a
// caller can record the payment (and refuse a replay) before paying for a
// facilitator round trip:
//
//  1. the challenge is `evm`/`charge` and its request is this method's
//     (chain, currency, recipient; no splits);
//  2. payload.type is "authorization", the fields well formed;
//  3. to == recipient and value == amount;
//  4. nonce == keccak256(challenge.id ‖ challenge.realm) (§"Challenge
//     Binding": the challengeHash, so the signature pays this challenge and
//     no other, and the token contract spends the nonce once);
//  5. validAfter <= now < validBefore <= expires;
//  6. the EIP-712 signature under the token's domain recovers to `from`.
func (m *EVMCharge) Inspect(ch Challenge, payload json.RawMessage) (Authorized, error) {
	if ch.Method != MethodEVM || ch.Intent != IntentCharge {
		return Authorized{}, &Error{Code: CodeMethodUnsupported, Field: "challenge.method", Detail: "this method verifies evm charge only"}
	}
	var r evmRequest
	if err := ch.DecodeRequest(&r); err != nil {
		return Authorized{}, err
	}
	switch {
	case r.MethodDetails.ChainID != m.cfg.ChainID:
		return Authorized{}, refuse("challenge.request.methodDetails.chainId", "not this method's chain")
	case !sameAddress(r.Currency, m.cfg.Currency):
		return Authorized{}, refuse("challenge.request.currency", "not this method's token")
	case !sameAddress(r.Recipient, m.cfg.Recipient):
		return Authorized{}, refuse("challenge.request.recipient", "not this method's recipient")
	case len(r.MethodDetails.Splits) > 0:
		return Authorized{}, refuse("challenge.request.methodDetails.splits", "authorization credentials cannot pay splits")
	}
	amount, ok := parseUint256(r.Amount)
	if !ok {
		return Authorized{}, refuse("challenge.request.amount", "want a decimal integer")
	}

	if err := checkJSON(payload); err != nil {
		return Authorized{}, err
	}
	var p evmAuthorization
	if err := json.Unmarshal(payload, &p); err != nil {
		return Authorized{}, malformed("payload", "not an evm authorization payload")
	}
	if p.Type != credentialTypeAuthorization {
		return Authorized{}, refuse("payload.type", "only authorization credentials are accepted")
	}
	for _, f := range []struct{ name, v string }{{"from", p.From}, {"to", p.To}} {
		if !isAddress(f.v) {
			return Authorized{}, malformed("payload."+f.name, "want 0x and 40 hex digits (EIP-55 if mixed case)")
		}
	}
	nums := map[string]*big.Int{}
	for _, f := range []struct{ name, v string }{{"value", p.Value}, {"validAfter", p.ValidAfter}, {"validBefore", p.ValidBefore}} {
		n, ok := parseUint256(f.v)
		if !ok {
			return Authorized{}, malformed("payload."+f.name, "want a decimal integer below 2^256")
		}
		nums[f.name] = n
	}
	if !isHex(p.Nonce, 32) {
		return Authorized{}, malformed("payload.nonce", "want 0x and 64 hex digits")
	}
	if !isHex(p.Signature, 65) {
		return Authorized{}, malformed("payload.signature", "want 0x and 130 hex digits (65 bytes)")
	}

	if !sameAddress(p.To, m.cfg.Recipient) {
		return Authorized{}, refuse("payload.to", "not the challenge's recipient")
	}
	switch c := nums["value"].Cmp(amount); {
	case c < 0:
		return Authorized{}, &Error{Code: CodePaymentInsufficient, Field: "payload.value", Detail: "less than the challenge's amount"}
	case c > 0:
		return Authorized{}, refuse("payload.value", "not the challenge's amount")
	}
	want := ChallengeHash(ch.ID, ch.Realm)
	if !strings.EqualFold(p.Nonce, want) {
		return Authorized{}, refuse("payload.nonce", "not the challenge hash of this challenge")
	}
	now := m.cfg.Now()
	exp, err := time.Parse(time.RFC3339, ch.Expires)
	if err != nil {
		return Authorized{}, &Error{Code: CodeInvalidChallenge, Field: "challenge.expires", Detail: "not RFC 3339"}
	}
	unix := big.NewInt(now.Unix())
	switch {
	case nums["validAfter"].Cmp(unix) > 0:
		return Authorized{}, refuse("payload.validAfter", "not valid yet")
	case nums["validBefore"].Cmp(unix) <= 0:
		return Authorized{}, &Error{Code: CodePaymentExpired, Field: "payload.validBefore", Detail: "the authorization has expired"}
	case nums["validBefore"].Cmp(big.NewInt(exp.Unix())) > 0:
		return Authorized{}, refuse("payload.validBefore", "later than the challenge expires")
	}

	req := m.Requirements(r.Amount)
	pp := x402.PaymentPayload{
		X402Version: x402.Version, Accepted: &req,
		Payload: x402.ExactEVMPayload{Signature: p.Signature, Authorization: x402.Authorization{
			From: p.From, To: p.To, Value: p.Value, ValidAfter: p.ValidAfter, ValidBefore: p.ValidBefore, Nonce: p.Nonce,
		}},
	}
	payer, err := x402.VerifySignature(req, pp)
	if err != nil {
		return Authorized{}, refuse("payload.signature", "not signed by payload.from under the token's EIP-712 domain")
	}
	return Authorized{Challenge: ch, Payer: payer, ExternalID: r.ExternalID, payload: pp, req: req}, nil
}

// X402 is the authorization in x402's terms: the `exact` scheme's
// PaymentPayload (version 2, accepted = req) and the requirements a
// facilitator verifies and settles it against. The EIP-3009 call is the
// same, so an x402 facilitator, store or reconciler can take it as it is.
func (a Authorized) X402() (x402.PaymentPayload, x402.PaymentRequirements) {
	return a.payload, a.req
}

// Requirements is the x402 form of this method's charge of amount (atomic
// units): what Inspect puts in a payload's accepted member, and what its
// settlement is sent with. maxTimeoutSeconds is the method's, which covers
// the challenge's lifetime.
func (m *EVMCharge) Requirements(amount string) x402.PaymentRequirements {
	req := m.req
	req.Amount = amount
	return req
}

// Settle has the facilitator submit the transfer and returns the receipt
// of draft-evm-charge ("Receipt Generation"): reference is the transaction
// hash. An error that is not an *Error is a fault whose outcome may be
// unknown (x402.ErrSettleOutcomeUnknown): reconcile it, never retry blindly.
func (m *EVMCharge) Settle(ctx context.Context, a Authorized) (Receipt, error) {
	sr, err := m.cfg.Facilitator.Settle(ctx, a.payload, a.req)
	if err != nil {
		return Receipt{}, fmt.Errorf("mpp: evm: facilitator settle: %w", err)
	}
	if !sr.Success {
		return Receipt{}, FacilitatorRefusal(sr.ErrorReason)
	}
	rc := m.Receipt(sr.Transaction, a.Challenge.ID)
	rc.ExternalID = a.ExternalID
	return rc, nil
}

// Receipt is the receipt of draft-evm-charge ("Receipt Generation") for a
// settlement in transaction of the challenge challengeID, timed now.
func (m *EVMCharge) Receipt(transaction, challengeID string) Receipt {
	rc := NewReceipt(MethodEVM, transaction, challengeID, m.cfg.Now())
	rc.ChainID = m.cfg.ChainID
	return rc
}

// FacilitatorRefusal is the *Error for a facilitator's refusal: it passes
// on the reason when it is a plain code (x402 reasons are), and nothing
// else the facilitator said.
func FacilitatorRefusal(reason string) *Error {
	code := CodeVerificationFailed
	if reason == "insufficient_funds" {
		code = CodePaymentInsufficient
	}
	d := "the facilitator refused the payment"
	if reason != "" && len(reason) <= 80 && strings.Trim(reason, "abcdefghijklmnopqrstuvwxyz0123456789_") == "" {
		d += ": " + reason
	}
	return &Error{Code: code, Field: "payload", Detail: d}
}

// ChallengeHash is draft-evm-charge's EIP-3009 nonce for a challenge:
// keccak256(abi.encodePacked(id, realm)), i.e. of the two strings' bytes
// one after the other, as 0x + 64 hex.
func ChallengeHash(id, realm string) string {
	h := sha3.NewLegacyKeccak256()
	h.Write([]byte(id))
	h.Write([]byte(realm))
	return "0x" + hex.EncodeToString(h.Sum(nil))
}

// isAddress is 0x + 40 hex, with the EIP-55 checksum right when mixed case.
func isAddress(s string) bool {
	if !isHex(s, 20) {
		return false
	}
	body := s[2:]
	if body == strings.ToLower(body) || body == strings.ToUpper(body) {
		return true
	}
	return x402.ChecksumAddress(s) == s
}

func sameAddress(a, b string) bool { return strings.EqualFold(a, b) }

// isHex is 0x followed by exactly 2n hex digits.
func isHex(s string, n int) bool {
	if len(s) != 2+2*n || (s[:2] != "0x" && s[:2] != "0X") {
		return false
	}
	_, err := hex.DecodeString(s[2:])
	return err == nil
}

// parseUint256 accepts canonical decimal: digits only, no leading zeros, < 2^256.
func parseUint256(s string) (*big.Int, bool) {
	if s == "" || len(s) > 78 || (len(s) > 1 && s[0] == '0') {
		return nil, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return nil, false
		}
	}
	n, ok := new(big.Int).SetString(s, 10)
	if !ok || n.BitLen() > 256 {
		return nil, false
	}
	return n, true
}
