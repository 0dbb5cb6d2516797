package x402

import "fmt"

// Reason is a machine-readable refusal code. The values are the x402 error
// codes where the specification or the reference SDK names one, so a reason
// can be passed to a client or a facilitator unchanged.
type Reason string

// Refusal reasons.
const (
	ReasonInvalidPayload      Reason = "invalid_payload"
	ReasonInvalidVersion      Reason = "invalid_x402_version"
	ReasonInvalidScheme       Reason = "invalid_scheme"
	ReasonInvalidNetwork      Reason = "invalid_network"
	ReasonNoMatchingOffer     Reason = "invalid_payment_requirements"
	ReasonValueMismatch       Reason = "invalid_exact_evm_payload_authorization_value_mismatch"
	ReasonRecipientMismatch   Reason = "invalid_exact_evm_payload_recipient_mismatch"
	ReasonNotYetValid         Reason = "invalid_exact_evm_payload_authorization_valid_after"
	ReasonExpired             Reason = "invalid_exact_evm_payload_authorization_valid_before"
	ReasonValidityTooLong     Reason = "invalid_exact_evm_payload_authorization_validity_too_long"
	ReasonInvalidSignature    Reason = "invalid_exact_evm_payload_signature"
	ReasonNonceUsed           Reason = "invalid_exact_evm_nonce_already_used"
	ReasonInsufficientFunds   Reason = "insufficient_funds"
	ReasonUnexpectedVerify    Reason = "unexpected_verify_error"
	ReasonUnexpectedSettle    Reason = "unexpected_settle_error"
	ReasonSettlementUnknown   Reason = "settlement_outcome_unknown"
	ReasonFacilitatorRejected Reason = "facilitator_rejected_request"
)

// Error is a refusal of a payment or of its encoding. Field names the JSON
// member at fault (e.g. "payload.authorization.nonce"); Detail is a fixed
// description. Neither ever carries the client's input, so an Error is safe
// to log and to return to the client.
type Error struct {
	Reason Reason
	Field  string
	Detail string
}

func (e *Error) Error() string {
	switch {
	case e.Field != "" && e.Detail != "":
		return fmt.Sprintf("x402: %s: %s: %s", e.Reason, e.Field, e.Detail)
	case e.Field != "":
		return fmt.Sprintf("x402: %s: %s", e.Reason, e.Field)
	case e.Detail != "":
		return fmt.Sprintf("x402: %s: %s", e.Reason, e.Detail)
	}
	return "x402: " + string(e.Reason)
}

// Is makes errors.Is(err, ErrExpired) match any *Error with the same Reason
// (and the same Field, when the target names one).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Reason == e.Reason && (t.Field == "" || t.Field == e.Field)
}

// Sentinels for errors.Is; each matches every *Error with its Reason.
var (
	ErrInvalidPayload    = &Error{Reason: ReasonInvalidPayload}
	ErrInvalidVersion    = &Error{Reason: ReasonInvalidVersion}
	ErrInvalidScheme     = &Error{Reason: ReasonInvalidScheme}
	ErrInvalidNetwork    = &Error{Reason: ReasonInvalidNetwork}
	ErrNoMatchingOffer   = &Error{Reason: ReasonNoMatchingOffer}
	ErrValueMismatch     = &Error{Reason: ReasonValueMismatch}
	ErrRecipientMismatch = &Error{Reason: ReasonRecipientMismatch}
	ErrNotYetValid       = &Error{Reason: ReasonNotYetValid}
	ErrExpired           = &Error{Reason: ReasonExpired}
	ErrValidityTooLong   = &Error{Reason: ReasonValidityTooLong}
	ErrInvalidSignature  = &Error{Reason: ReasonInvalidSignature}
	ErrNonceUsed         = &Error{Reason: ReasonNonceUsed}
	ErrInsufficientFunds = &Error{Reason: ReasonInsufficientFunds}
)

func invalid(field, detail string) *Error {
	return &Error{Reason: ReasonInvalidPayload, Field: field, Detail: detail}
}
