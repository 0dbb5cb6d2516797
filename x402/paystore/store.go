package paystore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// State is where a payment authorization stands in its life.
type State uint8

// States of a Record. Pending: accepted at the door, not settled yet.
// Settled: the money moved (Receipt holds the PAYMENT-RESPONSE). Unknown: a
// settle was sent and no answer came back; the Reconciler owns it. Failed:
// the facilitator refused the settlement, or the Reconciler gave up.
const (
	Pending State = iota + 1
	Settled
	Unknown
	Failed
)

var stateNames = [...]string{Pending: "pending", Settled: "settled", Unknown: "unknown", Failed: "failed"}

// String is the state's name, as stored in Redis and shown in logs.
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// parseState is the inverse of String.
func parseState(s string) (State, bool) {
	for i, n := range stateNames {
		if n != "" && n == s {
			return State(i), true
		}
	}
	return 0, false
}

// Record is one payment authorization tollgate accepted at the door.
type Record struct {
	Key       string    // the authorization's identity: see KeyOf
	PaymentID string    // the payment-identifier extension's id, "" when not sent
	Digest    string    // hex sha256 of the raw payment header (DigestOf): tells a reuse with another payload apart
	State     State     // set by the store: Claim stores Pending whatever the caller passed
	Route     string    // the route the payment was for
	Subject   string    // who paid (a subject, or the payer's address)
	Payload   string    // the raw PAYMENT-SIGNATURE / X-PAYMENT header value, kept to reconcile an unknown settlement
	Receipt   string    // the base64 PAYMENT-RESPONSE when Settled
	Reason    string    // why Failed / Unknown (and, when Settled by a refusal, which one)
	Expires   time.Time // when the record may be forgotten: validBefore plus a margin
	Attempts  int       // settle attempts so far (Finish counts them)
	// LastAttempt is when the last Finish was recorded (a settle about to
	// be sent, or an outcome), by the store's clock (Redis: the server's);
	// zero before the first. The Reconciler leaves an Unknown record alone
	// until it is older than its MinAge, so as not to race a live settle.
	LastAttempt time.Time
}

// ReasonSettling is the Reason of a write-ahead mark: Finish(key, Unknown,
// "", ReasonSettling) just before a settle is sent, so that a replica that
// dies before recording the outcome leaves an Unknown record the
// Reconciler finds, not a Pending one that nobody reconciles.
const ReasonSettling = "settling"

// KeyOf is the identity of an EIP-3009 authorization: a token contract lets
// a (from, nonce) pair be used once, so lower(asset)/lower(from)/lower(nonce)
// names one payment whatever else the payload says.
func KeyOf(asset, from, nonce string) string {
	return strings.ToLower(asset) + "/" + strings.ToLower(from) + "/" + strings.ToLower(nonce)
}

// DigestOf is Record.Digest for a raw payment header.
func DigestOf(header string) string {
	d := sha256.Sum256([]byte(header))
	return hex.EncodeToString(d[:])
}

// Store keeps payment records so that a payment is settled at most once,
// across replicas when it is shared (Redis).
type Store interface {
	// Claim stores rec (State Pending, Attempts 0) unless a record with
	// rec.Key, or with rec.PaymentID when set, already exists; then it
	// returns that record and claimed=false. Atomic across replicas.
	Claim(ctx context.Context, rec Record) (existing Record, claimed bool, err error)
	// Get returns the record under key (found=false when none).
	Get(ctx context.Context, key string) (Record, bool, error)
	// Finish records the outcome of a settle attempt (Settled with a
	// receipt, Failed or Unknown with a reason), sets LastAttempt, and
	// returns the record as it was before. Settled is final: Finish on a
	// Settled record changes nothing, so a late answer cannot overwrite
	// the first receipt (the caller sees State Settled in what it returns,
	// and knows someone else recorded the settlement). ErrNotFound when the
	// record is gone.
	//
	// A mark (Unknown with ReasonSettling, written before a settle is sent)
	// applies only to a Pending or Unknown record, and counts the attempt
	// (Attempts+1); the outcome recorded after it does not count it again.
	// Any other Finish increments Attempts.
	Finish(ctx context.Context, key string, state State, receipt, reason string) (Record, error)
	// Release forgets a Pending claim that will never be settled, so the
	// same signed authorization may be presented again. A missing record
	// is not an error; any other state is ErrNotPending and stays.
	Release(ctx context.Context, key string) error
	// Unknowns lists up to n records in state Unknown, the one whose last
	// settle attempt is oldest first, for the Reconciler.
	Unknowns(ctx context.Context, n int) ([]Record, error)
}

// Errors of a Store.
var (
	// ErrFull: a Memory store is full of records it must not forget; the
	// caller refuses the payment.
	ErrFull = errors.New("paystore: full of unsettled payments")
	// ErrNotFound: Finish on a record that is not there (expired, or lost
	// with a Redis restarted empty).
	ErrNotFound = errors.New("paystore: no such payment record")
	// ErrNotPending: Release of a record that is not Pending.
	ErrNotPending = errors.New("paystore: payment record is not pending")
)

// MaxUnknowns bounds n in Unknowns.
const MaxUnknowns = 1000

// checkClaim validates what Claim is given; both stores call it.
func checkClaim(rec Record) error {
	switch {
	case rec.Key == "":
		return errors.New("paystore: claim without a key")
	case rec.Expires.IsZero():
		return errors.New("paystore: claim without an expiry")
	}
	return nil
}

// checkFinish validates a Finish state.
func checkFinish(s State, reason string) error {
	if s != Settled && s != Failed && s != Unknown {
		return fmt.Errorf("paystore: finish with state %v: want settled, failed or unknown", s)
	}
	if reason == ReasonSettling && s != Unknown {
		return fmt.Errorf("paystore: a %s mark is unknown, not %v", ReasonSettling, s)
	}
	return nil
}

// finishApplies reports whether a Finish with reason changes a record in
// state cur, and whether it counts an attempt: see Store.Finish.
func finishApplies(cur State, curReason, reason string) (applies, counts bool) {
	switch {
	case cur == Settled:
		return false, false
	case reason == ReasonSettling:
		return cur == Pending || cur == Unknown, true
	}
	return true, curReason != ReasonSettling
}

func clampN(n int) int {
	return min(max(n, 0), MaxUnknowns)
}
