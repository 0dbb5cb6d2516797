package authz

import (
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate-authz/tollgate/policy"
)

// Shed answers a Check without deciding it, for when tollgate has more
// Checks in flight than it allows: 503 entitlements_unavailable with
// Retry-After, at once, instead of a queue that outlasts Envoy's timeout.
// In shadow mode the request is let through, as every shadow decision is.
//
// req is what a unary interceptor is handed for a Check: a *Request when
// Register serves it, a *authv3.CheckRequest when
// authv3.RegisterAuthorizationServer does. For anything else Shed answers
// nothing and reports false.
func (s *Server) Shed(req any) (*authv3.CheckResponse, bool) {
	var r request
	switch req := req.(type) {
	case *Request:
		r = req.r
	case *authv3.CheckRequest:
		r = newRequest(req)
	default:
		return nil, false
	}
	rt := s.rt.Load()
	now := s.now()
	res := Result{RequestID: r.requestID, Code: policy.EntitlementsUnavailable, now: now}
	d := policy.Decision{Code: policy.EntitlementsUnavailable, Denied: -1}
	var resp *authv3.CheckResponse
	if rt.opts.Shadow {
		res.Allowed, res.Shadow, res.Status = true, true, rt.status.Status(d.Code)
		resp = rt.allow(&r, &d, &res, new(allowResponse))
	} else {
		res.Status = rt.status.Status(d.Code)
		resp = rt.deny(&r, &d, &res, new(denyResponse))
	}
	res.Duration = s.now().Sub(now)
	if s.obs != nil {
		s.obs.ObserveCheck(&res)
	}
	return resp, true
}
