package authz_test

import (
	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
)

// runtimeFor builds the runtime serve builds for cfg (cmd_serve.go's
// authzRuntime; config does not import authz, so the tests map it here).
func runtimeFor(cfg *config.Config) (*authz.Runtime, error) {
	return authz.NewRuntime(cfg.Policy, cfg.Chain, authz.Options{
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
