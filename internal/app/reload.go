package app

import (
	"context"
	"reflect"
	"time"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/internal/watch"
)

// watchConfig registers the watch of the config file itself.
func (a *App) watchConfig() {
	a.reloads = append(a.reloads, reload{"config", func(ctx context.Context, every time.Duration) {
		watch.File(ctx, a.cfg.Path, every, a.reloadConfig)
	}})
}

// reloadConfig applies a changed config file. Only the policy, identity and
// response settings change live; the log says which other edits need a
// restart. A config that does not load keeps the last good one in force.
func (a *App) reloadConfig() {
	log := a.log
	unchanged := watch.Unchanged(a.cfg.Path)
	next, err := config.Load(a.cfg.Path)
	if !unchanged() {
		// Written again while it was read: maybe read half written. The
		// watch reports the new write once it settles.
		log.Info("config changed while it was read; waiting for it to settle", "file", a.cfg.Path)
		return
	}
	if err == nil {
		var rules *authz.Rules
		if rules, err = authzconfig.RulesWith(next, a.gate()); err == nil {
			a.server.Swap(rules)
		}
	}
	a.metrics.Reloaded("config", err, float64(time.Now().Unix()))
	if err != nil {
		log.Error("config reload failed; keeping the last good config", "error", err.Error())
		return
	}
	if next.Server != a.cfg.Server || next.Entitlements != a.cfg.Entitlements || next.QuotaStore != a.cfg.QuotaStore ||
		next.Admin != a.cfg.Admin || next.Reload != a.cfg.Reload {
		log.Warn("config reloaded, but server, entitlements, quota_store, admin and reload settings take effect only after a restart")
	}
	if tracingChanged(a.cfg.Tracing, next.Tracing) {
		log.Warn("config reloaded, but tracing settings take effect only after a restart")
	}
	if next.Paid() != (a.payments != nil) || !reflect.DeepEqual(next.Payments, a.cfg.Payments) {
		log.Warn("config reloaded, but payments settings take effect only after a restart (route prices follow the reload)")
	}
	if next.Metered() && a.metering == nil {
		log.Warn("config reloaded with a metered route, but metering starts only after a restart: until then its requests are reserved and never settled")
	}
	// Records were vetted against the old plans: check them against the new.
	if a.fileSrc != nil {
		if err := a.fileSrc.Reload(); err != nil {
			log.Warn("entitlements no longer valid under the new config", "error", err.Error())
		}
	}
	a.metrics.QuotaPolicies(next.Policy.QuotaPolicies())
	// Marked, not dropped: while the source cannot answer, the records
	// keep serving under stale_if_error.
	a.cache.Revalidate()
	log.Info("config reloaded", "file", a.cfg.Path)
}
