// Package app is tollgate's composition root: it builds a server from a
// loaded config (metrics, quota store, entitlement source, cache, decision
// server, reload watches) and runs it (Listen, Serve with the drain,
// Close). The CLI's serve, validate and check all build through New, so
// what validate accepts and what check decides is what serve runs.
//
// The order of New is fixed: metrics first, so every part reports to them
// from its first moment; then the quota store and the source (the two that
// may hold connections); then the cache and the decision server over them.
package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/internal/tlsreload"
	"github.com/tollgate-authz/tollgate/metrics"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/policy"
)

// Options are what the config file does not say: how this process runs.
type Options struct {
	// Version is reported in metrics, in the log and to the http source.
	Version string
	// Logger gets the server's log; nil discards it. A Check never waits
	// for its log line only if Logger's writer does not block (the CLI
	// gives it an asynclog.Writer).
	Logger *slog.Logger
	// LogWriter, when set, is the writer under Logger's JSON handler
	// (slog.NewJSONHandler, without ReplaceAttr or AddSource): decision
	// lines are then encoded by hand straight into it (authz.Deps.DecisionLog),
	// the same bytes for a fraction of the CPU. It must be safe for
	// concurrent use.
	LogWriter io.Writer
	// LogDropped, when set, counts the log lines the writer dropped, for
	// tollgate_log_dropped_total.
	LogDropped func() int64
	// Lazy skips the first connection New makes to each Redis: clients
	// connect on first use instead. Built lazily, validate touches no
	// network (unless told to --connect).
	Lazy bool
	// WrapQuotas, when set, wraps the quota store the decision server
	// spends from (check's dry run, which spends nothing).
	WrapQuotas func(authz.Quotas) authz.Quotas
	// After replaces time.After while the drain waits out
	// server.shutdown_delay; tests end the delay themselves.
	After func(time.Duration) <-chan time.Time
}

// App is one tollgate server, built and ready to Listen and Serve.
type App struct {
	cfg  *config.Config
	opts Options
	log  *slog.Logger

	metrics *metrics.Metrics
	quotas  *quotaStore
	source  entitlement.Source
	fileSrc *filesource.Source // the file source, checked again on a config reload
	summary string             // what the source is, for the log and validate
	cache   *cache.Cache
	server  *authz.Server
	// metering settles metered routes and exports usage; nil without them.
	metering *metering
	// payments makes refusals payable (x402); nil without prices or top-ups.
	payments *payments
	// tracing is OpenTelemetry; nil unless tracing.enabled.
	tracing *tracing
	// serverTLS is server.tls, reloaded while serving; nil without TLS.
	serverTLS *tlsreload.Reloader

	// reloads are the file watches paced by reload.poll_interval.
	reloads []reload
	// background runs while serving: the sources' own watches and
	// subscriptions, paced by their own settings.
	background []func(ctx context.Context)
	// pings reach every Redis the app uses (validate --connect).
	pings []ping
	// handlers are extra admin endpoints (the Stripe webhook).
	handlers map[string]http.Handler
	closers  []func()

	listening *listeners
	closeOnce sync.Once
}

// reload is one watched file: run polls it every interval until ctx ends.
type reload struct {
	what string
	run  func(ctx context.Context, every time.Duration)
}

// ping checks that a dependency answers; what is its place in the config.
type ping struct {
	what string
	run  func(ctx context.Context) error
}

// New builds the server cfg describes. On error, whatever was opened is
// closed again. Close releases what New opened.
func New(cfg *config.Config, o Options) (_ *App, err error) {
	a := &App{cfg: cfg, opts: o, log: o.Logger, handlers: map[string]http.Handler{}}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	a.metrics = metrics.New(o.Version, func() int {
		if a.cache == nil {
			return 0
		}
		return a.cache.Len()
	})
	if o.LogDropped != nil {
		a.metrics.LogDropped(o.LogDropped)
	}
	if err := a.openTracing(); err != nil {
		return nil, err
	}
	if a.quotas, err = a.openQuotaStore(); err != nil {
		return nil, err
	}
	a.closers = append(a.closers, a.quotas.close)
	if a.source, err = a.openSource(); err != nil {
		return nil, err
	}
	cc := cfg.Entitlements.Cache
	var counted = a.source
	if cfg.Entitlements.Source != "http" && cfg.Entitlements.Source != "redis" {
		// http and redis report finer outcomes themselves.
		counted = observedSource{a.source, cfg.Entitlements.Source, a.metrics}
	}
	counted = a.traceSource(counted)
	a.cache = cache.New(counted, cache.Options{
		MaxEntries: cc.MaxEntries, NegativeMaxEntries: cc.NegativeMaxEntries, TTL: cc.TTL, NegativeTTL: cc.NegativeTTL,
		StaleIfError: cc.StaleIfError, Timeout: cc.Timeout,
	})
	a.metrics.QuotaPolicies(cfg.Policy.QuotaPolicies())
	if err := a.openMetering(); err != nil {
		return nil, err
	}
	if err := a.openPayments(); err != nil {
		return nil, err
	}
	rules, err := authzconfig.RulesWith(cfg, a.gate())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Path, err)
	}
	var quotas authz.Quotas = a.quotas
	if o.WrapQuotas != nil {
		quotas = o.WrapQuotas(quotas)
	}
	deps := authz.Deps{Entitlements: a.cache, Quotas: quotas, Observer: a.metrics, Log: a.log, DecisionLog: o.LogWriter}
	if a.metering != nil {
		deps.MeteringClosed = a.metering.closed
	}
	a.traceDecisions(&deps)
	a.server = authz.NewServer(rules, deps)
	if err := a.openServerTLS(); err != nil {
		return nil, err
	}
	a.watchConfig()
	return a, nil
}

// Close releases the connections New opened and hands quota leases back.
// Serve does not close; call Close after it returns. Safe to call twice.
func (a *App) Close() {
	a.closeOnce.Do(func() {
		if l := a.listening; l != nil {
			l.close()
		}
		for i := len(a.closers) - 1; i >= 0; i-- {
			a.closers[i]()
		}
	})
}

// Config is the config the app was built from.
func (a *App) Config() *config.Config { return a.cfg }

// Metrics are the app's collectors.
func (a *App) Metrics() *metrics.Metrics { return a.metrics }

// SourceSummary says what the entitlement source is, for example
// "3 subjects in /etc/tollgate/entitlements.yaml" or "redis at host:6379".
func (a *App) SourceSummary() string { return a.summary }

// Decide decides one request as a served Check would, without the gRPC
// server: what check prints.
func (a *App) Decide(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, authz.Result) {
	return a.server.Decide(ctx, req)
}

// Connect checks that every Redis the config names answers within ctx,
// and returns the first that does not, named by its place in the config.
func (a *App) Connect(ctx context.Context) error {
	for _, p := range a.pings {
		if err := p.run(ctx); err != nil {
			return a.cfg.Errorf(p.what+".address", "%v", err)
		}
	}
	return nil
}

// policy is the policy in force (after reloads).
func (a *App) policy() *policy.Policy {
	if a.server == nil {
		return a.cfg.Policy
	}
	return a.server.Rules().Policy()
}

// gate is the payment gate, or nil.
func (a *App) gate() *payment.Gate {
	if a.payments == nil {
		return nil
	}
	return a.payments.gate
}
