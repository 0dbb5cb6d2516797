package app

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/quota"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

// payments is what a config with payments adds: the gate the decision
// server asks, the store of claimed payments and the reconciler.
type payments struct {
	gate  *payment.Gate
	store paystore.Store
}

// topUpper is a quota store that can credit a top-up.
type topUpper interface {
	TopUp(ctx context.Context, group, key string, n int64, reset time.Time) (int64, error)
}

// openPayments builds the gate when a route has a price or top-ups are
// offered. It runs after openMetering: payment events go to its outbox.
func (a *App) openPayments() error {
	cfg := a.cfg
	if !cfg.Paid() {
		return nil
	}
	pc := cfg.Payments
	xc := pc.X402
	p := &payments{}
	switch pc.Store {
	case "redis":
		client, err := a.dialRedis(pc.Redis.RedisConn, "payments.redis", 0)
		if err != nil {
			return err
		}
		p.store = paystore.NewRedis(client.UniversalClient, pc.Redis.Prefix)
	default:
		max := pc.MaxEntries
		if max == 0 {
			max = 100000
		}
		p.store = paystore.NewMemory(time.Now, max)
	}
	fac := &x402.HTTPFacilitator{
		URL: xc.Facilitator.URL, Client: &http.Client{},
		VerifyTimeout: xc.Facilitator.VerifyTimeout, SettleTimeout: xc.Facilitator.SettleTimeout, SupportedTimeout: xc.Facilitator.VerifyTimeout,
	}
	if xc.Facilitator.TokenEnv != "" {
		tok, err := envvar.Lookup(xc.Facilitator.TokenEnv)
		if err != nil {
			return cfg.Errorf("payments.x402.facilitator.token_env", "%v", err)
		}
		fac.Header = http.Header{"Authorization": {"Bearer " + tok}}
	}
	pm := a.metrics.Payments()
	o := payment.Options{
		Network: xc.Network, Asset: xc.Asset, PayTo: xc.PayTo, AssetName: xc.AssetName, AssetVersion: xc.AssetVersion,
		Decimals: *xc.Decimals, Currency: xc.Currency, MaxTimeoutSeconds: xc.MaxTimeoutSeconds,
		// An authorization must outlive the verify, the upstream's answer
		// and the settle: it is settled last.
		MinValidity: max(20*time.Second, xc.Facilitator.VerifyTimeout+xc.Facilitator.SettleTimeout+5*time.Second),
		Facilitator: fac, Store: p.store, Credit: a.creditTopUp, Lookup: a.lookupSubject, Observe: pm.Observe, Log: a.log,
	}
	for _, t := range pc.TopUps {
		o.TopUps = append(o.TopUps, payment.TopUp{Credits: t.Credits, Price: t.Price})
	}
	if m := pc.MPP; m.Enabled {
		key, err := envvar.Lookup(m.KeyEnv)
		if err != nil {
			return cfg.Errorf("payments.mpp.key_env", "%v", err)
		}
		o.MPP = &payment.MPP{Key: []byte(key), Realm: m.Realm, TTL: m.TTL}
	}
	if m := a.metering; m != nil {
		o.Record = func(ctx context.Context, ev usage.Event) error {
			err := gatedBox{m.box, m}.Append(ctx, []usage.Event{ev})
			if err == nil {
				m.nudge.Notify()
			}
			return err
		}
	}
	g, err := payment.New(o)
	if err != nil {
		return cfg.Errorf("payments.x402", "%v", err)
	}
	p.gate = g
	rec := &paystore.Reconciler{
		Store: p.store, Facilitator: fac, Observe: pm.Reconciled,
		Requirements: func(rec paystore.Record) (x402.PaymentRequirements, bool) {
			_, req, err := g.Requirements(rec, a.route)
			return req, err == nil
		},
		OnError: func(err error) { a.log.Warn("x402 reconciliation", "error", err.Error()) },
		// A top-up whose settle outcome was unknown (its Check answered 503)
		// is credited once found settled; told once per record.
		OnSettled: func(ctx context.Context, rec paystore.Record, _ string) { g.Reconciled(ctx, rec, a.route) },
		// Longer than a live settle can take (the ext_proc settle's context
		// is settle_timeout + 1s), twice over: its write-ahead mark is
		// Unknown too, and must not be raced.
		MinAge: 2 * (xc.Facilitator.SettleTimeout + time.Second),
	}
	every := pc.ReconcileEvery
	a.background = append(a.background, func(ctx context.Context) { rec.Run(ctx, every) })
	a.payments = p
	return nil
}

// route is the route of the policy in force named name, or nil.
func (a *App) route(name string) *policy.Route {
	for _, r := range a.policy().Routes() {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// creditTopUp adds credits bought to e's credits counter, below zero:
// the balance the source reports plus what was bought here.
func (a *App) creditTopUp(ctx context.Context, e *entitlement.Entitlement, credits int64, now time.Time) error {
	tu, ok := a.quotas.Quotas.(topUpper)
	if !ok {
		return errors.New("the quota store cannot credit top-ups")
	}
	sp := policy.CreditsCounter(e, now)
	_, err := tu.TopUp(ctx, e.Subject, quota.Key(e.Subject, sp.Counter, sp.Start), credits, sp.Reset)
	return err
}

// lookupSubject is the entitlement of subject, for a reconciled top-up.
func (a *App) lookupSubject(ctx context.Context, subject string) (*entitlement.Entitlement, error) {
	e, _, err := a.cache.Get(ctx, entitlement.Key{Kind: entitlement.BySubject, ID: subject})
	return e, err
}

// paymentSettler adapts the gate to the ext_proc server.
type paymentSettler struct{ a *App }

func (s paymentSettler) Settle(ctx context.Context, key string, status int) (string, []byte) {
	p := s.a.payments
	ctx, cancel := context.WithTimeout(ctx, s.a.cfg.Payments.X402.Facilitator.SettleTimeout+time.Second)
	defer cancel()
	receipt, err := p.gate.Settle(ctx, key, status, s.a.route)
	var ref *payment.Refusal
	if errors.As(err, &ref) {
		body, _ := json.Marshal(map[string]any{
			"type":   s.a.cfg.Responses.ProblemTypeBase + policy.PaymentInvalid.String(),
			"title":  "Payment refused",
			"status": 402,
			"detail": ref.Detail,
			"code":   policy.PaymentInvalid.String(),
			"reason": ref.Reason,
		})
		return "", body
	}
	if err != nil {
		s.a.log.Warn("x402 payment not settled on the response", "error", err.Error())
	}
	return receipt, nil
}

func (s paymentSettler) Abandon(key string) { s.a.payments.gate.Abandon(key) }
