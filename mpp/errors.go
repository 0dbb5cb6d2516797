package mpp

import (
	"fmt"
	"net/http"
)

// Code is why a credential was refused: the problem type names of the draft
// (§"Error Codes"), so a Code can be put in a problem+json body as
// ProblemBase + code.
type Code string

// Codes of the draft's "Error Codes" table.
const (
	CodePaymentRequired     Code = "payment-required"
	CodePaymentInsufficient Code = "payment-insufficient"
	CodePaymentExpired      Code = "payment-expired"
	CodeVerificationFailed  Code = "verification-failed"
	CodeMethodUnsupported   Code = "method-unsupported"
	CodeMalformedCredential Code = "malformed-credential"
	CodeInvalidChallenge    Code = "invalid-challenge"
)

// ProblemBase is the draft's base URI of problem types.
const ProblemBase = "https://paymentauth.org/problems/"

// statusOf is the HTTP status of each code (the draft's table): every
// refusal is a 402 with a fresh challenge, but for an unsupported method.
var statusOf = map[Code]int{
	CodePaymentRequired:     http.StatusPaymentRequired,
	CodePaymentInsufficient: http.StatusPaymentRequired,
	CodePaymentExpired:      http.StatusPaymentRequired,
	CodeVerificationFailed:  http.StatusPaymentRequired,
	CodeMethodUnsupported:   http.StatusBadRequest,
	CodeMalformedCredential: http.StatusPaymentRequired,
	CodeInvalidChallenge:    http.StatusPaymentRequired,
}

// Status is the HTTP status the draft gives the code.
func (c Code) Status() int {
	if s, ok := statusOf[c]; ok {
		return s
	}
	return http.StatusPaymentRequired
}

// ProblemType is the problem+json "type" URI of the code.
func (c Code) ProblemType() string { return ProblemBase + string(c) }

// Error is a refusal of a credential. Field names the member at fault
// ("challenge.id", "payload.signature"); Detail is a fixed description.
// Neither ever carries the client's input (the draft, "Credential
// Handling": credentials MUST NOT appear in error messages), so an Error is
// safe to log and to send back.
type Error struct {
	Code   Code
	Field  string
	Detail string
}

func (e *Error) Error() string {
	switch {
	case e.Field != "" && e.Detail != "":
		return fmt.Sprintf("mpp: %s: %s: %s", e.Code, e.Field, e.Detail)
	case e.Field != "":
		return fmt.Sprintf("mpp: %s: %s", e.Code, e.Field)
	case e.Detail != "":
		return fmt.Sprintf("mpp: %s: %s", e.Code, e.Detail)
	}
	return "mpp: " + string(e.Code)
}

// Is makes errors.Is(err, ErrInvalidChallenge) match any *Error with the
// same Code (and the same Field, when the target names one).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code && (t.Field == "" || t.Field == e.Field)
}

// Sentinels for errors.Is; each matches every *Error with its Code.
var (
	ErrMalformedCredential = &Error{Code: CodeMalformedCredential}
	ErrInvalidChallenge    = &Error{Code: CodeInvalidChallenge}
	ErrPaymentExpired      = &Error{Code: CodePaymentExpired}
	ErrVerificationFailed  = &Error{Code: CodeVerificationFailed}
	ErrMethodUnsupported   = &Error{Code: CodeMethodUnsupported}
	ErrPaymentInsufficient = &Error{Code: CodePaymentInsufficient}
)

func malformed(field, detail string) *Error {
	return &Error{Code: CodeMalformedCredential, Field: field, Detail: detail}
}
