package mpp

import (
	"context"
	"encoding/json"
)

// Method verifies the proof of one payment method for a challenge that
// Challenger.Check has already accepted, and settles it: a nil error means
// the money is ours and the Receipt can be sent. Implementations refuse
// with *Error (CodeVerificationFailed, CodePaymentInsufficient, …) and
// return other errors for faults of their own (a facilitator down), which
// the caller answers as a fault, not as a refusal.
type Method interface {
	// Name is the payment method identifier ("evm", "lightning", …).
	Name() string
	// Verify checks payload (the credential's method-specific object)
	// against ch and settles it.
	Verify(ctx context.Context, ch Challenge, payload json.RawMessage) (Receipt, error)
}
