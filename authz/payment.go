package authz

import (
	"context"
	"errors"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/policy"
)

// PaymentKey is the dynamic metadata key (in the ext_authz filter's
// namespace) of an admitted pay-per-call payment: its paystore key, which
// the ext_proc server settles once the upstream has answered.
const PaymentKey = "x402"

// MPPPaymentKey is PaymentKey for a payment made with the Payment scheme
// (MPP): the same paystore key, settled the same way, but the ext_proc
// server answers with a Payment-Receipt instead of PAYMENT-RESPONSE.
const MPPPaymentKey = "mpp"

// paid is what a Check's payment left for its answer.
type paid struct {
	key     string // to settle on the response ("" : nothing to settle)
	receipt string // PAYMENT-RESPONSE now (a top-up, or a retry)
	payer   string
	mpp     bool // paid with the Payment scheme
}

// paymentHeader is the request's payment: its x402 header, or an
// `Authorization: Payment` credential (MPP), if it sent one.
func paymentHeader(r *request) (value string, v1, ok bool) {
	if v, ok := r.Header("payment-signature"); ok {
		return v, false, true
	}
	if v, ok := r.Header("x-payment"); ok {
		return v, true, true
	}
	if v, ok := r.Header("authorization"); ok && isPaymentScheme(v) {
		return v, false, true
	}
	return "", false, false
}

// isPaymentScheme reports an Authorization value of the Payment scheme
// (auth-schemes are case-insensitive). An x402 header never matches: it is
// base64, without a space.
func isPaymentScheme(v string) bool {
	const scheme = "payment "
	return len(v) > len(scheme) && strings.EqualFold(v[:len(scheme)], scheme)
}

// decidePaid decides a request that carries a payment. Credentials, when
// sent, name the subject (and are needed for a top-up); a pay-per-call
// payment then stands in for the plan's checks and quotas.
func (s *Server) decidePaid(ctx context.Context, rt *Rules, q *Request, route *policy.Route, header string, v1 bool) policy.Decision {
	r, res := &q.r, &q.res
	g := rt.opts.Payments
	cred := rt.identity.Extract(r)
	res.CredFrom, res.KeyID = cred.From, cred.KeyID()
	var ent *entitlement.Entitlement
	if cred.Kind != identity.None {
		var code policy.Code
		if ent, code = s.lookup(ctx, &cred, res); code != policy.OK {
			return policy.Decision{Code: code, Route: route}
		}
	}
	isMPP := isPaymentScheme(header)
	adm, err := g.Admit(ctx, payment.Request{Route: route, Header: header, V1: v1, Entitlement: ent, Method: r.method(), Path: r.path(), MPP: isMPP})
	if err != nil {
		res.Err = err
		var ref *payment.Refusal
		switch {
		case errors.As(err, &ref) && ref.Conflict:
			return policy.Decision{Code: policy.PaymentConflict, Route: route, Entitlement: ent}
		case errors.As(err, &ref):
			return policy.Decision{Code: policy.PaymentInvalid, Route: route, Entitlement: ent}
		}
		return policy.Decision{Code: policy.PaymentUnavailable, Route: route, Entitlement: ent}
	}
	res.pay = paid{receipt: adm.Receipt, payer: strings.ToLower(adm.Payer), mpp: isMPP}
	res.Payer, res.Payment = res.pay.payer, adm.Kind
	if adm.Retry {
		res.Payment = "retry"
	}
	if adm.Kind == payment.TopUpKind {
		// Credited (a retry: by the first request, so nothing new was
		// bought): the request is decided against the balance.
		d := rt.policy.Decide(route, ent, res.now)
		if d.Allowed() {
			s.spend(ctx, rt, q, &d, res.now)
		}
		return d
	}
	if !adm.Retry {
		res.pay.key = adm.Key
	}
	if ent == nil && isMPP {
		ent = &entitlement.Entitlement{Subject: "mpp:" + res.pay.payer, Plan: "mpp", Status: entitlement.StatusActive}
	} else if ent == nil {
		ent = &entitlement.Entitlement{Subject: "x402:" + res.pay.payer, Plan: "x402", Status: entitlement.StatusActive}
	}
	return policy.Decision{Code: policy.OK, Route: route, Entitlement: ent}
}

// payable lists the refusals a payment can lift: a route's price buys
// one call past any of them.
func payable(c policy.Code) bool {
	switch c {
	case policy.PaymentRequired, policy.PaymentInvalid, policy.QuotaExhausted, policy.InsufficientCredits,
		policy.FeatureNotInPlan, policy.SubscriptionInactive, policy.PaymentFailed:
		return true
	}
	return false
}

// challenge is a refusal's x402 offer: the PAYMENT-REQUIRED value and the
// same offer for the body; and its Payment scheme challenge, when on.
type challenge struct {
	header       string
	x402, offers []byte
	mpp          string // a WWW-Authenticate value, or ""
}

// mppHeader is the `WWW-Authenticate: Payment` of c, or nil. It is added
// beside any Bearer challenge the refusal's template sets: Envoy applies a
// denial's headers in order, so the append comes after the overwrite.
func (c *challenge) mppHeader() *corev3.HeaderValueOption {
	if c.mpp == "" {
		return nil
	}
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: "www-authenticate", Value: c.mpp},
		AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD,
	}
}

// paymentChallenge builds the offer for a refusal, when something can be
// bought and the refusal is a 402 to an HTTP client.
func (rt *Rules) paymentChallenge(r *request, d *policy.Decision, res *Result, detail string) (c challenge, ok bool) {
	g := rt.opts.Payments
	if g == nil || d.Route == nil || !payable(d.Code) || res.Status != 402 || r.isGRPC() {
		return c, false
	}
	w := payment.Want{Route: d.Route, URL: resourceURL(r), Description: d.Route.Name, Subject: d.Entitlement != nil && d.Code != policy.PaymentRequired, Error: detail}
	if sp, used := d.DeniedSpend(); sp != nil && sp.Credits {
		w.Credits, w.Lack = true, sp.Cost-max(sp.Limit-used, 0)
	}
	c.header, c.x402, c.offers, ok = g.Challenge(w)
	if ok {
		c.mpp = g.MPPChallenge(w)
	}
	return c, ok
}

// resourceURL is the URL the client asked for, as x402's resource.url.
func resourceURL(r *request) string {
	scheme := "https"
	if p, ok := r.Header("x-forwarded-proto"); ok && (p == "http" || p == "https") {
		scheme = p
	}
	return scheme + "://" + r.host() + r.pathOnly()
}

// raw adds a member whose value is JSON already.
func (o *jsonObject) raw(k string, v []byte) {
	o.key(k)
	o.b = append(o.b, v...)
}

// paidAllow adds what an admitted payment puts on the allow: the payer
// upstream, the receipt to the client, the key to settle in metadata.
func (rt *Rules) paidAllow(ok *authv3.OkHttpResponse, md *structpb.Struct, p *paid) {
	if p.payer != "" {
		name := rt.lowerPfx + "payer"
		ok.Headers = append(ok.Headers[:len(ok.Headers):len(ok.Headers)], overwrite(name, p.payer))
		// Envoy removes after it sets: a client's own x-tollgate-payer,
		// listed for removal by allow, would take ours with it.
		ok.HeadersToRemove = slices.DeleteFunc(ok.HeadersToRemove, func(h string) bool { return strings.EqualFold(h, name) })
	}
	if p.receipt != "" {
		ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd[:len(ok.ResponseHeadersToAdd):len(ok.ResponseHeadersToAdd)], overwrite("payment-response", p.receipt))
	}
	// The payment is spent here: the upstream has no use for it, and it
	// should not sit in the upstream's logs.
	ok.HeadersToRemove = append(ok.HeadersToRemove[:len(ok.HeadersToRemove):len(ok.HeadersToRemove)], "payment-signature", "x-payment")
	if p.mpp {
		ok.HeadersToRemove = append(ok.HeadersToRemove, "authorization")
	}
	if p.key != "" {
		k := PaymentKey
		if p.mpp {
			k = MPPPaymentKey
		}
		md.Fields[k] = structpb.NewStringValue(p.key)
	}
}

// receiptHeader is the PAYMENT-RESPONSE header of a refusal that came
// after a settled top-up.
func receiptHeader(p *paid) *corev3.HeaderValueOption {
	if p == nil || p.receipt == "" {
		return nil
	}
	return overwrite("payment-response", p.receipt)
}

// paymentDetail is the sentence for a payment refusal, or "".
func (rt *Rules) paymentDetail(d *policy.Decision, res *Result) string {
	switch d.Code {
	case policy.PaymentRequired:
		s := "This route is paid per call"
		if g := rt.opts.Payments; g != nil && d.Route != nil && d.Route.Price != "" {
			s = "This route costs " + d.Route.Price + " " + g.Currency() + " per call"
		}
		if g := rt.opts.Payments; g != nil && g.MPP() {
			return s + ": pay with x402 (the PAYMENT-REQUIRED header holds the offer) or the Payment scheme (WWW-Authenticate: Payment), or send credentials."
		}
		return s + ": pay with x402 (the PAYMENT-REQUIRED header holds the offer), or send credentials."
	case policy.PaymentInvalid, policy.PaymentConflict:
		var ref *payment.Refusal
		if errors.As(res.Err, &ref) {
			return ref.Detail
		}
		return "The payment was refused."
	case policy.PaymentUnavailable:
		return "The payment could not be checked or settled right now; retry shortly."
	}
	return ""
}
