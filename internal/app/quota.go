package app

import (
	"context"
	"time"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/internal/redisconn"
	"github.com/tollgate-authz/tollgate/quota"
)

// quotaStore is the configured store and how to shut it down.
type quotaStore struct {
	authz.Quotas
	close func() // hands leases back and closes connections
}

// openQuotaStore builds the store the config names: memory, or Redis with
// local leases behind the per-quota failure policy.
func (a *App) openQuotaStore() (*quotaStore, error) {
	if a.cfg.QuotaStore.Store != "redis" {
		a.metrics.QuotaStoreMode("memory")
		return &quotaStore{Quotas: quota.NewMemory(nil), close: func() {}}, nil
	}
	rc := a.cfg.QuotaStore.Redis
	// A lease's reply is read for up to a second past the store's own
	// timeout, so that units Redis granted after a Check gave up are kept
	// (quota.Leased): the read timeout follows quota_store.redis.timeout.
	read := max(rc.Timeout, redisconn.DefaultTimeout) + redisconn.DefaultLateRead
	client, err := a.dialRedis(rc.RedisConn, "quota_store.redis", read)
	if err != nil {
		return nil, err
	}
	leased := quota.NewLeased(quota.LeasedOptions{
		Client: client.UniversalClient, Prefix: rc.Prefix, LeaseSize: rc.LeaseSize, Timeout: rc.Timeout,
	})
	res := quota.NewResilient(leased, quota.NewMemory(nil), quota.ResilientOptions{
		RetryEvery: rc.RetryEvery,
		OnWriteBack: func(units int64, err error) {
			a.metrics.QuotaWriteBack(units, err)
			if err != nil {
				a.log.Warn("quota store: could not copy fail-open spends to redis; will retry when it is back", "units", units, "error", err.Error())
			} else {
				a.log.Info("quota store: copied fail-open spends made while redis was down", "units", units)
			}
		},
		OnMode: func(mode string) {
			a.metrics.QuotaStoreMode("redis_" + mode)
			if mode == quota.ModePrimary {
				a.log.Info("quota store: redis is back", "address", rc.Address)
			} else {
				a.log.Warn("quota store: redis is unreachable; failure policies in effect (on_store_error)", "address", rc.Address)
			}
		},
	})
	a.metrics.QuotaStoreMode("redis_" + res.Mode())
	// Closers run last first: the leases go back before the client closes.
	return &quotaStore{Quotas: res, close: func() {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		res.WaitWriteBack()
		_ = leased.Release(ctx)
	}}, nil
}
