package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/metrics"
)

// openRedis builds the redis source and, while serving, a subscriber that
// drops a subject from the cache the moment any writer publishes a change.
func (p *pipeline) openRedis(log *slog.Logger) (entitlement.Source, error) {
	rc := p.cfg.Entitlements.Redis
	client, err := dialRedis(rc.RedisConn, "entitlements.redis", 0, 0, tlsReloadLog(log, func() *metrics.Metrics { return p.metrics }, "entitlements.redis"))
	if err != nil {
		return nil, err
	}
	client.Warm(log, "entitlements.redis")
	if client.Watch != nil {
		p.watchers = append(p.watchers, func(ctx context.Context) { client.Watch(ctx, p.cfg.Entitlements.File.PollInterval) })
	}
	src, err := redissource.New(redissource.Options{
		Client: client.UniversalClient, Prefix: rc.Prefix, Channel: rc.Channel, Timeout: rc.Timeout,
		Observer: sourceObserver{p.metrics, "redis"}, Logger: log,
	})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("entitlements.redis: %w", err)
	}
	p.closers = append(p.closers, func() { _ = client.Close() })
	p.describe = "redis at " + rc.Address
	p.watchers = append(p.watchers, func(ctx context.Context) {
		_ = src.Subscribe(ctx,
			func(subject string, digests []string) {
				p.metrics.Invalidated("pubsub")
				p.cache.InvalidateSubject(subject)
				for _, d := range digests {
					p.cache.InvalidateKey(d)
				}
			},
			// Messages published while the subscription was down are lost:
			// revalidate everything whenever it (re)connects. Nothing is
			// dropped: a Redis back from a restart may be loading or empty.
			p.cache.Revalidate)
	})
	return src, nil
}
