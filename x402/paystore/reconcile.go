package paystore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/x402"
)

// Outcomes of reconciling one Unknown record: the values Reconciler.Observe
// is called with, and metric labels.
const (
	// OutcomeSettled: the settle went through now (or the facilitator
	// answered the first attempt's result): Settled with its receipt.
	OutcomeSettled = "settled"
	// OutcomeAlreadySettled: refused because the nonce is already used,
	// i.e. by the earlier attempt: Settled, with a receipt that has a
	// transaction hash only if the facilitator gave one.
	OutcomeAlreadySettled = "already_settled"
	// OutcomeFailed: refused for a reason that the earlier attempt would
	// have met too (insufficient funds, a bad signature or payload): Failed.
	OutcomeFailed = "failed"
	// OutcomeUnknown: still no answer (timeout, transport error, the
	// facilitator's own "pending"): stays Unknown, Attempts+1.
	OutcomeUnknown = "unknown"
	// OutcomeAbandoned: it cannot be told any more whether the money
	// moved: Failed with a Reason starting ReasonUnreconciled. An operator
	// has to look at the chain.
	OutcomeAbandoned = "abandoned"
)

// ReasonUnreconciled starts the Reason of a record the Reconciler gave up on.
const ReasonUnreconciled = "unreconciled"

// Defaults of a Reconciler.
const (
	DefaultMaxAttempts = 10
	DefaultBatch       = 100
	// DefaultMinAge is MinAge when neither it nor SettleTimeout is set.
	DefaultMinAge = time.Minute
)

// Reconciler settles again the payments whose settlement outcome is
// unknown. This is not a blind retry: an EIP-3009 authorization's nonce can
// be used once on chain, so a second settle either performs the one
// transfer or is refused as already used (or, by a facilitator that
// remembers, answered with the first result).
//
// What each answer means (facilitator reasons as the x402 reference SDK
// and x402.LocalFacilitator send them):
//   - success: Settled with the receipt.
//   - invalid_exact_evm_nonce_already_used (or another reason naming a
//     nonce or authorization already used): Settled by the earlier attempt.
//   - insufficient funds, a bad signature, payload, network, scheme,
//     amount, recipient, or an authorization not yet valid: Failed. The
//     reference facilitator checks the nonce before the balance, so a
//     transfer already made shows as nonce used, not as insufficient funds.
//   - the authorization expired (…_valid_before): abandoned. Facilitators
//     check expiry before the nonce, so the refusal says nothing of the
//     earlier attempt, and no later settle can either.
//   - no answer (x402.ErrSettleOutcomeUnknown, a transport error),
//     settlement_pending, an unexpected error or a reason not known here:
//     stays Unknown; after MaxAttempts settle attempts in all, or once the
//     authorization's validBefore has passed, abandoned.
//
// Before each settle it writes the same mark a live settle does
// (ReasonSettling), which counts the attempt and moves LastAttempt; it
// takes a record only if nobody touched it since Unknowns listed it, and
// only once its LastAttempt is MinAge old: a live settle marks its record
// Unknown before sending, and must not be raced while it waits for its
// answer. A record whose live settle died with its replica is found once
// MinAge has passed.
//
// A Reconciler should run on one replica at a time per store: the mark
// narrows, but does not close, the window in which two of them settle
// one record (harmless for the money, by the nonce, and OnSettled is
// told once, by the Finish that recorded Settled; but twice the
// facilitator calls).
type Reconciler struct {
	Store       Store
	Facilitator x402.Facilitator
	// Requirements are the requirements tollgate offered for rec (by its
	// Route); false when there is no such offer any more.
	Requirements func(rec Record) (x402.PaymentRequirements, bool)
	Now          func() time.Time
	// Observe, when not nil, is told each record's outcome (Outcome*).
	Observe func(outcome string)
	// MaxAttempts bounds the settle attempts of a record, the first one
	// included; default DefaultMaxAttempts.
	MaxAttempts int
	// Batch is how many records Once takes; default DefaultBatch.
	Batch int
	// SettleTimeout, when positive, bounds each settle call (an
	// HTTPFacilitator has its own SettleTimeout too). A settle cut short is
	// an unknown outcome, like any other.
	SettleTimeout time.Duration
	// OnError, when not nil, is told the errors of Run's rounds.
	OnError func(error)
	// OnSettled, when not nil, is told each record found settled (by this
	// settle or an earlier one), after it is recorded: what the payment
	// bought is then owed to the payer (a top-up's credits). It is told
	// only when this Reconciler's Finish turned the record Settled, not
	// when someone else recorded the settlement first (Settled is final),
	// so a payment is told once.
	OnSettled func(ctx context.Context, rec Record, receipt string)
	// MinAge is how old an Unknown record's LastAttempt must be before it
	// is taken: longer than any live settle takes (a live settle's mark is
	// Unknown too). Zero: 2×SettleTimeout when that is set, else
	// DefaultMinAge. Negative: no wait (a store that no live settle
	// writes to, and tests).
	MinAge time.Duration
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Reconciler) minAge() time.Duration {
	switch {
	case r.MinAge != 0:
		return r.MinAge
	case r.SettleTimeout > 0:
		return 2 * r.SettleTimeout
	}
	return DefaultMinAge
}

// young reports whether rec's last attempt is too recent to take it.
func (r *Reconciler) young(rec Record, now time.Time) bool {
	minAge := r.minAge()
	return minAge > 0 && !rec.LastAttempt.IsZero() && now.Sub(rec.LastAttempt) < minAge
}

// Run calls Once every period (a minute when not positive) until ctx is done.
func (r *Reconciler) Run(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := r.Once(ctx); err != nil && r.OnError != nil && ctx.Err() == nil {
			r.OnError(err)
		}
	}
}

// Once reconciles up to Batch Unknown records, oldest attempt first, and
// returns how many it resolved (Settled, Failed or abandoned). It leaves
// the records younger than MinAge, and those someone else finished or
// marked since they were listed. A store error on one record does not
// stop the others; the errors are joined.
func (r *Reconciler) Once(ctx context.Context) (int, error) {
	batch := r.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	recs, err := r.Store.Unknowns(ctx, batch)
	if err != nil {
		return 0, err
	}
	resolved := 0
	var errs []error
	now := r.now()
	for _, rec := range recs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if r.young(rec, now) {
			continue
		}
		outcome, err := r.reconcile(ctx, rec)
		if err != nil {
			errs = append(errs, fmt.Errorf("paystore: reconcile %s: %w", rec.Key, err))
			continue
		}
		if outcome == "" {
			continue // taken up by someone else
		}
		if outcome != OutcomeUnknown {
			resolved++
		}
		if r.Observe != nil {
			r.Observe(outcome)
		}
	}
	return resolved, errors.Join(errs...)
}

// reconcile settles rec again and records what came of it.
func (r *Reconciler) reconcile(ctx context.Context, rec Record) (string, error) {
	p, err := decodeStored(rec.Payload)
	if err != nil {
		// Nothing will ever decode it; its first settle was sent from it,
		// so the money may have moved.
		return r.abandon(ctx, rec, "stored payload does not decode")
	}
	req, ok := r.Requirements(rec)
	if !ok {
		return r.inconclusive(ctx, rec, p, "no offer for route "+strconv.Quote(rec.Route))
	}
	// The write-ahead mark, as a live settle writes it: if this replica
	// dies with the settle sent, the record is Unknown with this attempt
	// counted and timed.
	before, err := r.Store.Finish(ctx, rec.Key, Unknown, "", ReasonSettling)
	if err != nil {
		return "", err
	}
	if touched(before, rec) {
		return "", nil // finished, or marked, by someone else since Unknowns
	}
	resp, err := r.settleOnce(ctx, p, req)
	if err != nil {
		return r.inconclusive(ctx, rec, p, reasonOfError(err))
	}
	if resp.Success {
		return r.settle(ctx, rec, resp, OutcomeSettled, "")
	}
	switch classify(resp.ErrorReason) {
	case refusalUsed:
		a := p.Payload.Authorization
		receipt := x402.SettleResponse{
			Success: true, Transaction: resp.Transaction,
			Network: cmp.Or(resp.Network, req.Network), Payer: cmp.Or(resp.Payer, a.From), Amount: a.Value,
		}
		return r.settle(ctx, rec, receipt, OutcomeAlreadySettled, resp.ErrorReason)
	case refusalFinal:
		return OutcomeFailed, r.finish(ctx, rec.Key, Failed, resp.ErrorReason)
	case refusalExpired:
		return r.abandon(ctx, rec, resp.ErrorReason)
	}
	return r.inconclusive(ctx, rec, p, cmp.Or(resp.ErrorReason, "refused without a reason"))
}

func (r *Reconciler) settleOnce(ctx context.Context, p x402.PaymentPayload, req x402.PaymentRequirements) (x402.SettleResponse, error) {
	if r.SettleTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.SettleTimeout)
		defer cancel()
	}
	return r.Facilitator.Settle(ctx, p, req)
}

func (r *Reconciler) settle(ctx context.Context, rec Record, resp x402.SettleResponse, outcome, reason string) (string, error) {
	receipt, err := x402.EncodePaymentResponse(resp)
	if err != nil {
		return "", err
	}
	before, err := r.Store.Finish(ctx, rec.Key, Settled, receipt, reason)
	if err != nil {
		return outcome, err
	}
	if before.State == Settled {
		// Recorded by someone else first (a live settle that outlived
		// MinAge): it was told then what the payment bought.
		return outcome, nil
	}
	if r.OnSettled != nil {
		r.OnSettled(ctx, rec, receipt)
	}
	return outcome, nil
}

// inconclusive keeps rec Unknown, unless it has had its attempts or its
// authorization has expired (then nothing later can tell either).
func (r *Reconciler) inconclusive(ctx context.Context, rec Record, p x402.PaymentPayload, reason string) (string, error) {
	maxAttempts := r.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = DefaultMaxAttempts
	}
	if rec.Attempts+1 >= maxAttempts {
		return r.abandon(ctx, rec, reason)
	}
	if vb, err := strconv.ParseInt(p.Payload.Authorization.ValidBefore, 10, 64); err == nil && r.now().Unix() >= vb {
		return r.abandon(ctx, rec, reason+" (authorization expired)")
	}
	return OutcomeUnknown, r.finish(ctx, rec.Key, Unknown, reason)
}

func (r *Reconciler) abandon(ctx context.Context, rec Record, reason string) (string, error) {
	return OutcomeAbandoned, r.finish(ctx, rec.Key, Failed, ReasonUnreconciled+": "+reason)
}

func (r *Reconciler) finish(ctx context.Context, key string, st State, reason string) error {
	_, err := r.Store.Finish(ctx, key, st, "", reason)
	return err
}

// touched reports whether a record was finished since it was listed: a
// Finish changes at least one of its state, attempts, reason or last
// attempt (a mark counts an attempt; an outcome after a mark replaces the
// mark's reason; any other Finish counts one).
func touched(now, listed Record) bool {
	return now.State != Unknown || now.Attempts != listed.Attempts || now.Reason != listed.Reason ||
		!now.LastAttempt.Equal(listed.LastAttempt)
}

// decodeStored decodes a stored PAYMENT-SIGNATURE or X-PAYMENT value, as
// x402.FromHeaders would have.
func decodeStored(header string) (x402.PaymentPayload, error) {
	p, err := x402.DecodePaymentSignature(header)
	if errors.Is(err, x402.ErrInvalidVersion) {
		return x402.DecodeXPayment(header)
	}
	return p, err
}

// reasonOfError names a failure to get an answer, for Record.Reason.
func reasonOfError(err error) string {
	switch {
	case errors.Is(err, x402.ErrSettleOutcomeUnknown):
		return string(x402.ReasonSettlementUnknown)
	case errors.Is(err, x402.ErrFacilitatorUnavailable):
		return "facilitator_unavailable"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return string(x402.ReasonSettlementUnknown)
	}
	return string(x402.ReasonUnexpectedSettle)
}

type refusal int

const (
	refusalInconclusive refusal = iota
	refusalUsed
	refusalFinal
	refusalExpired
)

// finalReasons are refusals the earlier attempt, with the same payload,
// would have met too: it cannot have moved the money.
var finalReasons = map[string]bool{
	string(x402.ReasonInsufficientFunds):     true,
	"invalid_exact_evm_insufficient_balance": true, // the reference SDK's name
	string(x402.ReasonInvalidPayload):        true,
	string(x402.ReasonInvalidVersion):        true,
	string(x402.ReasonInvalidScheme):         true,
	string(x402.ReasonInvalidNetwork):        true,
	string(x402.ReasonNoMatchingOffer):       true,
	string(x402.ReasonValueMismatch):         true,
	string(x402.ReasonRecipientMismatch):     true,
	string(x402.ReasonNotYetValid):           true,
	string(x402.ReasonValidityTooLong):       true,
	string(x402.ReasonInvalidSignature):      true,
	"invalid_exact_evm_recipient_mismatch":   true, // the reference SDK's name
}

// classify sorts a facilitator's errorReason.
func classify(reason string) refusal {
	r := strings.ToLower(reason)
	switch {
	case r == string(x402.ReasonNonceUsed),
		strings.Contains(r, "nonce") && strings.Contains(r, "used"),
		strings.Contains(r, "authorization") && strings.Contains(r, "already_used"):
		return refusalUsed
	case r == string(x402.ReasonExpired), strings.HasSuffix(r, "_valid_before"):
		return refusalExpired
	case finalReasons[r]:
		return refusalFinal
	}
	return refusalInconclusive
}
