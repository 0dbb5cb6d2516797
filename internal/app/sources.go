package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/entitlement/httpsource"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/entitlement/stripesource"
	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/metrics"
)

// openSource builds the configured entitlement source, and registers what
// it needs while serving: background watches, admin handlers and closers.
func (a *App) openSource() (entitlement.Source, error) {
	switch a.cfg.Entitlements.Source {
	case "http":
		return a.openHTTP()
	case "stripe":
		return a.openStripe()
	case "redis":
		return a.openRedis()
	}
	return a.openFile()
}

// fileError puts the config field that names a file in front of an error
// opening it (missing, unreadable). Errors inside the file name their own
// file and line already, and are returned as they are.
func (a *App) fileError(field string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return a.cfg.Errorf(field, "%v", err)
	}
	return err
}

func (a *App) openFile() (entitlement.Source, error) {
	fc := a.cfg.Entitlements.File
	src, err := filesource.Open(fc.Path, filesource.Options{
		// Records are vetted against the policy in force, so a reload of
		// either file is checked against the other.
		Check: func(e *entitlement.Entitlement) (string, error) {
			return a.policy().CheckEntitlement(e)
		},
		OnReload: func(err error) {
			a.metrics.Reloaded("entitlements", err, float64(time.Now().Unix()))
			if err != nil {
				a.log.Error("entitlements reload failed; keeping the last good data", "error", err.Error())
				return
			}
			a.cache.Revalidate()
			a.log.Info("entitlements reloaded", "file", fc.Path, "subjects", a.fileSrc.Len())
		},
	})
	if err != nil {
		return nil, a.fileError("entitlements.file.path", err)
	}
	a.fileSrc = src
	a.summary = fmt.Sprintf("%d subjects in %s", src.Len(), fc.Path)
	a.background = append(a.background, func(ctx context.Context) { src.Watch(ctx, fc.PollInterval) })
	return src, nil
}

func (a *App) openHTTP() (entitlement.Source, error) {
	h := a.cfg.Entitlements.HTTP
	src, err := httpsource.New(httpsource.Options{
		BaseURL: h.URL, Token: h.Token, TokenEnv: h.TokenEnv, Timeout: h.Timeout,
		MaxInFlight: h.MaxInFlight, MaxIdleConns: h.MaxIdleConns, IdleConnTimeout: h.IdleConnTimeout,
		Breaker: httpsource.BreakerOptions{
			Failures: h.Breaker.Failures, Cooldown: h.Breaker.Cooldown, MaxRetryAfter: h.Breaker.MaxRetryAfter,
		},
		Version:  a.opts.Version,
		Logger:   a.log,
		Observer: sourceObserver{a.metrics, "http"},
	})
	if err != nil {
		return nil, a.cfg.Errorf("entitlements.http", "%v", err)
	}
	a.closers = append(a.closers, func() { _ = src.Close() })
	a.summary = "http source at " + h.URL
	return src, nil
}

func (a *App) openStripe() (entitlement.Source, error) {
	sc := a.cfg.Entitlements.Stripe
	// Checked by config.Parse; read again here, as it is now.
	key, err := envvar.Lookup(sc.SecretKeyEnv)
	if err != nil {
		return nil, a.cfg.Errorf("entitlements.stripe.secret_key_env", "%v", err)
	}
	var customers *stripesource.Map
	if sc.Customers != "" {
		m, err := stripesource.OpenMap(sc.Customers, stripesource.MapOptions{OnReload: func(err error) {
			a.metrics.Reloaded("entitlements", err, float64(time.Now().Unix()))
			if err != nil {
				a.log.Error("stripe customer map reload failed; keeping the last good map", "error", err.Error())
				return
			}
			// A changed map can move a key to another subject: ask Stripe
			// again, and serve the last answers while it cannot answer.
			a.cache.Revalidate()
			a.log.Info("stripe customer map reloaded", "file", sc.Customers)
		}})
		if err != nil {
			return nil, a.fileError("entitlements.stripe.customers", err)
		}
		customers = m
		a.background = append(a.background, func(ctx context.Context) { m.Watch(ctx, sc.PollInterval) })
	}
	src, err := stripesource.New(stripesource.Options{
		SecretKey: key, Customers: customers, SubjectMetadataKey: sc.SubjectMetadataKey,
		APIBase: sc.APIBase, APIVersion: sc.APIVersion, Timeout: sc.Timeout, MaxInFlight: sc.MaxInFlight,
		PlanMetadataKey: sc.PlanMetadataKey,
	})
	if err != nil {
		return nil, a.cfg.Errorf("entitlements.stripe", "%v", err)
	}
	a.summary = "stripe"
	if sc.Webhook.SecretEnv != "" {
		v, err := envvar.Lookup(sc.Webhook.SecretEnv)
		if err != nil {
			return nil, a.cfg.Errorf("entitlements.stripe.webhook.secret_env", "%v", err)
		}
		secrets := strings.Split(v, ",")
		wh, err := stripesource.NewWebhook(stripesource.WebhookOptions{
			Secrets: secrets, Tolerance: sc.Webhook.Tolerance, MaxBody: sc.Webhook.MaxBody, Log: a.log,
			Invalidate: func(customer string) {
				a.metrics.Invalidated("webhook")
				for _, k := range src.Keys(customer) {
					a.cache.Invalidate(k)
				}
			},
		})
		if err != nil {
			return nil, a.cfg.Errorf("entitlements.stripe.webhook", "%v", err)
		}
		a.handlers["POST /webhooks/stripe"] = wh
	}
	return src, nil
}

// openRedis builds the redis source and, while serving, a subscriber that
// drops a subject from the cache the moment any writer publishes a change.
func (a *App) openRedis() (entitlement.Source, error) {
	rc := a.cfg.Entitlements.Redis
	client, err := a.dialRedis(rc.RedisConn, "entitlements.redis", 0)
	if err != nil {
		return nil, err
	}
	src, err := redissource.New(redissource.Options{
		Client: client.UniversalClient, Prefix: rc.Prefix, Channel: rc.Channel, Timeout: rc.Timeout,
		Observer: sourceObserver{a.metrics, "redis"}, Logger: a.log,
	})
	if err != nil {
		return nil, a.cfg.Errorf("entitlements.redis", "%v", err)
	}
	a.summary = "redis at " + rc.Address
	a.background = append(a.background, func(ctx context.Context) {
		_ = src.Subscribe(ctx,
			func(subject string, digests []string) {
				a.metrics.Invalidated("pubsub")
				a.cache.InvalidateSubject(subject)
				for _, d := range digests {
					a.cache.InvalidateKey(d)
				}
			},
			// Messages published while the subscription was down are lost:
			// revalidate everything whenever it (re)connects. Nothing is
			// dropped: a Redis back from a restart may be loading or empty.
			a.cache.Revalidate)
	})
	return src, nil
}

// observedSource counts and times every call the cache makes to a source
// that does not report its own outcomes.
type observedSource struct {
	src  entitlement.Source
	name string
	m    *metrics.Metrics
}

func (o observedSource) Lookup(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
	start := time.Now()
	e, err := o.src.Lookup(ctx, k)
	outcome := "ok"
	switch {
	case errors.Is(err, entitlement.ErrNotFound):
		outcome = "not_found"
	case err != nil:
		outcome = "error"
		o.m.SourceError(o.name)
	}
	o.m.SourceCall(o.name, outcome, time.Since(start))
	return e, err
}

// sourceObserver feeds a source's own call outcomes (and the http source's
// breaker state) to metrics.
type sourceObserver struct {
	m    *metrics.Metrics
	name string
}

func (s sourceObserver) Call(_, outcome string, d time.Duration) {
	s.m.SourceCall(s.name, outcome, d)
	switch outcome {
	case "ok", "not_found", "canceled":
	default:
		s.m.SourceError(s.name)
	}
}
func (s sourceObserver) BreakerState(state string) { s.m.BreakerState(s.name, state) }
