package x402

import (
	"math"
	"strconv"
	"time"
)

// ClockSkew is how far a client's clock may run ahead of ours when it sets
// validBefore = its now + maxTimeoutSeconds (as the reference SDK does).
const ClockSkew = 30 * time.Second

// Match finds the offer p pays for and checks p's authorization against it
// at now. For v2 p.Accepted must equal an offer in scheme, network, amount,
// asset, payTo, maxTimeoutSeconds and the EIP-712 domain (extra.name and
// extra.version); v1 payloads name only scheme and network, so the offer is
// the first one on that chain whose payTo and amount the authorization pays.
// Then: authorization.to == payTo, value == amount, validAfter ≤ now <
// validBefore, and validBefore − now ≤ maxTimeoutSeconds + ClockSkew.
// It does not check the signature (VerifySignature) nor spend anything.
func Match(offered []PaymentRequirements, p PaymentPayload, now time.Time) (PaymentRequirements, error) {
	var req PaymentRequirements
	var err error
	switch p.X402Version {
	case Version:
		if p.Accepted == nil {
			return PaymentRequirements{}, invalid("accepted", "missing")
		}
		req, err = matchAccepted(offered, *p.Accepted)
	case VersionV1:
		req, err = matchV1(offered, p)
	default:
		return PaymentRequirements{}, &Error{Reason: ReasonInvalidVersion, Field: "x402Version"}
	}
	if err != nil {
		return PaymentRequirements{}, err
	}
	if err := checkAuthorization(req, p.Payload.Authorization, now); err != nil {
		return PaymentRequirements{}, err
	}
	return req, nil
}

// sameOffer compares what decides the money: any difference is a different offer.
func sameOffer(a, b PaymentRequirements) bool {
	return a.Scheme == b.Scheme && a.Network == b.Network && a.Amount == b.Amount &&
		sameAddress(a.Asset, b.Asset) && sameAddress(a.PayTo, b.PayTo) &&
		a.MaxTimeoutSeconds == b.MaxTimeoutSeconds &&
		a.Extra.Name == b.Extra.Name && a.Extra.Version == b.Extra.Version &&
		a.Extra.AssetTransferMethod == b.Extra.AssetTransferMethod
}

// matchAccepted returns the offer equal to accepted, or the most specific
// reason none is: the first property, in order of what narrows the offers,
// on which accepted parts from all of them.
func matchAccepted(offered []PaymentRequirements, accepted PaymentRequirements) (PaymentRequirements, error) {
	for _, o := range offered {
		if sameOffer(o, accepted) {
			return o, nil
		}
	}
	steps := []struct {
		same func(o PaymentRequirements) bool
		err  *Error
	}{
		{func(o PaymentRequirements) bool { return o.Scheme == accepted.Scheme },
			&Error{Reason: ReasonInvalidScheme, Field: "accepted.scheme", Detail: "not offered"}},
		{func(o PaymentRequirements) bool { return o.Network == accepted.Network },
			&Error{Reason: ReasonInvalidNetwork, Field: "accepted.network", Detail: "not offered"}},
		{func(o PaymentRequirements) bool { return sameAddress(o.Asset, accepted.Asset) },
			&Error{Reason: ReasonNoMatchingOffer, Field: "accepted.asset", Detail: "not offered"}},
		{func(o PaymentRequirements) bool { return sameAddress(o.PayTo, accepted.PayTo) },
			&Error{Reason: ReasonRecipientMismatch, Field: "accepted.payTo", Detail: "not the offered payee"}},
		{func(o PaymentRequirements) bool { return o.Amount == accepted.Amount },
			&Error{Reason: ReasonValueMismatch, Field: "accepted.amount", Detail: "not the offered price"}},
	}
	left := offered
	for _, s := range steps {
		var next []PaymentRequirements
		for _, o := range left {
			if s.same(o) {
				next = append(next, o)
			}
		}
		if len(next) == 0 {
			return PaymentRequirements{}, s.err
		}
		left = next
	}
	return PaymentRequirements{}, &Error{Reason: ReasonNoMatchingOffer, Field: "accepted", Detail: "differs from the offer in maxTimeoutSeconds or extra"}
}

func matchV1(offered []PaymentRequirements, p PaymentPayload) (PaymentRequirements, error) {
	chain, err := chainIDOf(p.Network, true)
	if err != nil {
		return PaymentRequirements{}, err
	}
	a := p.Payload.Authorization
	var onChain []PaymentRequirements
	for _, o := range offered {
		if id, err := chainIDOf(o.Network, false); err == nil && id == chain && o.Scheme == p.Scheme {
			onChain = append(onChain, o)
		}
	}
	if len(onChain) == 0 {
		return PaymentRequirements{}, &Error{Reason: ReasonInvalidNetwork, Field: "network", Detail: "not offered"}
	}
	var payee []PaymentRequirements
	for _, o := range onChain {
		if sameAddress(o.PayTo, a.To) {
			payee = append(payee, o)
		}
	}
	if len(payee) == 0 {
		return PaymentRequirements{}, &Error{Reason: ReasonRecipientMismatch, Field: "payload.authorization.to", Detail: "not the offered payee"}
	}
	for _, o := range payee {
		if o.Amount == a.Value {
			return o, nil
		}
	}
	return PaymentRequirements{}, &Error{Reason: ReasonValueMismatch, Field: "payload.authorization.value", Detail: "not the offered price"}
}

// unixOf reads a validated decimal uint256 as seconds, saturating at MaxInt64.
func unixOf(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return math.MaxInt64 // validated: only overflow gets here
	}
	return n
}

func checkAuthorization(req PaymentRequirements, a Authorization, now time.Time) error {
	if !sameAddress(a.To, req.PayTo) {
		return &Error{Reason: ReasonRecipientMismatch, Field: "payload.authorization.to", Detail: "not the offered payee"}
	}
	if a.Value != req.Amount {
		return &Error{Reason: ReasonValueMismatch, Field: "payload.authorization.value", Detail: "not the offered price"}
	}
	t := now.Unix()
	if unixOf(a.ValidAfter) > t {
		return &Error{Reason: ReasonNotYetValid, Field: "payload.authorization.validAfter", Detail: "in the future"}
	}
	before := unixOf(a.ValidBefore)
	if t >= before {
		return &Error{Reason: ReasonExpired, Field: "payload.authorization.validBefore", Detail: "passed"}
	}
	if before-t > req.MaxTimeoutSeconds+int64(ClockSkew/time.Second) {
		return &Error{Reason: ReasonValidityTooLong, Field: "payload.authorization.validBefore", Detail: "further out than maxTimeoutSeconds"}
	}
	return nil
}
