package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/entitlement"
	redissource "github.com/tollgate-authz/tollgate/entitlement/redis"
	"github.com/tollgate-authz/tollgate/quota"
)

// openRedis builds the redis source and, while serving, a subscriber that
// drops a subject from the cache the moment any writer publishes a change.
func (p *pipeline) openRedis(log *slog.Logger) (entitlement.Source, error) {
	rc := p.cfg.Entitlements.Redis
	opts := quota.RedisOptions(rc.Address)
	opts.Username, opts.DB = rc.Username, rc.DB
	if rc.PasswordEnv != "" {
		opts.Password = os.Getenv(rc.PasswordEnv)
	}
	client := redis.NewClient(opts)
	src, err := redissource.New(redissource.Options{
		Client: client, Prefix: rc.Prefix, Channel: rc.Channel, Timeout: rc.Timeout,
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
			// start from a clean cache whenever it (re)connects.
			func() { p.cache.Purge() })
	})
	return src, nil
}
