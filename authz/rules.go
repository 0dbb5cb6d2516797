package authz

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"

	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/reservation"
)

// Options are the response settings from the config file.
type Options struct {
	// ProblemTypeBase prefixes the code to make the problem "type" URI.
	ProblemTypeBase string
	// Realm goes in WWW-Authenticate on 401.
	Realm string
	// RetryAfter is sent with entitlements_unavailable.
	RetryAfter time.Duration
	// Status overrides the HTTP status per code.
	Status map[policy.Code]int
	// HeaderPrefix marks trusted headers; client-sent ones are removed.
	HeaderPrefix string
	// SubjectHeader and PlanHeader are set upstream on allow.
	SubjectHeader, PlanHeader string
	// Shadow decides and logs but always allows.
	Shadow bool
	// AllowSampleRate is the share of allows written to the decision log.
	AllowSampleRate float64
	// Reservations signs the reservation a metered route's allow carries
	// in dynamic metadata ("reservation"), for its settlement; nil: metered
	// routes carry none.
	Reservations *reservation.Signer
	// Payments makes refusals payable by x402 and admits paid requests;
	// nil: no route takes payment.
	Payments *payment.Gate
}

// Rules is everything a Check reads that a config reload may change. It is
// immutable once built.
type Rules struct {
	policy   *policy.Policy
	identity identity.Chain
	opts     Options
	status   policy.StatusTable
	tmpl     []template
	lowerPfx string
	// idHeader carries the decision id upstream: the prefix's decision-id.
	idHeader string
	missing  string // detail for missing_credentials
}

// template is what a denial with one code always carries.
type template struct {
	status   int
	typeURI  string
	title    string
	grpcCode codes.Code
	// httpStatus, headers and grpc are shared by every denial, never modified.
	httpStatus *typev3.HttpStatus
	headers    []*corev3.HeaderValueOption
	grpc       []*corev3.HeaderValueOption // headers for a gRPC client, see grpcdeny.go
}

var titles = map[policy.Code]string{
	policy.MissingCredentials:      "Credentials required",
	policy.InvalidCredentials:      "Invalid credentials",
	policy.SubscriptionInactive:    "Subscription inactive",
	policy.PaymentFailed:           "Payment failed",
	policy.FeatureNotInPlan:        "Feature not in plan",
	policy.QuotaExhausted:          "Quota exhausted",
	policy.InsufficientCredits:     "Insufficient credits",
	policy.RateLimited:             "Rate limited",
	policy.RouteNotAllowed:         "Route not allowed",
	policy.EntitlementsUnavailable: "Entitlements unavailable",
	policy.CostTooLarge:            "Cost too large",
	policy.PaymentRequired:         "Payment required",
	policy.PaymentInvalid:          "Payment refused",
	policy.PaymentUnavailable:      "Payment unavailable",
	policy.PaymentConflict:         "Payment id conflict",
}

// grpcCodes is what a gRPC client sees for each refusal.
var grpcCodes = map[policy.Code]codes.Code{
	policy.MissingCredentials:      codes.Unauthenticated,
	policy.InvalidCredentials:      codes.Unauthenticated,
	policy.SubscriptionInactive:    codes.PermissionDenied,
	policy.PaymentFailed:           codes.PermissionDenied,
	policy.FeatureNotInPlan:        codes.PermissionDenied,
	policy.QuotaExhausted:          codes.ResourceExhausted,
	policy.InsufficientCredits:     codes.ResourceExhausted,
	policy.RateLimited:             codes.ResourceExhausted,
	policy.RouteNotAllowed:         codes.PermissionDenied,
	policy.EntitlementsUnavailable: codes.Unavailable,
	policy.CostTooLarge:            codes.InvalidArgument,
	policy.PaymentRequired:         codes.PermissionDenied,
	policy.PaymentInvalid:          codes.PermissionDenied,
	policy.PaymentUnavailable:      codes.Unavailable,
	policy.PaymentConflict:         codes.AlreadyExists,
}

// NewRules precomputes response templates for p and chain. Zero options
// take the defaults config fills in (policy.DefaultRealm, ...).
func NewRules(p *policy.Policy, chain identity.Chain, opts Options) (*Rules, error) {
	if opts.ProblemTypeBase == "" {
		opts.ProblemTypeBase = policy.DefaultProblemTypeBase
	}
	if opts.Realm == "" {
		opts.Realm = policy.DefaultRealm
	}
	if opts.HeaderPrefix == "" {
		opts.HeaderPrefix = policy.DefaultHeaderPrefix
	}
	if opts.SubjectHeader == "" {
		opts.SubjectHeader = opts.HeaderPrefix + "subject"
	}
	if opts.PlanHeader == "" {
		opts.PlanHeader = opts.HeaderPrefix + "plan"
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = policy.DefaultRetryAfter
	}
	rt := &Rules{policy: p, identity: chain, opts: opts, status: policy.DefaultStatus, lowerPfx: strings.ToLower(opts.HeaderPrefix)}
	rt.idHeader = rt.lowerPfx + "decision-id"
	for c, st := range opts.Status {
		if err := policy.CheckStatus(st); err != nil {
			return nil, fmt.Errorf("status for %s: %w", c, err)
		}
		rt.status[c] = st
	}
	rt.tmpl = make([]template, len(policy.Codes))
	for _, c := range policy.Codes[1:] {
		t := template{
			status:   rt.status.Status(c),
			typeURI:  opts.ProblemTypeBase + c.String(),
			title:    titles[c],
			grpcCode: grpcCodes[c],
		}
		t.httpStatus = &typev3.HttpStatus{Code: typev3.StatusCode(t.status)}
		t.headers = []*corev3.HeaderValueOption{
			overwrite("content-type", "application/problem+json"),
			overwrite("cache-control", "no-store"),
		}
		switch c {
		case policy.MissingCredentials, policy.PaymentRequired:
			t.headers = append(t.headers, overwrite("www-authenticate", `Bearer realm="`+opts.Realm+`"`))
		case policy.InvalidCredentials:
			t.headers = append(t.headers, overwrite("www-authenticate", `Bearer realm="`+opts.Realm+`", error="invalid_token"`))
		case policy.EntitlementsUnavailable, policy.PaymentUnavailable:
			secs := int64((opts.RetryAfter + time.Second - 1) / time.Second)
			t.headers = append(t.headers, overwrite("retry-after", strconv.FormatInt(secs, 10)))
		}
		t.grpc = grpcHeaders(&t)
		rt.tmpl[c] = t
	}
	rt.missing = rt.missingDetail()
	return rt, nil
}

// Policy is the compiled policy this runtime decides with.
func (rt *Rules) Policy() *policy.Policy { return rt.policy }

// overwrite builds a header that replaces any existing value. The append
// default differs between Envoy versions, so it is always explicit.
func overwrite(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// missingDetail says which credentials this deployment accepts.
func (rt *Rules) missingDetail() string {
	var ways []string
	for _, x := range rt.identity {
		switch x := x.(type) {
		case *identity.HeaderKey:
			ways = append(ways, "an API key in the "+x.Name+" header")
		case identity.Bearer:
			ways = append(ways, "an Authorization: Bearer header")
		case *identity.JWTClaim:
			ways = append(ways, "a signed JWT")
		case identity.Principal:
			ways = append(ways, "a client certificate")
		case *identity.TrustedHeader:
			ways = append(ways, "a verified identity")
		}
	}
	if len(ways) == 0 {
		return "This API needs credentials."
	}
	return "This API needs credentials: send " + strings.Join(ways, ", or ") + "."
}
