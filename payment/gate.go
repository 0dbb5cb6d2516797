// Package payment makes tollgate's 402 payable by machines: it builds the
// x402 offers a refusal carries, admits a request that pays one (decode,
// match, signature, replay and idempotency checks, the facilitator's
// verify), settles a pay-per-call payment once the upstream has answered,
// and turns a paid top-up into credits.
//
// The decision server (authz) calls Challenge on a refusal and Admit on a
// request with PAYMENT-SIGNATURE or X-PAYMENT (or, with MPP on, with
// `Authorization: Payment`: see mpp.go); the ext_proc server (settle)
// calls Settle on the response's headers and Abandon when a stream ends
// without them. State shared by replicas (which payments were claimed,
// settled, or are in doubt) lives in a paystore.Store.
package payment

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

// TopUp is a bundle of credits sold for a price.
type TopUp struct {
	Credits int64
	Price   string // decimal, in the asset
}

// Options configure a Gate.
type Options struct {
	// Network (CAIP-2), Asset (the token contract), PayTo (who is paid),
	// and the token's EIP-712 domain (AssetName, AssetVersion).
	Network, Asset, PayTo   string
	AssetName, AssetVersion string
	// Decimals of the asset (6 for USDC); Currency is its name for people.
	Decimals int
	Currency string
	// MaxTimeoutSeconds is how long an authorization may stay open.
	MaxTimeoutSeconds int64
	// MinValidity is how long an authorization must stay valid after it
	// arrives (default 20s): it is settled only after the upstream
	// answered, and one that expires meanwhile would have the work done
	// unpaid. Set it above the settle timeout plus the upstream's time.
	MinValidity time.Duration
	TopUps      []TopUp
	Facilitator x402.Facilitator
	Store       paystore.Store
	// Credit adds credits bought by a top-up to the subject's balance.
	Credit func(ctx context.Context, e *entitlement.Entitlement, credits int64, now time.Time) error
	// Lookup finds a subject's entitlement, to credit a top-up that the
	// reconciler found settled after the Check that paid it (Reconciled);
	// nil: such a top-up is logged and counted as not credited.
	Lookup func(ctx context.Context, subject string) (*entitlement.Entitlement, error)
	// Record sends a payment's event to billing (the usage outbox); nil: none.
	Record func(ctx context.Context, ev usage.Event) error
	// Observe is told each stage's outcome, for metrics: stage is
	// "challenge", "admit", "settle" or "topup".
	Observe func(stage, outcome string)
	Now     func() time.Time
	Log     *slog.Logger
	// MPP, when set, takes the Payment HTTP auth scheme too (mpp.go).
	MPP *MPP
}

// Gate is the payment side of the decision server. It is safe for
// concurrent use.
type Gate struct {
	o      Options
	base   x402.PaymentRequirements
	topUps []topUpOffer
	prices sync.Map // decimal price -> atomic amount (string)
	mpp    *mppGate // nil: x402 only
}

type topUpOffer struct {
	TopUp
	amount string
}

// Kinds of admission.
const (
	PerCall   = "per_call"
	TopUpKind = "top_up"
)

// New checks o and returns a Gate.
func New(o Options) (*Gate, error) {
	if o.Facilitator == nil || o.Store == nil {
		return nil, errors.New("payment: a facilitator and a store are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Observe == nil {
		o.Observe = func(string, string) {}
	}
	if o.MaxTimeoutSeconds <= 0 {
		o.MaxTimeoutSeconds = 60
	}
	if o.MinValidity <= 0 {
		o.MinValidity = 20 * time.Second
	}
	g := &Gate{o: o, base: x402.PaymentRequirements{
		Scheme: x402.SchemeExact, Network: o.Network, Asset: o.Asset, PayTo: o.PayTo,
		MaxTimeoutSeconds: o.MaxTimeoutSeconds,
		Extra:             x402.Extra{Name: o.AssetName, Version: o.AssetVersion},
	}}
	probe := g.base
	probe.Amount = "1"
	if err := x402.ValidateRequirements(probe, ""); err != nil {
		return nil, fmt.Errorf("payment: %w", err)
	}
	for _, t := range o.TopUps {
		amt, err := x402.AtomicAmount(t.Price, o.Decimals)
		if err != nil {
			return nil, fmt.Errorf("payment: top-up of %d credits: price %q %v", t.Credits, t.Price, err)
		}
		if t.Credits <= 0 {
			return nil, fmt.Errorf("payment: a top-up must buy at least one credit")
		}
		g.topUps = append(g.topUps, topUpOffer{t, amt})
	}
	if o.MPP != nil {
		m, err := newMPP(o)
		if err != nil {
			return nil, fmt.Errorf("payment: mpp: %w", err)
		}
		g.mpp = m
	}
	return g, nil
}

// amountOf is the atomic amount of a route's decimal price ("" for none).
func (g *Gate) amountOf(price string) string {
	if price == "" {
		return ""
	}
	if v, ok := g.prices.Load(price); ok {
		return v.(string)
	}
	amt, err := x402.AtomicAmount(price, g.o.Decimals)
	if err != nil {
		// Config checks every price at load; a bad one offers nothing.
		amt = ""
	}
	g.prices.Store(price, amt)
	return amt
}

func (g *Gate) offer(amount string) x402.PaymentRequirements {
	r := g.base
	r.Amount = amount
	return r
}

// Payable reports whether a request on route could pay anything here.
func (g *Gate) Payable(route *policy.Route) bool {
	return route != nil && (route.Price != "" || len(g.topUps) > 0)
}

// offers lists what a request on route may pay for: the route's price, and
// the top-ups when a subject is known (credits need someone to hold them)
// and, with lack > 0, only those that cover it.
func (g *Gate) offers(route *policy.Route, subject bool, lack int64) ([]x402.PaymentRequirements, []Offer) {
	var reqs []x402.PaymentRequirements
	var offers []Offer
	perCall := g.amountOf(route.Price)
	if perCall != "" {
		reqs = append(reqs, g.offer(perCall))
		offers = append(offers, Offer{Kind: PerCall, Price: route.Price, Currency: g.o.Currency, Amount: perCall})
	}
	if subject {
		for _, t := range g.topUps {
			if t.amount == perCall || lack > 0 && t.Credits < lack {
				continue // one payment must buy one thing
			}
			reqs = append(reqs, g.offer(t.amount))
			offers = append(offers, Offer{Kind: TopUpKind, Credits: t.Credits, Price: t.Price, Currency: g.o.Currency, Amount: t.amount})
		}
	}
	return reqs, offers
}

// Offer is one thing a payment buys, as the problem body lists it.
type Offer struct {
	Kind     string `json:"kind"`
	Credits  int64  `json:"credits,omitempty"`
	Price    string `json:"price"`
	Currency string `json:"currency,omitempty"`
	Amount   string `json:"amount"` // atomic units, as in the x402 offer
}

// Want is what a refusal asks to be paid for.
type Want struct {
	Route *policy.Route
	// URL is the resource (scheme, host and path); Description what it is.
	URL, Description string
	// Subject is known (credentials resolved), so top-ups can be offered.
	Subject bool
	// Lack is how many credits the request is short; 0 when not a credits refusal.
	Lack int64
	// Credits: the refusal is for credits (top-ups apply); otherwise only
	// the route's price is offered.
	Credits bool
	// Error is the x402 "error" text: why payment is asked.
	Error string
}

// Challenge is the x402 challenge for w: the PAYMENT-REQUIRED header value
// and the same offer as JSON for the problem body (members "x402" and
// "offers"). ok is false when nothing can be bought.
func (g *Gate) Challenge(w Want) (header string, x402JSON, offersJSON []byte, ok bool) {
	reqs, offers := g.offersFor(w)
	if len(reqs) == 0 {
		return "", nil, nil, false
	}
	pr := x402.PaymentRequired{
		X402Version: x402.Version, Error: w.Error,
		Resource: x402.Resource{URL: w.URL, Description: w.Description, MimeType: "application/json"},
		Accepts:  reqs, Extensions: paymentIdentifierDecl,
	}
	b, err := json.Marshal(pr)
	if err != nil {
		return "", nil, nil, false
	}
	ob, err := json.Marshal(offers)
	if err != nil {
		return "", nil, nil, false
	}
	g.o.Observe("challenge", "offered")
	return base64.StdEncoding.EncodeToString(b), b, ob, true
}

func (g *Gate) offersFor(w Want) ([]x402.PaymentRequirements, []Offer) {
	if w.Route == nil {
		return nil, nil
	}
	if !w.Credits {
		amt := g.amountOf(w.Route.Price)
		if amt == "" {
			return nil, nil
		}
		return []x402.PaymentRequirements{g.offer(amt)}, []Offer{{Kind: PerCall, Price: w.Route.Price, Currency: g.o.Currency, Amount: amt}}
	}
	return g.offers(w.Route, w.Subject, w.Lack)
}

// paymentIdentifierDecl advertises the payment-identifier extension: a
// client that sends an id gets the first result again on a retry.
var paymentIdentifierDecl = map[string]json.RawMessage{
	"payment-identifier": json.RawMessage(`{"info":{"required":false},"schema":{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"required":{"type":"boolean"},"id":{"type":"string","minLength":16,"maxLength":128}},"required":["required"]}}`),
}

// Request is a request that carries a payment.
type Request struct {
	Route *policy.Route
	// Header is the PAYMENT-SIGNATURE value, or X-PAYMENT's when V1.
	Header string
	V1     bool
	// Entitlement is the caller's record when credentials came and
	// resolved; nil for an anonymous payer.
	Entitlement *entitlement.Entitlement
	// Method and Path (with its query) bind a payment-identifier to the
	// request: a retry is the same request again.
	Method, Path string
	// MPP: Header is an `Authorization: Payment` value (see admitMPP).
	MPP bool
}

// Admission is a payment admitted at the door.
type Admission struct {
	Kind  string // PerCall or TopUpKind
	Key   string // the paystore key, for Settle
	Payer string
	// Amount is what was paid, in atomic units.
	Amount string
	// Credits bought (a top-up, already credited).
	Credits int64
	// Receipt is the PAYMENT-RESPONSE value when the payment is settled
	// already: a top-up, or a retry of a settled payment-identifier.
	Receipt string
	// Retry: a payment-identifier retry of a settled payment; nothing new
	// is charged and nothing is to be settled.
	Retry bool
}

// Refusal is a payment refused for what it is: Code says which of
// payment_invalid or payment_conflict.
type Refusal struct {
	Conflict bool
	Reason   string // an x402 error code
	Detail   string // one sentence for the client
}

func (r *Refusal) Error() string { return r.Reason + ": " + r.Detail }

// ErrUnavailable wraps what kept a payment from being checked or settled
// now: the facilitator or the store down or slow.
var ErrUnavailable = errors.New("payment could not be checked right now")

func unavailable(detail string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, detail, err)
}

func refuse(reason, detail string) error { return &Refusal{Reason: reason, Detail: detail} }

// fromX402 turns a decoding or matching error into a refusal.
func fromX402(err error) error {
	var xe *x402.Error
	if errors.As(err, &xe) {
		return &Refusal{Reason: string(xe.Reason), Detail: "The payment was refused: " + xe.Error() + "."}
	}
	return &Refusal{Reason: string(x402.ReasonInvalidPayload), Detail: "The payment could not be read."}
}

// Admit checks a request's payment and, when it is good, reserves it: a
// pay-per-call payment is then settled by Settle once the upstream has
// answered; a top-up is settled here and credited at once.
func (g *Gate) Admit(ctx context.Context, q Request) (Admission, error) {
	var adm Admission
	var err error
	if q.MPP {
		adm, err = g.admitMPP(ctx, q)
	} else {
		adm, err = g.admit(ctx, q)
	}
	switch {
	case err == nil && adm.Retry:
		g.o.Observe("admit", "retry")
	case err == nil:
		g.o.Observe("admit", "admitted")
	case errors.Is(err, ErrUnavailable):
		g.o.Observe("admit", "unavailable")
	default:
		g.o.Observe("admit", "refused")
	}
	return adm, err
}

func (g *Gate) admit(ctx context.Context, q Request) (Admission, error) {
	var p x402.PaymentPayload
	var err error
	if q.V1 {
		p, err = x402.DecodeXPayment(q.Header)
	} else {
		p, err = x402.DecodePaymentSignature(q.Header)
	}
	if err != nil {
		return Admission{}, fromX402(err)
	}
	now := g.o.Now()
	reqs, _ := g.offers(q.Route, q.Entitlement != nil, 0)
	if len(reqs) == 0 {
		if g.amountOf(q.Route.Price) == "" && len(g.topUps) > 0 {
			return Admission{}, refuse(string(x402.ReasonNoMatchingOffer), "A top-up needs credentials: send them with the payment.")
		}
		return Admission{}, refuse(string(x402.ReasonNoMatchingOffer), "Nothing on this route can be bought.")
	}
	req, err := x402.Match(reqs, p, now)
	if err != nil {
		return Admission{}, fromX402(err)
	}
	if err := g.validLongEnough(p.Payload.Authorization.ValidBefore, now); err != nil {
		return Admission{}, err
	}
	// A forged or mismatched signature costs no facilitator round trip.
	payer, err := x402.VerifySignature(req, p)
	if err != nil {
		return Admission{}, fromX402(err)
	}
	a := p.Payload.Authorization
	kind := PerCall
	var credits int64
	if req.Amount != g.amountOf(q.Route.Price) {
		kind = TopUpKind
		for _, t := range g.topUps {
			if t.amount == req.Amount {
				credits = t.Credits
				break
			}
		}
	}
	id, err := paymentID(p)
	if err != nil {
		return Admission{}, err
	}
	rec := paystore.Record{
		Key:   paystore.KeyOf(req.Asset, a.From, a.Nonce),
		State: paystore.Pending, Route: q.Route.Name,
		Payload: strings.Clone(q.Header), Expires: expiry(a.ValidBefore, now),
	}
	if q.Entitlement != nil {
		rec.Subject = q.Entitlement.Subject
	}
	if id != "" {
		// Scoped by route and payer (an id is one client's idempotency
		// key: another payer's same id is another payment, never this
		// one's retry), bound to what the payment buys (x402's
		// payment-identifier "request binding"). The "x402/" start keeps
		// it apart from an MPP id ("mpp:…") whatever a route is named.
		rec.PaymentID = "x402/" + q.Route.Name + "/" + strings.ToLower(a.From) + "/" + id
		rec.Digest = fingerprint(req, q.Method, q.Path, rec.Subject)
	}
	adm := Admission{Kind: kind, Key: rec.Key, Payer: payer, Amount: req.Amount, Credits: credits}
	old, claimed, err := g.o.Store.Claim(ctx, rec)
	if err != nil {
		return Admission{}, unavailable("the payment store", err)
	}
	if !claimed {
		return g.again(rec, old, adm)
	}
	vr, err := g.o.Facilitator.Verify(ctx, p, req)
	if err != nil {
		g.release(rec.Key)
		return Admission{}, unavailable("the facilitator's verify", err)
	}
	if !vr.IsValid {
		g.release(rec.Key)
		reason := vr.InvalidReason
		if reason == "" {
			reason = "invalid_payment"
		}
		return Admission{}, refuse(reason, "The facilitator refused the payment ("+reason+").")
	}
	if kind == PerCall {
		return adm, nil
	}
	return g.topUp(ctx, q, p, req, rec, adm)
}

// again answers a payment whose key or payment id was seen before.
func (g *Gate) again(rec, old paystore.Record, adm Admission) (Admission, error) {
	if rec.PaymentID == "" || old.PaymentID != rec.PaymentID {
		return Admission{}, refuse(string(x402.ReasonNonceUsed), "This payment authorization was used already: sign a new one.")
	}
	if old.Digest != rec.Digest {
		return Admission{}, &Refusal{Conflict: true, Reason: "payment_identifier_conflict",
			Detail: "This payment id was used for a different payment: use a new id for a new purchase."}
	}
	switch old.State {
	case paystore.Settled:
		adm.Key, adm.Receipt, adm.Retry = old.Key, old.Receipt, true
		return adm, nil
	case paystore.Failed:
		return Admission{}, refuse(orDefault(old.Reason, "settle_failed"), "The first request with this payment id was not paid ("+orDefault(old.Reason, "settlement failed")+").")
	}
	return Admission{}, unavailable("the first request with this payment id", errors.New("is still in progress"))
}

// topUp settles a top-up now and credits it: the request it came with is
// then decided against the new balance.
func (g *Gate) topUp(ctx context.Context, q Request, p x402.PaymentPayload, req x402.PaymentRequirements, rec paystore.Record, adm Admission) (Admission, error) {
	if err := g.mark(ctx, rec.Key); err != nil {
		g.release(rec.Key) // nothing was sent: the authorization is unspent
		return Admission{}, err
	}
	sr, err := g.o.Facilitator.Settle(ctx, p, req)
	if err != nil {
		// Sent, perhaps executed: the reconciler finds out, and credits it
		// (Reconciled), never a blind retry.
		if first, ok := g.finish(rec.Key, paystore.Unknown, "", err.Error()); ok {
			return g.toppedUpElsewhere(adm, first), nil
		}
		g.o.Observe("settle", "unknown")
		return Admission{}, unavailable("the facilitator's settle", err)
	}
	if !sr.Success {
		// "Nonce already used" because the reconciler settled it while
		// this settle waited: the record says so.
		if first, ok := g.finish(rec.Key, paystore.Failed, "", sr.ErrorReason); ok {
			return g.toppedUpElsewhere(adm, first), nil
		}
		g.o.Observe("settle", "failed")
		return Admission{}, refuse(orDefault(sr.ErrorReason, "settle_failed"), "The payment could not be settled ("+orDefault(sr.ErrorReason, "refused")+").")
	}
	receipt, err := x402.EncodePaymentResponse(sr)
	if err != nil {
		return Admission{}, unavailable("the receipt", err)
	}
	first, err := g.finishErr(rec.Key, paystore.Settled, receipt, "")
	switch {
	case err != nil:
		// Settled but not recorded: the mark leaves it Unknown, and the
		// reconciler credits it once it finds it settled. Crediting here
		// too could credit it twice.
		g.o.Log.Error("x402 top-up settled but not recorded; the reconciler credits it", "subject", q.Entitlement.Subject, "credits", adm.Credits, "transaction", sr.Transaction, "error", err)
		g.o.Observe("settle", "unknown")
		return Admission{}, unavailable("the payment store", err)
	case first.State == paystore.Settled:
		return g.toppedUpElsewhere(adm, first), nil
	}
	g.o.Observe("settle", "settled")
	adm.Receipt = receipt
	// The money has moved: the credit and its event must not depend on the
	// Check's context, which a client that goes away cancels.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterSettleTimeout)
	defer cancel()
	if err := g.o.Credit(ctx, q.Entitlement, adm.Credits, g.o.Now()); err != nil {
		// Paid but not credited: billing still hears of it below, and the
		// operator from the log and metrics.
		g.o.Observe("topup", "credit_failed")
		g.o.Log.Error("x402 top-up settled but not credited", "subject", q.Entitlement.Subject, "credits", adm.Credits, "transaction", sr.Transaction, "error", err)
	} else {
		g.o.Observe("topup", "credited")
	}
	g.record(ctx, rec, q.Entitlement, "x402_top_up", adm.Credits, 200)
	return adm, nil
}

// afterSettleTimeout bounds what follows a settlement that moved the money
// (a top-up's credit, the billing event), detached from the caller's
// context.
const afterSettleTimeout = 5 * time.Second

// toppedUpElsewhere answers a top-up whose settlement someone else (the
// reconciler) recorded while this Check waited for its own settle: that
// one credited it (Reconciled); the Check is decided against the balance.
func (g *Gate) toppedUpElsewhere(adm Admission, first paystore.Record) Admission {
	adm.Receipt = first.Receipt
	return adm
}

// Reconciled gives what a payment bought, for a record the reconciler
// found settled (paystore.Reconciler.OnSettled): a top-up's credits, to
// the subject who paid, and its billing event. The Check that paid it had
// answered 503 payment_unavailable and credited nothing. The reconciler
// calls it once per record: only when its Finish turned the record
// Settled. A pay-per-call payment (its request was served) gets nothing.
func (g *Gate) Reconciled(ctx context.Context, rec paystore.Record, routes func(string) *policy.Route) {
	credits := g.topUpCredits(rec, routes)
	if credits == 0 || rec.Subject == "" {
		return
	}
	var e *entitlement.Entitlement
	err := errors.New("no Lookup to find the subject")
	if g.o.Lookup != nil {
		e, err = g.o.Lookup(ctx, rec.Subject)
		if err == nil && e == nil {
			err = entitlement.ErrNotFound
		}
	}
	if err == nil {
		err = g.o.Credit(ctx, e, credits, g.o.Now())
	}
	if err != nil {
		g.o.Observe("topup", "credit_failed")
		g.o.Log.Error("x402 top-up reconciled as settled but not credited", "subject", rec.Subject, "credits", credits, "error", err)
	} else {
		g.o.Observe("topup", "credited")
	}
	g.record(ctx, rec, e, "x402_top_up", credits, 200)
}

// topUpCredits is how many credits rec's payment bought, 0 when it was
// not a top-up: paid with the Payment scheme (per call only), or the
// route's own price (admit takes that as per call: a top-up of the same
// amount is never offered there).
func (g *Gate) topUpCredits(rec paystore.Record, routes func(string) *policy.Route) int64 {
	if _, ok := mppChallengeID(rec); ok {
		return 0
	}
	p, err := x402.DecodePaymentSignature(rec.Payload)
	if errors.Is(err, x402.ErrInvalidVersion) {
		p, err = x402.DecodeXPayment(rec.Payload)
	}
	if err != nil {
		return 0
	}
	value := p.Payload.Authorization.Value
	if r := routes(rec.Route); r != nil && g.amountOf(r.Price) == value {
		return 0
	}
	for _, t := range g.topUps {
		if t.amount == value {
			return t.Credits
		}
	}
	return 0
}

// Settle settles the pay-per-call payment under key after the upstream
// answered status: a failed upstream (not 2xx or 3xx) is not settled and
// the claim is released. It returns the receipt on success: the
// PAYMENT-RESPONSE value, or the Payment-Receipt value for a payment made
// with the Payment scheme (MPP; the caller knows which from how it admitted it).
// A refusal is a *Refusal; an outcome unknown is left to the reconciler
// and wraps ErrUnavailable.
func (g *Gate) Settle(ctx context.Context, key string, status int, routes func(string) *policy.Route) (string, error) {
	if status < 200 || status >= 400 {
		g.release(key)
		g.o.Observe("settle", "upstream_failed")
		return "", nil
	}
	rec, found, err := g.o.Store.Get(ctx, key)
	if err != nil {
		g.o.Observe("settle", "unknown")
		return "", unavailable("the payment store", err)
	}
	if !found {
		g.o.Observe("settle", "missing")
		return "", refuse("unknown_payment", "The payment is not known here (it expired or the store was emptied).")
	}
	switch rec.State {
	case paystore.Settled:
		return rec.Receipt, nil
	case paystore.Failed:
		return "", refuse(orDefault(rec.Reason, "settle_failed"), "The payment could not be settled.")
	case paystore.Unknown:
		return "", unavailable("the settlement", errors.New("outcome unknown, being reconciled"))
	}
	p, req, err := g.Requirements(rec, routes)
	if err != nil {
		g.finish(key, paystore.Failed, "", err.Error())
		return "", err
	}
	if err := g.mark(ctx, key); err != nil {
		g.o.Observe("settle", "unknown")
		return "", err
	}
	sr, err := g.o.Facilitator.Settle(ctx, p, req)
	if err != nil {
		if first, ok := g.finish(key, paystore.Unknown, "", err.Error()); ok {
			return first.Receipt, nil // the reconciler settled it meanwhile
		}
		g.o.Observe("settle", "unknown")
		g.o.Log.Warn("x402 settlement outcome unknown; it will be reconciled", "route", rec.Route, "error", err)
		return "", unavailable("the facilitator's settle", err)
	}
	if !sr.Success {
		// "Nonce already used" because a reconciler or another replica
		// settled it while this settle waited: that settlement is the
		// answer, not a 402.
		if first, ok := g.finish(key, paystore.Failed, "", sr.ErrorReason); ok {
			return first.Receipt, nil
		}
		g.o.Observe("settle", "failed")
		return "", refuse(orDefault(sr.ErrorReason, "settle_failed"), "The payment could not be settled ("+orDefault(sr.ErrorReason, "refused")+").")
	}
	receipt, err := g.receiptOf(rec, sr)
	if err != nil {
		return "", unavailable("the receipt", err)
	}
	if first, ok := g.finish(key, paystore.Settled, receipt, ""); ok {
		return first.Receipt, nil // recorded first by someone else: theirs stands
	}
	g.o.Observe("settle", "settled")
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterSettleTimeout)
	defer cancel()
	g.record(ctx, rec, nil, "x402_payment", 1, status)
	return receipt, nil
}

// mark writes, before a settle is sent, that it is about to be (the
// record turns Unknown, paystore.ReasonSettling): if this replica dies
// before recording the outcome, the reconciler finds the record once it is
// older than its MinAge, instead of a Pending record nobody reconciles.
// Nothing is sent when the mark cannot be written, or when the record is
// no longer Pending (changed since it was read).
func (g *Gate) mark(ctx context.Context, key string) error {
	before, err := g.o.Store.Finish(ctx, key, paystore.Unknown, "", paystore.ReasonSettling)
	if err != nil {
		return unavailable("the payment store", err)
	}
	if before.State != paystore.Pending {
		return unavailable("the payment", fmt.Errorf("is %v, not pending, before its settle", before.State))
	}
	return nil
}

// Abandon releases a claim whose request never got a response: nothing
// was served, so nothing is settled.
func (g *Gate) Abandon(key string) {
	g.release(key)
	g.o.Observe("settle", "abandoned")
}

// Requirements decodes a stored payment and the offer it paid. The
// reconciler uses it too. A record is only stored by Admit, after the
// payment matched an offer made then: it is settled at the amount it was
// admitted for, even if a reload changed the route's price since (the
// payer signed what we offered, and the upstream may have served it).
func (g *Gate) Requirements(rec paystore.Record, _ func(string) *policy.Route) (x402.PaymentPayload, x402.PaymentRequirements, error) {
	// Stored as sent: PAYMENT-SIGNATURE (version 2) or X-PAYMENT (1).
	p, err := x402.DecodePaymentSignature(rec.Payload)
	if errors.Is(err, x402.ErrInvalidVersion) {
		p, err = x402.DecodeXPayment(rec.Payload)
	}
	if err != nil {
		return p, x402.PaymentRequirements{}, fromX402(err)
	}
	if _, ok := mppChallengeID(rec); ok {
		return g.mppRequirements(p)
	}
	return p, g.offer(p.Payload.Authorization.Value), nil
}

func (g *Gate) release(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := g.o.Store.Release(ctx, key); err != nil {
		g.o.Log.Warn("x402: could not release a payment claim; it expires on its own", "error", err)
	}
}

// finish records a settle's outcome. settled is true when the record was
// Settled already (by the reconciler, or another replica: Settled is
// final), and first is then that record, whose receipt is the answer.
func (g *Gate) finish(key string, st paystore.State, receipt, reason string) (first paystore.Record, settled bool) {
	first, err := g.finishErr(key, st, receipt, reason)
	return first, err == nil && first.State == paystore.Settled
}

func (g *Gate) finishErr(key string, st paystore.State, receipt, reason string) (paystore.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	first, err := g.o.Store.Finish(ctx, key, st, receipt, reason)
	if err != nil {
		g.o.Log.Error("x402: could not record a payment's outcome", "state", st.String(), "error", err)
	}
	return first, err
}

// record sends the payment's event to billing.
func (g *Gate) record(ctx context.Context, rec paystore.Record, e *entitlement.Entitlement, meter string, units int64, status int) {
	if g.o.Record == nil {
		return
	}
	now := g.o.Now()
	ev := usage.Event{
		ID: usage.NewID(rec.Key, meter), Subject: rec.Subject, Customer: rec.Subject, Route: rec.Route, Meter: meter,
		Units: units, Reserved: units, Status: status, Start: now, End: now,
	}
	if e != nil && e.Customer != "" {
		ev.Customer = e.Customer
	}
	if ev.Subject == "" {
		ev.Subject, ev.Customer = "x402", "x402"
	}
	if err := g.o.Record(ctx, ev); err != nil {
		g.o.Log.Error("x402: the payment's billing event was not recorded", "meter", meter, "error", err)
	}
}

// expiry is when a claim may be forgotten: after the authorization can no
// longer be settled, with a day's margin for the reconciler.
func expiry(validBefore string, now time.Time) time.Time {
	n, err := strconv.ParseInt(validBefore, 10, 64)
	if err != nil || n <= 0 || n > now.Add(366*24*time.Hour).Unix() {
		return now.Add(time.Hour)
	}
	return time.Unix(n, 0).Add(RecordGrace)
}

// RecordGrace is how long a payment's record outlives its authorization:
// past validBefore nothing can settle it or replay it, so the record is
// kept only for the reconciler's last look and for payment-identifier
// retries, which are honoured that long and no longer. Short, so that
// claims of requests that never got a response (the client went away)
// cannot fill the store.
const RecordGrace = 5 * time.Minute

// validLongEnough refuses an authorization that would expire before the
// response it pays for is settled.
func (g *Gate) validLongEnough(validBefore string, now time.Time) error {
	n, err := strconv.ParseInt(validBefore, 10, 64)
	if err != nil || time.Unix(n, 0).Sub(now) < g.o.MinValidity {
		return refuse(string(x402.ReasonExpired), "The payment authorization expires too soon to be settled after the upstream answers: sign one valid for at least "+g.o.MinValidity.String()+".")
	}
	return nil
}

// paymentID is the payment-identifier extension's id, or "".
func paymentID(p x402.PaymentPayload) (string, error) {
	raw, ok := p.Extensions["payment-identifier"]
	if !ok {
		return "", nil
	}
	var ext struct {
		Info struct {
			ID string `json:"id"`
		} `json:"info"`
	}
	if err := json.Unmarshal(raw, &ext); err != nil {
		return "", refuse(string(x402.ReasonInvalidPayload), "The payment-identifier extension could not be read.")
	}
	id := ext.Info.ID
	if id == "" {
		return "", nil
	}
	if len(id) < 16 || len(id) > 128 {
		return "", refuse(string(x402.ReasonInvalidPayload), "A payment id must be 16 to 128 characters.")
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", refuse(string(x402.ReasonInvalidPayload), "A payment id may hold letters, digits, - and _ only.")
		}
	}
	return id, nil
}

// fingerprint binds a payment id to what it buys.
func fingerprint(req x402.PaymentRequirements, method, path, subject string) string {
	h := sha256.New()
	for _, s := range []string{req.Scheme, req.Network, strings.ToLower(req.Asset), req.Amount, strings.ToLower(req.PayTo), method, path, subject} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Currency is the asset's name for people, such as USDC.
func (g *Gate) Currency() string { return g.o.Currency }
