package mpp

import (
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"strconv"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/tollgate-authz/tollgate/x402"
)

const (
	testAsset = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
	testPayTo = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
)

func testPrivKey(n byte) *secp256k1.PrivateKey {
	b := make([]byte, 32)
	b[0], b[31] = 0x42, n
	return secp256k1.PrivKeyFromBytes(b)
}

// fakeFacilitator is an x402.Facilitator with function fields.
type fakeFacilitator struct {
	verify func(x402.PaymentPayload, x402.PaymentRequirements) (x402.VerifyResponse, error)
	settle func(x402.PaymentPayload, x402.PaymentRequirements) (x402.SettleResponse, error)
}

func (f *fakeFacilitator) Verify(_ context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.VerifyResponse, error) {
	return f.verify(p, r)
}

func (f *fakeFacilitator) Settle(_ context.Context, p x402.PaymentPayload, r x402.PaymentRequirements) (x402.SettleResponse, error) {
	return f.settle(p, r)
}

func (f *fakeFacilitator) Supported(context.Context) (x402.SupportedResponse, error) {
	return x402.SupportedResponse{}, nil
}

type evmFixture struct {
	clock *fakeClock
	c     *Challenger
	f     *x402.LocalFacilitator
	m     *EVMCharge
	ch    Challenge
	payer *secp256k1.PrivateKey
}

func newEVMFixture(t *testing.T) *evmFixture {
	t.Helper()
	clock := &fakeClock{t0}
	f := x402.NewLocalFacilitator(clock.now, "eip155:84532")
	payer := testPrivKey(1)
	f.Mint(testAsset, x402.AddressOfKey(payer), big.NewInt(1_000_000))
	m, err := NewEVMCharge(EVMChargeConfig{
		ChainID: 84532, Currency: testAsset, Recipient: testPayTo, TokenName: "USDC", TokenVersion: "2",
		Decimals: 6, Facilitator: f, Now: clock.now,
	})
	if err != nil {
		t.Fatal(err)
	}
	req, err := m.Request("10000", "", "order-1")
	if err != nil {
		t.Fatal(err)
	}
	c := newTestChallenger(clock)
	ch, _, err := c.Issue(MethodEVM, IntentCharge, req, Params{})
	if err != nil {
		t.Fatal(err)
	}
	return &evmFixture{clock: clock, c: c, f: f, m: m, ch: ch, payer: payer}
}

// sign builds the payload a client sends for ch, as mppx's evm client does:
// validBefore = expires, nonce = the challenge hash. before edits the
// authorization before signing, after edits the payload after.
func (fx *evmFixture) sign(t *testing.T, key *secp256k1.PrivateKey, ch Challenge, before, after func(*evmAuthorization)) json.RawMessage {
	t.Helper()
	exp, err := time.Parse(time.RFC3339, ch.Expires)
	if err != nil {
		t.Fatal(err)
	}
	a := evmAuthorization{
		Type: "authorization", From: x402.AddressOfKey(key), To: testPayTo, Value: "10000",
		ValidAfter: "0", ValidBefore: strconv.FormatInt(exp.Unix(), 10), Nonce: ChallengeHash(ch.ID, ch.Realm),
	}
	if before != nil {
		before(&a)
	}
	sig, err := x402.SignAuthorization(key, x402.Domain{Name: "USDC", Version: "2", ChainID: 84532, VerifyingContract: testAsset},
		x402.Authorization{From: a.From, To: a.To, Value: a.Value, ValidAfter: a.ValidAfter, ValidBefore: a.ValidBefore, Nonce: a.Nonce})
	if err != nil {
		t.Fatal(err)
	}
	a.Signature = sig
	if after != nil {
		after(&a)
	}
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEVMChargeVerify(t *testing.T) {
	fx := newEVMFixture(t)
	payload := fx.sign(t, fx.payer, fx.ch, nil, nil)
	if err := fx.c.Check(credentialFor(fx.ch)); err != nil {
		t.Fatal(err)
	}
	got, err := fx.m.Verify(context.Background(), fx.ch, payload)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusSuccess || got.Method != "evm" || got.ChallengeID != fx.ch.ID || got.ChainID != 84532 ||
		got.ExternalID != "order-1" || len(got.Reference) != 66 || got.Timestamp != "2026-01-15T12:00:00Z" {
		t.Errorf("receipt = %+v", got)
	}
	if got, want := fx.f.Balance(testAsset, testPayTo).Int64(), int64(10000); got != want {
		t.Errorf("recipient balance = %d, want %d", got, want)
	}
	// The same credential again: the nonce is spent, nothing moves twice.
	_, err = fx.m.Verify(context.Background(), fx.ch, payload)
	if !errors.Is(err, ErrVerificationFailed) {
		t.Fatalf("replay: got %v, want verification-failed", err)
	}
	if got, want := fx.f.Balance(testAsset, testPayTo).Int64(), int64(10000); got != want {
		t.Errorf("after replay, recipient balance = %d, want %d", got, want)
	}
}

func TestEVMChargeRefuses(t *testing.T) {
	other := testPrivKey(2)
	tests := []struct {
		name  string
		build func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage)
		want  *Error
	}{
		{"signature over another value", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, func(a *evmAuthorization) { a.Value = "1" }, func(a *evmAuthorization) { a.Value = "10000" })
		}, &Error{Code: CodeVerificationFailed, Field: "payload.signature"}},
		{"value below the amount", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, func(a *evmAuthorization) { a.Value = "9999" }, nil)
		}, &Error{Code: CodePaymentInsufficient, Field: "payload.value"}},
		{"value above the amount", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, func(a *evmAuthorization) { a.Value = "10001" }, nil)
		}, &Error{Code: CodeVerificationFailed, Field: "payload.value"}},
		{"paid to someone else", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, func(a *evmAuthorization) { a.To = "0x000000000000000000000000000000000000dEaD" }, nil)
		}, &Error{Code: CodeVerificationFailed, Field: "payload.to"}},
		{"nonce of another challenge", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, func(a *evmAuthorization) { a.Nonce = ChallengeHash("other", fx.ch.Realm) }, nil)
		}, &Error{Code: CodeVerificationFailed, Field: "payload.nonce"}},
		{"authorization expired", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			p := fx.sign(t, fx.payer, fx.ch, nil, nil)
			fx.clock.t = t0.Add(5 * time.Minute)
			return fx.ch, p
		}, &Error{Code: CodePaymentExpired, Field: "payload.validBefore"}},
		{"valid beyond the challenge", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, func(a *evmAuthorization) { a.ValidBefore = strconv.FormatInt(t0.Add(time.Hour).Unix(), 10) }, nil)
		}, &Error{Code: CodeVerificationFailed, Field: "payload.validBefore"}},
		{"not valid yet", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, func(a *evmAuthorization) { a.ValidAfter = strconv.FormatInt(t0.Add(time.Minute).Unix(), 10) }, nil)
		}, &Error{Code: CodeVerificationFailed, Field: "payload.validAfter"}},
		{"signed by a key that is not from", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, other, fx.ch, func(a *evmAuthorization) { a.From = x402.AddressOfKey(fx.payer) }, nil)
		}, &Error{Code: CodeVerificationFailed, Field: "payload.signature"}},
		{"payer without funds", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, other, fx.ch, nil, nil)
		}, &Error{Code: CodePaymentInsufficient, Field: "payload"}},
		{"permit2 credential", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, nil, func(a *evmAuthorization) { a.Type = "permit2" })
		}, &Error{Code: CodeVerificationFailed, Field: "payload.type"}},
		{"from not an address", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, nil, func(a *evmAuthorization) { a.From = "0x1234" })
		}, &Error{Code: CodeMalformedCredential, Field: "payload.from"}},
		{"to with a wrong EIP-55 checksum", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, nil, func(a *evmAuthorization) { a.To = "0x209693bc6afc0C5328bA36FaF03C514EF312287C" })
		}, &Error{Code: CodeMalformedCredential, Field: "payload.to"}},
		{"value with a leading zero", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, nil, func(a *evmAuthorization) { a.Value = "010000" })
		}, &Error{Code: CodeMalformedCredential, Field: "payload.value"}},
		{"short nonce", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, nil, func(a *evmAuthorization) { a.Nonce = "0x12" })
		}, &Error{Code: CodeMalformedCredential, Field: "payload.nonce"}},
		{"short signature", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			return fx.ch, fx.sign(t, fx.payer, fx.ch, nil, func(a *evmAuthorization) { a.Signature = a.Signature[:100] })
		}, &Error{Code: CodeMalformedCredential, Field: "payload.signature"}},
		{"duplicate member in the payload", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			p := fx.sign(t, fx.payer, fx.ch, nil, nil)
			return fx.ch, append(p[:len(p)-1:len(p)-1], []byte(`,"value":"1"}`)...)
		}, &Error{Code: CodeMalformedCredential}},
		{"challenge for another method", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			ch := fx.ch
			ch.Method = "lightning"
			return ch, fx.sign(t, fx.payer, fx.ch, nil, nil)
		}, &Error{Code: CodeMethodUnsupported}},
		{"request for another chain", func(t *testing.T, fx *evmFixture) (Challenge, json.RawMessage) {
			m2, err := NewEVMCharge(EVMChargeConfig{ChainID: 1, Currency: testAsset, Recipient: testPayTo, TokenName: "USDC", TokenVersion: "2", Facilitator: fx.f})
			if err != nil {
				t.Fatal(err)
			}
			req, _ := m2.Request("10000", "", "")
			ch, _, _ := fx.c.Issue(MethodEVM, IntentCharge, req, Params{})
			return ch, fx.sign(t, fx.payer, ch, nil, nil)
		}, &Error{Code: CodeVerificationFailed, Field: "challenge.request.methodDetails.chainId"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newEVMFixture(t)
			ch, payload := tt.build(t, fx)
			_, err := fx.m.Verify(context.Background(), ch, payload)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if got := fx.f.Settlements(); got != 0 {
				t.Errorf("settlements = %d, want 0", got)
			}
		})
	}
}

// TestEVMChargeFacilitatorFaults: a facilitator that cannot be reached is a
// fault of ours (not an *Error refusal), and a settle whose outcome is
// unknown stays recognisable as x402.ErrSettleOutcomeUnknown.
func TestEVMChargeFacilitatorFaults(t *testing.T) {
	down := errors.New("connection refused")
	unknown := &x402.FacilitatorError{Op: "settle", Unknown: true, Err: context.DeadlineExceeded}
	ok := func(x402.PaymentPayload, x402.PaymentRequirements) (x402.VerifyResponse, error) {
		return x402.VerifyResponse{IsValid: true}, nil
	}
	tests := []struct {
		name    string
		f       *fakeFacilitator
		wantErr error
	}{
		{"verify unreachable", &fakeFacilitator{verify: func(x402.PaymentPayload, x402.PaymentRequirements) (x402.VerifyResponse, error) {
			return x402.VerifyResponse{}, down
		}}, down},
		{"settle outcome unknown", &fakeFacilitator{verify: ok, settle: func(x402.PaymentPayload, x402.PaymentRequirements) (x402.SettleResponse, error) {
			return x402.SettleResponse{}, unknown
		}}, x402.ErrSettleOutcomeUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newEVMFixture(t)
			m, err := NewEVMCharge(EVMChargeConfig{ChainID: 84532, Currency: testAsset, Recipient: testPayTo, TokenName: "USDC", TokenVersion: "2", Decimals: 6, Facilitator: tt.f, Now: fx.clock.now})
			if err != nil {
				t.Fatal(err)
			}
			_, err = m.Verify(context.Background(), fx.ch, fx.sign(t, fx.payer, fx.ch, nil, nil))
			var refusal *Error
			if errors.As(err, &refusal) {
				t.Fatalf("got refusal %v, want a fault", err)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestNewEVMChargeRefuses(t *testing.T) {
	f := x402.NewLocalFacilitator(time.Now)
	good := EVMChargeConfig{ChainID: 1, Currency: testAsset, Recipient: testPayTo, TokenName: "USDC", TokenVersion: "2", Facilitator: f}
	tests := []struct {
		name string
		edit func(*EVMChargeConfig)
	}{
		{"no chain", func(c *EVMChargeConfig) { c.ChainID = 0 }},
		{"bad currency", func(c *EVMChargeConfig) { c.Currency = "usdc" }},
		{"bad checksum", func(c *EVMChargeConfig) { c.Recipient = "0x209693bc6afc0C5328bA36FaF03C514EF312287C" }},
		{"no token name", func(c *EVMChargeConfig) { c.TokenName = "" }},
		{"no facilitator", func(c *EVMChargeConfig) { c.Facilitator = nil }},
		{"timeout too long", func(c *EVMChargeConfig) { c.MaxTimeoutSeconds = 100000 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			if _, err := NewEVMCharge(cfg); err == nil {
				t.Error("got no error")
			}
		})
	}
	m, err := NewEVMCharge(good)
	if err != nil {
		t.Fatal(err)
	}
	for _, amount := range []string{"", "0", "01", "-1", "1.5"} {
		if _, err := m.Request(amount, "", ""); err == nil {
			t.Errorf("Request(%q): got no error", amount)
		}
	}
}

// TestChallengeHash pins the nonce derivation: keccak256 of id then realm.
// The want value is keccak256("abcapi.example.com"), computed by mppx's
// Types.challengeHash({id: "abc", realm: "api.example.com"}).
func TestChallengeHash(t *testing.T) {
	if got, want := ChallengeHash("abc", "api.example.com"), mppxChallengeHash; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

const mppxChallengeHash = "0xe1adfd8f031bdf83646eee741bda35015ff27366153d3ec246a28e6d3960b516"
