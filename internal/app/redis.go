package app

import (
	"context"
	"errors"
	"time"

	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/redisconn"
)

// RedisOptions maps one Redis block of the config to redisconn's options:
// the one place that does, for the sources, the quota store and the CLI.
func RedisOptions(rc config.RedisConn) redisconn.Options {
	return redisconn.Options{
		Address: rc.Address, Cluster: rc.Cluster, Username: rc.Username, PasswordEnv: rc.PasswordEnv, DB: rc.DB,
		TLS: redisconn.TLS{
			Enabled: rc.TLS.Enabled, CAFile: rc.TLS.CAFile, CertFile: rc.TLS.CertFile, KeyFile: rc.TLS.KeyFile,
			ServerName: rc.TLS.ServerName,
		},
	}
}

// dialRedis makes the client for the Redis block at path ("quota_store.redis")
// and registers what it needs: a closer, a ping for Connect, a reload of
// its client certificate, and (unless Lazy) a first connection now.
// read, when positive, bounds the wait for a reply. The client connects
// lazily: an unreachable server is not an error here.
func (a *App) dialRedis(rc config.RedisConn, path string, read time.Duration) (*redisconn.Conn, error) {
	o := RedisOptions(rc)
	o.ReadTimeout = read
	o.Lazy = a.opts.Lazy
	o.OnReload = func(err error) {
		a.metrics.Reloaded("tls", err, float64(time.Now().Unix()))
		if err != nil {
			a.log.Error("TLS reload failed; keeping the last good client certificate", "for", path, "error", err.Error())
		} else {
			a.log.Info("TLS client certificate reloaded", "for", path)
		}
	}
	c, err := redisconn.Dial(o)
	if err != nil {
		var fe *redisconn.FieldError
		if errors.As(err, &fe) {
			return nil, a.cfg.Errorf(path+"."+fe.Field, "%v", fe.Err)
		}
		return nil, a.cfg.Errorf(path, "%v", err)
	}
	a.closers = append(a.closers, func() { _ = c.Close() })
	if a.tracing != nil {
		c.AddHook(a.tracing.redisHook(path))
	}
	a.pings = append(a.pings, ping{path, func(ctx context.Context) error { return c.Ping(ctx).Err() }})
	if c.Watch != nil {
		a.reloads = append(a.reloads, reload{path + ".tls", c.Watch})
	}
	if !a.opts.Lazy {
		c.Warm(a.log, path)
	}
	return c, nil
}
