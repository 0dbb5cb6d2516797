package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/redisconn"
	"github.com/tollgate-authz/tollgate/metrics"
)

// dialRedis makes the client for rc through redisconn.Dial. path is rc's
// place in the config ("quota_store.redis"), put in front of errors;
// timeout, when positive, bounds dials, writes and reads alike (the CLI's
// --timeout) instead of redisconn's fail-fast defaults; read, when
// positive, bounds the wait for a reply alone; onReload, when not nil, is
// told of each reload of a client certificate. The client connects lazily:
// an unreachable server is not an error here.
func dialRedis(rc config.RedisConn, path string, timeout, read time.Duration, onReload func(error)) (*redisconn.Conn, error) {
	o := redisconn.Options{
		Address: rc.Address, Cluster: rc.Cluster, Username: rc.Username, PasswordEnv: rc.PasswordEnv, DB: rc.DB,
		TLS: redisconn.TLS{
			Enabled: rc.TLS.Enabled, CAFile: rc.TLS.CAFile, CertFile: rc.TLS.CertFile, KeyFile: rc.TLS.KeyFile,
			ServerName: rc.TLS.ServerName,
		},
		OnReload: onReload,
	}
	if timeout > 0 {
		o.Timeout, o.ReadTimeout = timeout, timeout
	}
	if read > 0 {
		o.ReadTimeout = read
	}
	c, err := redisconn.Dial(o)
	if err != nil {
		return nil, fmt.Errorf("%s.%w", path, err)
	}
	return c, nil
}

// tlsReloadLog reports the reloads of a Redis client certificate to the log
// and to metrics (as file "tls").
func tlsReloadLog(log *slog.Logger, m func() *metrics.Metrics, path string) func(error) {
	return func(err error) {
		if mm := m(); mm != nil {
			mm.Reloaded("tls", err, float64(time.Now().Unix()))
		}
		if log == nil {
			return
		}
		if err != nil {
			log.Error("TLS reload failed; keeping the last good client certificate", "for", path, "error", err.Error())
		} else {
			log.Info("TLS client certificate reloaded", "for", path)
		}
	}
}
