// Package authzconfig builds the authz rules from a loaded config: the one
// place that maps config fields to authz.Options. It sits apart from both so
// that reading a config does not link authz, gRPC and the Envoy protos, and
// serve, its tests and the benchmarks build the runtime the same way.
package authzconfig

import (
	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
)

// Rules builds what a Check reads from cfg: the policy, the identity chain
// and the response settings.
func Rules(cfg *config.Config) (*authz.Rules, error) {
	return authz.NewRules(cfg.Policy, cfg.Chain, authz.Options{
		ProblemTypeBase: cfg.Responses.ProblemTypeBase,
		Realm:           cfg.Responses.Realm,
		RetryAfter:      cfg.Responses.RetryAfter,
		Status:          cfg.Statuses,
		HeaderPrefix:    cfg.Headers.Prefix,
		SubjectHeader:   cfg.Headers.Subject,
		PlanHeader:      cfg.Headers.Plan,
		Shadow:          cfg.Shadow,
		AllowSampleRate: *cfg.Log.AllowSampleRate,
	})
}
