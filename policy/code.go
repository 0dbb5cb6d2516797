package policy

import (
	"fmt"
	"time"
)

// Code is the reason for a decision. Codes are the public contract: they appear
// in the JSON body, the decision log, metrics and Envoy's dynamic metadata.
type Code uint8

// The decision codes.
const (
	OK Code = iota
	MissingCredentials
	InvalidCredentials
	SubscriptionInactive
	PaymentFailed
	FeatureNotInPlan
	QuotaExhausted
	InsufficientCredits
	RateLimited
	RouteNotAllowed
	EntitlementsUnavailable
	// CostTooLarge: the request costs more than its route's max_cost, or
	// more than the whole limit of the quota it spends; it can never fit.
	CostTooLarge
	// PaymentRequired: the route is paid per call and the request carries
	// neither credentials nor a payment (x402).
	PaymentRequired
	// PaymentInvalid: the request's payment was refused: malformed, not
	// for an offer we made, badly signed, expired, already used, or
	// refused by the facilitator.
	PaymentInvalid
	// PaymentUnavailable: the payment could not be verified or settled
	// right now (the facilitator or the payment store is down or slow).
	PaymentUnavailable
	// PaymentConflict: the payment's payment-identifier was used before
	// for a different purchase.
	PaymentConflict
	numCodes
)

// DefaultProblemTypeBase is where the codes are documented: the problem
// "type" URI of a denial is this base followed by the code's name, unless
// responses.problem_type_base says otherwise.
const DefaultProblemTypeBase = "https://github.com/tollgate-authz/tollgate/blob/main/docs/problems.md#"

// Defaults for the rest of the responses block and the trusted headers,
// used by config and, for zero options, by authz: each is defined here only.
const (
	// DefaultRealm goes in WWW-Authenticate on a 401.
	DefaultRealm = "api"
	// DefaultRetryAfter is sent with entitlements_unavailable.
	DefaultRetryAfter = 5 * time.Second
	// DefaultHeaderPrefix marks the trusted headers sent upstream (the
	// subject and the plan); client-sent headers with it are removed.
	DefaultHeaderPrefix = "x-tollgate-"
)

// CheckStatus refuses an HTTP status a denial cannot carry: anything but
// 4xx or 5xx. Config checks responses.status with it; authz, for callers
// that build its options themselves.
func CheckStatus(status int) error {
	if status < 400 || status > 599 {
		return fmt.Errorf("%d is not a 4xx or 5xx status", status)
	}
	return nil
}

// Codes lists every code, OK first.
var Codes = func() []Code {
	cs := make([]Code, numCodes)
	for i := range cs {
		cs[i] = Code(i)
	}
	return cs
}()

var codeNames = [numCodes]string{
	OK:                      "ok",
	MissingCredentials:      "missing_credentials",
	InvalidCredentials:      "invalid_credentials",
	SubscriptionInactive:    "subscription_inactive",
	PaymentFailed:           "payment_failed",
	FeatureNotInPlan:        "feature_not_in_plan",
	QuotaExhausted:          "quota_exhausted",
	InsufficientCredits:     "insufficient_credits",
	RateLimited:             "rate_limited",
	RouteNotAllowed:         "route_not_allowed",
	EntitlementsUnavailable: "entitlements_unavailable",
	CostTooLarge:            "cost_too_large",
	PaymentRequired:         "payment_required",
	PaymentInvalid:          "payment_invalid",
	PaymentUnavailable:      "payment_unavailable",
	PaymentConflict:         "payment_conflict",
}

// String is the code as users see it, for example "feature_not_in_plan".
func (c Code) String() string {
	if c < numCodes {
		return codeNames[c]
	}
	return "unknown"
}

// ParseCode is the inverse of String.
func ParseCode(s string) (Code, bool) {
	for i, n := range codeNames {
		if n == s {
			return Code(i), true
		}
	}
	return 0, false
}

// DefaultStatus is the one table that maps codes to HTTP statuses. Config may
// override entries per code.
var DefaultStatus = [numCodes]int{
	OK:                      200,
	MissingCredentials:      401,
	InvalidCredentials:      401,
	SubscriptionInactive:    402,
	PaymentFailed:           402,
	FeatureNotInPlan:        402,
	QuotaExhausted:          402,
	InsufficientCredits:     402,
	RateLimited:             429,
	RouteNotAllowed:         403,
	EntitlementsUnavailable: 503,
	CostTooLarge:            400,
	PaymentRequired:         402,
	PaymentInvalid:          402,
	PaymentUnavailable:      503,
	PaymentConflict:         409,
}

// StatusTable is DefaultStatus with overrides applied.
type StatusTable [numCodes]int

// Status is the HTTP status for c.
func (t *StatusTable) Status(c Code) int {
	if c < numCodes {
		return t[c]
	}
	return 500
}
