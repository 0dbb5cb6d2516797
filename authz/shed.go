package authz

import (
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate-authz/tollgate/policy"
)

// Shed answers a Check without deciding it, for when tollgate has more
// Checks in flight than it allows: 503 entitlements_unavailable with
// Retry-After, at once, instead of a queue that outlasts Envoy's timeout.
// In shadow mode the request is let through, as every shadow decision is.
func (s *Server) Shed(cr *authv3.CheckRequest) *authv3.CheckResponse {
	rt := s.rt.Load()
	r := newRequest(cr)
	now := s.now()
	res := Result{RequestID: r.requestID, Code: policy.EntitlementsUnavailable, now: now}
	d := policy.Decision{Code: policy.EntitlementsUnavailable, Denied: -1}
	var resp *authv3.CheckResponse
	if rt.opts.Shadow {
		res.Allowed, res.Shadow, res.Status = true, true, rt.status.Status(d.Code)
		resp = rt.allow(&r, &d, &res)
	} else {
		res.Status = rt.status.Status(d.Code)
		resp = rt.deny(&r, &d, &res)
	}
	res.Duration = s.now().Sub(now)
	if s.obs != nil {
		s.obs.ObserveCheck(&res)
	}
	return resp
}
