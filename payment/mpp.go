package payment

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-authz/tollgate/mpp"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

// MPP turns on the `Payment` HTTP authentication scheme
// (draft-ryan-httpauth-payment, "MPP") beside x402: a priced route's 402
// also carries `WWW-Authenticate: Payment …` for the evm charge method
// (an EIP-3009 authorization of the same asset, payee and price as the
// x402 offer), and a request with `Authorization: Payment <credential>` is
// admitted, claimed and settled as an x402 payment is.
type MPP struct {
	// Key binds challenges (HMAC-SHA256); at least mpp.MinKeyBytes.
	Key []byte
	// Realm is the challenges' protection space.
	Realm string
	// TTL is how long a challenge may be paid (default 5 minutes).
	TTL time.Duration
}

// DefaultMPPTTL is MPP.TTL when zero.
const DefaultMPPTTL = 5 * time.Minute

// mppGate is the Payment scheme's side of a Gate.
type mppGate struct {
	ch   *mpp.Challenger
	evm  *mpp.EVMCharge
	reqs sync.Map // atomic amount -> mpp.EncodedRequest, built once per price
}

// mppIDPrefix marks a paystore record paid with the Payment scheme: its
// PaymentID is this and the challenge id. Every x402 payment id starts
// "x402/" ("x402/route/payer/id"), so the two never meet; and a second
// credential for the same challenge is refused by the store (the draft's
// "Replay Protection": a challenge is consumed once).
const mppIDPrefix = "mpp:"

func newMPP(o Options) (*mppGate, error) {
	c := *o.MPP
	if c.TTL == 0 {
		c.TTL = DefaultMPPTTL
	}
	if err := mpp.ValidateConfig(c.Key, c.Realm, c.TTL); err != nil {
		return nil, err
	}
	chain, ok := strings.CutPrefix(o.Network, "eip155:")
	id, err := strconv.ParseUint(chain, 10, 64)
	if !ok || err != nil {
		return nil, errors.New("the evm method needs an eip155:<chain id> network")
	}
	evm, err := mpp.NewEVMCharge(mpp.EVMChargeConfig{
		ChainID: id, Currency: o.Asset, Recipient: o.PayTo, TokenName: o.AssetName, TokenVersion: o.AssetVersion,
		Decimals: o.Decimals, Facilitator: o.Facilitator, Now: o.Now,
		// An authorization may stay open as long as its challenge.
		MaxTimeoutSeconds: int64((c.TTL + time.Second - 1) / time.Second),
	})
	if err != nil {
		return nil, err
	}
	return &mppGate{ch: mpp.NewChallenger(c.Key, c.Realm, c.TTL, o.Now), evm: evm}, nil
}

// request is the evm charge request for amount (atomic units), built once.
func (m *mppGate) request(amount string) (mpp.EncodedRequest, error) {
	if v, ok := m.reqs.Load(amount); ok {
		return v.(mpp.EncodedRequest), nil
	}
	r, err := m.evm.Request(amount, "", "")
	if err != nil {
		return "", err
	}
	m.reqs.Store(amount, r)
	return r, nil
}

// MPP reports whether the Payment scheme is on.
func (g *Gate) MPP() bool { return g.mpp != nil }

// MPPChallenge is the `WWW-Authenticate: Payment` value for w's per-call
// price (method evm, intent charge), or "" when the scheme is off or the
// route has no price. Top-ups are offered through x402 only. It goes on the
// same 402 as Challenge's PAYMENT-REQUIRED, as another WWW-Authenticate
// value beside any Bearer challenge.
func (g *Gate) MPPChallenge(w Want) string {
	if g.mpp == nil || w.Route == nil {
		return ""
	}
	amt := g.amountOf(w.Route.Price)
	if amt == "" {
		return ""
	}
	req, err := g.mpp.request(amt)
	if err != nil {
		return ""
	}
	h, _, err := g.mpp.ch.Challenge(mpp.MethodEVM, mpp.IntentCharge, req)
	if err != nil {
		return ""
	}
	return h
}

// fromMPP turns a credential's refusal into a Refusal; anything else is a
// fault of ours.
func fromMPP(err error) error {
	var e *mpp.Error
	if errors.As(err, &e) {
		// mpp errors name the field and a fixed reason, never the input.
		return &Refusal{Reason: string(e.Code), Detail: "The Payment credential was refused: " + e.Error() + "."}
	}
	return unavailable("the Payment credential", err)
}

// admitMPP admits a per-call payment made with the Payment scheme: the
// credential is parsed strictly, its challenge must be ours, unexpired and
// for this route's price now (CheckOffer), its EIP-3009 authorization is
// checked (payee, amount, nonce bound to the challenge, time window,
// signature), then claimed in the store exactly like an x402 payment (the
// same key: asset, payer, nonce) before the facilitator's verify. Settle
// then settles it after the upstream, and answers with a Payment-Receipt.
func (g *Gate) admitMPP(ctx context.Context, q Request) (Admission, error) {
	m := g.mpp
	if m == nil {
		return Admission{}, refuse(string(mpp.CodeMethodUnsupported), "This server does not take the Payment scheme: pay with x402 (PAYMENT-SIGNATURE).")
	}
	cred, err := mpp.ParseCredential(q.Header)
	if err != nil {
		return Admission{}, fromMPP(err)
	}
	amt := g.amountOf(q.Route.Price)
	if amt == "" {
		return Admission{}, refuse(string(x402.ReasonNoMatchingOffer), "This route is not paid per call: the Payment scheme buys single calls only.")
	}
	req, err := m.request(amt)
	if err != nil {
		return Admission{}, unavailable("the route's offer", err)
	}
	if err := m.ch.CheckOffer(cred, mpp.MethodEVM, mpp.IntentCharge, req); err != nil {
		return Admission{}, fromMPP(err)
	}
	a, err := m.evm.Inspect(cred.Challenge, cred.Payload)
	if err != nil {
		return Admission{}, fromMPP(err)
	}
	p, xreq := a.X402()
	// Stored in x402's form, so Settle, Requirements and the reconciler
	// read it as they read any payment.
	payload, err := x402.EncodeHeader(p)
	if err != nil {
		return Admission{}, unavailable("the payment record", err)
	}
	au := p.Payload.Authorization
	if err := g.validLongEnough(au.ValidBefore, g.o.Now()); err != nil {
		return Admission{}, err
	}
	rec := paystore.Record{
		Key: paystore.KeyOf(xreq.Asset, au.From, au.Nonce), PaymentID: mppIDPrefix + cred.Challenge.ID,
		State: paystore.Pending, Route: q.Route.Name, Payload: payload, Expires: expiry(au.ValidBefore, g.o.Now()),
	}
	if q.Entitlement != nil {
		rec.Subject = q.Entitlement.Subject
	}
	_, claimed, err := g.o.Store.Claim(ctx, rec)
	if err != nil {
		return Admission{}, unavailable("the payment store", err)
	}
	if !claimed {
		return Admission{}, refuse(string(mpp.CodeInvalidChallenge), "This challenge or authorization was used already: pay a new challenge.")
	}
	vr, err := g.o.Facilitator.Verify(ctx, p, xreq)
	if err != nil {
		g.release(rec.Key)
		return Admission{}, unavailable("the facilitator's verify", err)
	}
	if !vr.IsValid {
		g.release(rec.Key)
		return Admission{}, fromMPP(mpp.FacilitatorRefusal(vr.InvalidReason))
	}
	return Admission{Kind: PerCall, Key: rec.Key, Payer: a.Payer, Amount: amt}, nil
}

// mppChallengeID is the challenge a record paid with the Payment scheme
// answered; ok is false for an x402 payment.
func mppChallengeID(rec paystore.Record) (id string, ok bool) {
	return strings.CutPrefix(rec.PaymentID, mppIDPrefix)
}

// mppRequirements is Requirements for a record paid with the Payment
// scheme: the evm method's requirements for the amount it was admitted at
// (the ones its payload's accepted member holds).
func (g *Gate) mppRequirements(p x402.PaymentPayload) (x402.PaymentPayload, x402.PaymentRequirements, error) {
	if g.mpp == nil {
		return p, x402.PaymentRequirements{}, refuse(string(x402.ReasonNoMatchingOffer), "The Payment scheme is no longer on here.")
	}
	// At the amount admitted, as Requirements does for x402.
	return p, g.mpp.evm.Requirements(p.Payload.Authorization.Value), nil
}

// receiptOf is the receipt a settled payment's response carries: a
// Payment-Receipt (mpp) for the Payment scheme, else PAYMENT-RESPONSE.
func (g *Gate) receiptOf(rec paystore.Record, sr x402.SettleResponse) (string, error) {
	if id, ok := mppChallengeID(rec); ok && g.mpp != nil {
		return mpp.EncodeReceipt(g.mpp.evm.Receipt(sr.Transaction, id))
	}
	return x402.EncodePaymentResponse(sr)
}
