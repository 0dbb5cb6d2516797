package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/redisconn"
	"github.com/tollgate-authz/tollgate/metrics"
	"github.com/tollgate-authz/tollgate/quota"
)

// quotaStore is the configured store and how to shut it down.
type quotaStore struct {
	authz.Quotas
	close func() // hands leases back and closes connections
	// watch, when not nil, reloads the Redis client certificate while serving.
	watch func(ctx context.Context, every time.Duration)
	mode  func() string
	m     func() *metrics.Metrics
}

// reportMode sends the current mode to metrics, once they exist.
func (q *quotaStore) reportMode() {
	if m := q.m(); m != nil {
		m.QuotaStoreMode(q.mode())
	}
}

// newQuotaStore builds the store cfg names: memory, or Redis with local
// leases behind the per-quota failure policy. metricsOf returns the metrics
// once they exist (or nil); log may be nil.
func newQuotaStore(cfg *config.Config, metricsOf func() *metrics.Metrics, log *slog.Logger) (*quotaStore, error) {
	if metricsOf == nil {
		metricsOf = func() *metrics.Metrics { return nil }
	}
	if cfg.QuotaStore.Store != "redis" {
		mem := quota.NewMemory(nil)
		return &quotaStore{Quotas: mem, close: func() {}, mode: func() string { return "memory" }, m: metricsOf}, nil
	}
	rc := cfg.QuotaStore.Redis
	// A lease's reply is read for up to a second past the store's own
	// timeout, so that units Redis granted after a Check gave up are kept
	// (quota.Leased): the read timeout follows quota_store.redis.timeout.
	read := max(rc.Timeout, redisconn.DefaultTimeout) + redisconn.DefaultLateRead
	client, err := dialRedis(rc.RedisConn, "quota_store.redis", 0, read, tlsReloadLog(log, metricsOf, "quota_store.redis"))
	if err != nil {
		return nil, err
	}
	if log != nil {
		client.Warm(log, "quota_store.redis")
	}
	leased := quota.NewLeased(quota.LeasedOptions{
		Client: client.UniversalClient, Prefix: rc.Prefix, LeaseSize: rc.LeaseSize, Timeout: rc.Timeout,
	})
	res := quota.NewResilient(leased, quota.NewMemory(nil), quota.ResilientOptions{
		RetryEvery: rc.RetryEvery,
		OnWriteBack: func(units int64, err error) {
			if m := metricsOf(); m != nil {
				m.QuotaWriteBack(units, err)
			}
			if log == nil {
				return
			}
			if err != nil {
				log.Warn("quota store: could not copy fail-open spends to redis; will retry when it is back", "units", units, "error", err.Error())
			} else {
				log.Info("quota store: copied fail-open spends made while redis was down", "units", units)
			}
		},
		OnMode: func(mode string) {
			if m := metricsOf(); m != nil {
				m.QuotaStoreMode("redis_" + mode)
			}
			if log != nil {
				if mode == quota.ModePrimary {
					log.Info("quota store: redis is back", "address", rc.Address)
				} else {
					log.Warn("quota store: redis is unreachable; failure policies in effect (on_store_error)", "address", rc.Address)
				}
			}
		},
	})
	return &quotaStore{Quotas: res, m: metricsOf, watch: client.Watch, mode: func() string { return "redis_" + res.Mode() }, close: func() {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		res.WaitWriteBack()
		_ = leased.Release(ctx)
		_ = client.Close()
	}}, nil
}
