package app

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/metrics"
	"github.com/tollgate-authz/tollgate/reservation"
	"github.com/tollgate-authz/tollgate/settle"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/usage/export"
	"github.com/tollgate-authz/tollgate/usage/outbox"
)

// metering is what a config with metered routes adds: the outbox, the
// settler behind the access log and ext_proc services, and the export.
type metering struct {
	settler *settle.Settler
	box     usage.Outbox
	// full is set while the outbox refuses events (when_full: refuse
	// closes metered routes then).
	full     atomic.Bool
	max      int
	refuse   bool
	exporter usage.Exporter
	nudge    *export.Nudge
}

// closed reports whether metered requests are refused now.
func (m *metering) closed() bool { return m.refuse && m.full.Load() }

// openMetering opens the outbox and the settler when a route has a meter.
func (a *App) openMetering() error {
	cfg := a.cfg
	if !cfg.Metered() {
		return nil
	}
	mc := cfg.Metering
	key, err := envvar.Lookup(mc.KeyEnv)
	if err != nil {
		return cfg.Errorf("metering.key_env", "%v", err)
	}
	signer, err := reservation.NewSigner([]byte(key))
	if err != nil {
		return cfg.Errorf("metering.key_env", "%v", err)
	}
	m := &metering{max: mc.Outbox.MaxEvents, refuse: mc.Outbox.WhenFull == "refuse", nudge: export.NewNudge()}
	if m.max == 0 {
		m.max = outbox.DefaultMaxEvents
	}
	switch mc.Outbox.Store {
	case "redis":
		client, err := a.dialRedis(mc.Outbox.Redis.RedisConn, "metering.outbox.redis", 0)
		if err != nil {
			return err
		}
		m.box = outbox.NewRedis(client.UniversalClient, outbox.RedisOptions{Prefix: mc.Outbox.Redis.Prefix, MaxEvents: m.max})
	default:
		f, err := outbox.OpenFile(mc.Outbox.Path, outbox.FileOptions{MaxEvents: m.max})
		if err != nil {
			return cfg.Errorf("metering.outbox.path", "%v", err)
		}
		m.box = f
	}
	a.closers = append(a.closers, func() { _ = m.box.Close() })
	if m.exporter, err = a.exporter(); err != nil {
		return err
	}
	um := a.metrics.Usage()
	var adj settle.Adjuster
	if q, ok := a.quotas.Quotas.(settle.Adjuster); ok {
		adj = q
	}
	m.settler, err = settle.New(settle.Options{
		Signer: signer, Quotas: adj, Outbox: gatedBox{m.box, m}, Policy: a.policy, Appended: m.nudge.Notify,
		Observer: um, Log: a.log,
	})
	if err != nil {
		return err
	}
	if m.exporter != nil {
		a.background = append(a.background, func(ctx context.Context) {
			export.Run(ctx, m.box, m.exporter, export.RunOptions{
				Wake: m.nudge.C(), Observer: exportObserver{um, m}, Logger: a.log, DrainTimeout: 5 * time.Second,
			})
		})
	} else {
		// Nothing exports: still read the backlog, for metrics and the gate.
		a.background = append(a.background, func(ctx context.Context) { a.watchBacklog(ctx, m, um) })
	}
	a.metering = m
	return nil
}

// watchBacklog reports the outbox's backlog every 15s while nothing exports.
func (a *App) watchBacklog(ctx context.Context, m *metering, um *metrics.Usage) {
	t := time.NewTicker(15 * time.Second)
	defer t.Stop()
	for {
		if s, err := m.box.Stats(ctx); err == nil {
			exportObserver{um, m}.Backlog(s)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// exporter is the configured exporter, or nil for export.to: none.
func (a *App) exporter() (usage.Exporter, error) {
	e := a.cfg.Metering.Export
	secret := func(path, name string) (string, error) {
		if name == "" {
			return "", nil
		}
		v, err := envvar.Lookup(name)
		if err != nil {
			return "", a.cfg.Errorf(path, "%v", err)
		}
		return v, nil
	}
	switch e.To {
	case "stripe":
		key, err := secret("metering.export.stripe.secret_key_env", e.Stripe.SecretKeyEnv)
		if err != nil {
			return nil, err
		}
		o := export.StripeOptions{SecretKey: key, APIBase: e.Stripe.APIBase, EventNames: e.Stripe.EventNames, RatePerSecond: e.Stripe.RatePerSecond}
		if err := o.Validate(); err != nil {
			return nil, a.cfg.Errorf("metering.export.stripe", "%v", err)
		}
		return export.NewStripe(o), nil
	case "openmeter":
		tok, err := secret("metering.export.openmeter.token_env", e.OpenMeter.TokenEnv)
		if err != nil {
			return nil, err
		}
		o := export.OpenMeterOptions{URL: e.OpenMeter.URL, Token: tok, Source: e.OpenMeter.Source, Types: e.OpenMeter.Types}
		if err := o.Validate(); err != nil {
			return nil, a.cfg.Errorf("metering.export.openmeter", "%v", err)
		}
		return export.NewOpenMeter(o), nil
	case "http":
		tok, err := secret("metering.export.http.token_env", e.HTTP.TokenEnv)
		if err != nil {
			return nil, err
		}
		o := export.HTTPOptions{URL: e.HTTP.URL, Token: tok}
		if err := o.Validate(); err != nil {
			return nil, a.cfg.Errorf("metering.export.http", "%v", err)
		}
		return export.NewHTTP(o), nil
	}
	return nil, nil
}

// exportObserver counts exports and opens or closes the gate from the
// backlog the exporter reads.
type exportObserver struct {
	*metrics.Usage
	m *metering
}

func (o exportObserver) Backlog(s usage.Stats) {
	o.Usage.Backlog(s)
	o.m.full.Store(s.Backlog >= o.m.max)
}

// gatedBox closes the gate the moment the outbox refuses an event for
// being full; the exporter's backlog reading opens it again.
type gatedBox struct {
	usage.Outbox
	m *metering
}

func (g gatedBox) Append(ctx context.Context, evs []usage.Event) error {
	err := g.Outbox.Append(ctx, evs)
	if errors.Is(err, usage.ErrFull) {
		g.m.full.Store(true)
	}
	return err
}
