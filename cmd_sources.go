package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/entitlement/httpsource"
	"github.com/tollgate-authz/tollgate/entitlement/stripesource"
	"github.com/tollgate-authz/tollgate/metrics"
)

// openSource builds the configured entitlement source, and registers what
// it needs while serving: watchers, admin handlers and closers.
func (p *pipeline) openSource(log *slog.Logger) (entitlement.Source, error) {
	cfg := p.cfg
	ec := cfg.Entitlements
	switch ec.Source {
	case "http":
		h := ec.HTTP
		src, err := httpsource.New(httpsource.Options{
			BaseURL: h.URL, Token: h.Token, TokenEnv: h.TokenEnv, Timeout: h.Timeout,
			MaxInFlight: h.MaxInFlight, MaxIdleConns: h.MaxIdleConns, IdleConnTimeout: h.IdleConnTimeout,
			Breaker: httpsource.BreakerOptions{
				Failures: h.Breaker.Failures, Cooldown: h.Breaker.Cooldown, MaxRetryAfter: h.Breaker.MaxRetryAfter,
			},
			Version:  version,
			Logger:   log,
			Observer: sourceObserver{p.metrics, "http"},
		})
		if err != nil {
			return nil, fmt.Errorf("entitlements.http: %w", err)
		}
		p.closers = append(p.closers, func() { _ = src.Close() })
		p.describe = "http source at " + h.URL
		return src, nil

	case "stripe":
		return p.openStripe(log)

	case "redis":
		return p.openRedis(log)
	}

	src, err := filesource.Open(ec.File.Path, filesource.Options{
		// Records are vetted against the policy in force, so a reload of
		// either file is checked against the other.
		Check: func(e *entitlement.Entitlement) (string, error) {
			return p.policy().CheckEntitlement(e)
		},
		OnReload: func(err error) {
			p.metrics.Reloaded("entitlements", err, float64(time.Now().Unix()))
			if err != nil {
				log.Error("entitlements reload failed; keeping the last good data", "error", err.Error())
				return
			}
			p.cache.Revalidate()
			log.Info("entitlements reloaded", "file", ec.File.Path, "subjects", p.fileSrc.Len())
		},
	})
	if err != nil {
		return nil, err
	}
	p.fileSrc = src
	p.describe = fmt.Sprintf("%d subjects in %s", src.Len(), ec.File.Path)
	p.watchers = append(p.watchers, func(ctx context.Context) { src.Watch(ctx, ec.File.PollInterval) })
	return src, nil
}

func (p *pipeline) openStripe(log *slog.Logger) (entitlement.Source, error) {
	sc := p.cfg.Entitlements.Stripe
	key := os.Getenv(sc.SecretKeyEnv)
	if key == "" {
		return nil, fmt.Errorf("entitlements.stripe.secret_key_env: $%s is empty", sc.SecretKeyEnv)
	}
	var customers *stripesource.Map
	if sc.Customers != "" {
		m, err := stripesource.OpenMap(sc.Customers, stripesource.MapOptions{OnReload: func(err error) {
			p.metrics.Reloaded("entitlements", err, float64(time.Now().Unix()))
			if err != nil {
				log.Error("stripe customer map reload failed; keeping the last good map", "error", err.Error())
				return
			}
			// A changed map can move a key to another subject: ask Stripe
			// again, and serve the last answers while it cannot answer.
			p.cache.Revalidate()
			log.Info("stripe customer map reloaded", "file", sc.Customers)
		}})
		if err != nil {
			return nil, err
		}
		customers = m
		p.watchers = append(p.watchers, func(ctx context.Context) { m.Watch(ctx, sc.PollInterval) })
	}
	src, err := stripesource.New(stripesource.Options{
		SecretKey: key, Customers: customers, SubjectMetadataKey: sc.SubjectMetadataKey,
		APIBase: sc.APIBase, APIVersion: sc.APIVersion, Timeout: sc.Timeout, MaxInFlight: sc.MaxInFlight,
		PlanMetadataKey: sc.PlanMetadataKey,
	})
	if err != nil {
		return nil, fmt.Errorf("entitlements.stripe: %w", err)
	}
	p.describe = "stripe"
	if sc.Webhook.SecretEnv != "" {
		secrets := strings.Split(os.Getenv(sc.Webhook.SecretEnv), ",")
		if secrets[0] == "" {
			return nil, fmt.Errorf("entitlements.stripe.webhook.secret_env: $%s is empty", sc.Webhook.SecretEnv)
		}
		wh, err := stripesource.NewWebhook(stripesource.WebhookOptions{
			Secrets: secrets, Tolerance: sc.Webhook.Tolerance, MaxBody: sc.Webhook.MaxBody, Log: log,
			Invalidate: func(customer string) {
				p.metrics.Invalidated("webhook")
				for _, k := range src.Keys(customer) {
					p.cache.Invalidate(k)
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("entitlements.stripe.webhook: %w", err)
		}
		p.handlers["POST /webhooks/stripe"] = wh
	}
	return src, nil
}

// observedSource counts and times every call the cache makes to a source.
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
