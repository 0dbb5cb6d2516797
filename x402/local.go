package x402

import (
	"context"
	"encoding/hex"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"time"
)

// LocalFacilitator is an in-memory facilitator for the EVM exact scheme:
// it verifies the EIP-712 signature for real, keeps token balances per
// (asset, address), refuses a nonce already used by the same payer on the
// same token, and moves the balance at most once per nonce. Transactions are
// fake hashes. It is for tests, demos and the e2e suite; nothing reaches a
// chain. Safe for concurrent use.
type LocalFacilitator struct {
	now      func() time.Time
	networks []string

	mu       sync.Mutex
	balances map[holding]*big.Int
	settled  map[nonceKey]settlement
}

type holding struct{ asset, address string } // lower case

type nonceKey struct{ asset, from, nonce string } // lower case

// settlement remembers a settled nonce: the signature that spent it and the answer.
type settlement struct {
	signature string
	resp      SettleResponse
}

var _ Facilitator = (*LocalFacilitator)(nil)

// NewLocalFacilitator returns a facilitator for the given CAIP-2 networks,
// reading time from now.
func NewLocalFacilitator(now func() time.Time, networks ...string) *LocalFacilitator {
	return &LocalFacilitator{
		now:      now,
		networks: append([]string(nil), networks...),
		balances: map[holding]*big.Int{},
		settled:  map[nonceKey]settlement{},
	}
}

// Mint adds amount (atomic units) to address's balance of asset.
func (f *LocalFacilitator) Mint(asset, address string, amount *big.Int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := holding{strings.ToLower(asset), strings.ToLower(address)}
	b := f.balances[k]
	if b == nil {
		b = new(big.Int)
		f.balances[k] = b
	}
	b.Add(b, amount)
}

// Balance returns address's balance of asset.
func (f *LocalFacilitator) Balance(asset, address string) *big.Int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.balances[holding{strings.ToLower(asset), strings.ToLower(address)}]; b != nil {
		return new(big.Int).Set(b)
	}
	return new(big.Int)
}

// Settlements returns how many nonces have been settled.
func (f *LocalFacilitator) Settlements() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.settled)
}

// Supported lists exact on each configured network, for v2 and v1.
func (f *LocalFacilitator) Supported(context.Context) (SupportedResponse, error) {
	out := SupportedResponse{Extensions: []string{}, Signers: map[string][]string{}}
	for _, n := range f.networks {
		out.Kinds = append(out.Kinds, SupportedKind{X402Version: Version, Scheme: SchemeExact, Network: n})
	}
	return out, nil
}

// Verify checks p against req without moving anything.
func (f *LocalFacilitator) Verify(_ context.Context, p PaymentPayload, req PaymentRequirements) (VerifyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	payer, err := f.check(p, req)
	if err != nil {
		return VerifyResponse{InvalidReason: reasonOf(err), Payer: payer}, nil
	}
	return VerifyResponse{IsValid: true, Payer: payer}, nil
}

// Settle re-verifies p and moves the value from payer to payTo. The same
// authorization settled again returns the first result; another
// authorization reusing the nonce is refused.
func (f *LocalFacilitator) Settle(_ context.Context, p PaymentPayload, req PaymentRequirements) (SettleResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := p.Payload.Authorization
	key := nonceKey{strings.ToLower(req.Asset), strings.ToLower(a.From), strings.ToLower(a.Nonce)}
	if s, ok := f.settled[key]; ok && strings.EqualFold(s.signature, p.Payload.Signature) {
		return s.resp, nil
	}
	payer, err := f.check(p, req)
	if err != nil {
		return SettleResponse{ErrorReason: reasonOf(err), Payer: payer, Network: req.Network}, nil
	}
	value, _ := parseUint256(a.Value)
	from := f.balances[holding{key.asset, key.from}]
	from.Sub(from, value)
	to := holding{key.asset, strings.ToLower(a.To)}
	if f.balances[to] == nil {
		f.balances[to] = new(big.Int)
	}
	f.balances[to].Add(f.balances[to], value)
	chain, _ := chainIDOf(req.Network, false)
	tx := keccak256([]byte("tollgate-local-settlement"), []byte(strconv.FormatUint(chain, 10)), []byte(key.asset), []byte(key.from), []byte(key.nonce))
	resp := SettleResponse{Success: true, Payer: payer, Transaction: "0x" + hex.EncodeToString(tx[:]), Network: req.Network, Amount: a.Value}
	f.settled[key] = settlement{signature: p.Payload.Signature, resp: resp}
	return resp, nil
}

// check runs every verification step; f.mu is held.
func (f *LocalFacilitator) check(p PaymentPayload, req PaymentRequirements) (payer string, err error) {
	if err := ValidateRequirements(req, "paymentRequirements."); err != nil {
		return "", err
	}
	supported := false
	for _, n := range f.networks {
		supported = supported || n == req.Network
	}
	if !supported {
		return "", &Error{Reason: ReasonInvalidNetwork, Field: "paymentRequirements.network", Detail: "not supported by this facilitator"}
	}
	if _, err := Match([]PaymentRequirements{req}, p, f.now()); err != nil {
		return "", err
	}
	payer, err = VerifySignature(req, p)
	if err != nil {
		return "", err
	}
	a := p.Payload.Authorization
	if _, used := f.settled[nonceKey{strings.ToLower(req.Asset), strings.ToLower(a.From), strings.ToLower(a.Nonce)}]; used {
		return payer, &Error{Reason: ReasonNonceUsed, Field: "payload.authorization.nonce", Detail: "already used"}
	}
	value, _ := parseUint256(a.Value)
	if b := f.balances[holding{strings.ToLower(req.Asset), strings.ToLower(a.From)}]; b == nil || b.Cmp(value) < 0 {
		return payer, &Error{Reason: ReasonInsufficientFunds, Field: "payload.authorization.value", Detail: "balance too low"}
	}
	return payer, nil
}

// reasonOf is the wire reason of an error from check.
func reasonOf(err error) string {
	if e, ok := err.(*Error); ok {
		return string(e.Reason)
	}
	return string(ReasonUnexpectedVerify)
}
