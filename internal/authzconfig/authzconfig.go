// Package authzconfig builds the authz rules from a loaded config: the one
// place that maps config fields to authz.Options. It sits apart from both so
// that reading a config does not link authz, gRPC and the Envoy protos, and
// serve, its tests and the benchmarks build the runtime the same way.
package authzconfig

import (
	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/reservation"
)

// Rules builds what a Check reads from cfg: the policy, the identity chain
// and the response settings.
func Rules(cfg *config.Config) (*authz.Rules, error) { return RulesWith(cfg, nil) }

// RulesWith is Rules whose refusals are payable through pay (nil: none).
func RulesWith(cfg *config.Config, pay *payment.Gate) (*authz.Rules, error) {
	var signer *reservation.Signer
	if cfg.Metered() {
		// config.Parse checked the variable and the key's length.
		key, err := envvar.Lookup(cfg.Metering.KeyEnv)
		if err != nil {
			return nil, cfg.Errorf("metering.key_env", "%v", err)
		}
		if signer, err = reservation.NewSigner([]byte(key)); err != nil {
			return nil, cfg.Errorf("metering.key_env", "%v", err)
		}
	}
	return authz.NewRules(cfg.Policy, cfg.Chain, authz.Options{
		Reservations:    signer,
		Payments:        pay,
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
