package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/tlsreload"
	"github.com/tollgate-authz/tollgate/metrics"
	"github.com/tollgate-authz/tollgate/quota"
)

// redisConn is a connection to one Redis server, as the redis source, the
// redis quota store and `tollgate entitlements` make it.
type redisConn struct {
	redis.UniversalClient // a *redis.Client, or a *redis.ClusterClient with cluster
	addr                  string
	// watch, when not nil, reloads the TLS client certificate when its
	// files change (checked every every) until ctx ends; serve runs it.
	watch func(ctx context.Context, every time.Duration)
}

// dialRedis makes the client for rc (a cluster client with rc.Cluster) with
// quota.RedisOptions's timeouts (timeout, when positive, replaces them), the
// credentials, and TLS. path is
// rc's place in the config ("quota_store.redis"), for errors; onReload, when
// not nil, is told of each reload of a client certificate. The client
// connects lazily: an unreachable server is not an error here.
func dialRedis(rc config.RedisConn, path string, timeout time.Duration, onReload func(error)) (*redisConn, error) {
	// Checked here too, for the CLI: an address never holds a password,
	// so logging it (and go-redis's errors, which quote it) is safe.
	if err := config.CheckHostPort(rc.Address); err != nil {
		return nil, fmt.Errorf("%s.address: %v", path, err)
	}
	opts := quota.RedisOptions(rc.Address)
	if timeout > 0 {
		opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.PoolTimeout = timeout, timeout, timeout, timeout
	}
	opts.Username, opts.DB = rc.Username, rc.DB
	if rc.PasswordEnv != "" {
		v, ok := os.LookupEnv(rc.PasswordEnv)
		if opts.Password = strings.TrimSpace(v); !ok || opts.Password == "" {
			return nil, fmt.Errorf("%s.password_env: environment variable %s is unset or empty", path, rc.PasswordEnv)
		}
	}
	c := &redisConn{}
	if t := rc.TLS; t.Enabled {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
		if t.CAFile != "" {
			pem, err := os.ReadFile(t.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%s.tls.ca_file: %v", path, err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s.tls.ca_file: %s holds no PEM certificate", path, t.CAFile)
			}
		}
		if t.CertFile != "" {
			r, err := tlsreload.New(tlsreload.Files{CertFile: t.CertFile, KeyFile: t.KeyFile}, onReload)
			if err != nil {
				return nil, fmt.Errorf("%s.tls: %v", path, err)
			}
			tc.GetClientCertificate = r.ClientCertificate
			c.watch = r.Watch
		}
		opts.TLSConfig = tc
		// go-redis's own TLS dial ignores the context, so a Check that
		// needs a new connection could wait for a whole handshake past its
		// deadline. This dialer keeps to the context; its own timeout is
		// longer, for the handshakes of the idle connections kept ready.
		// Without server_name each server is checked for the host it was
		// dialed by: the address, or in a cluster each node's own.
		nd := &net.Dialer{Timeout: max(opts.DialTimeout, time.Second)}
		opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			cfg := tc
			if cfg.ServerName == "" {
				host, _, _ := net.SplitHostPort(addr)
				cfg = tc.Clone()
				cfg.ServerName = host
			}
			return (&tls.Dialer{NetDialer: nd, Config: cfg}).DialContext(ctx, network, addr)
		}
		opts.DialTimeout = nd.Timeout
		opts.MinIdleConns = 2
	}
	c.addr = rc.Address
	if !rc.Cluster {
		c.UniversalClient = redis.NewClient(opts)
		return c, nil
	}
	// A cluster client learns the other nodes from address, and follows
	// MOVED and ASK redirections on its own.
	c.UniversalClient = redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:    []string{opts.Addr},
		Username: opts.Username, Password: opts.Password,
		DialTimeout: opts.DialTimeout, ReadTimeout: opts.ReadTimeout, WriteTimeout: opts.WriteTimeout, PoolTimeout: opts.PoolTimeout,
		ContextTimeoutEnabled: opts.ContextTimeoutEnabled, MaxRetries: opts.MaxRetries, DialerRetries: opts.DialerRetries,
		DisableIdentity: opts.DisableIdentity, TLSConfig: opts.TLSConfig, Dialer: opts.Dialer, MinIdleConns: opts.MinIdleConns,
	})
	return c, nil
}

// warm opens a first connection now, TLS handshake included, so that the
// first Checks do not pay for it inside their deadline. An unreachable
// server is logged, not fatal: the failure policies cover it.
func (c *redisConn) warm(log *slog.Logger, path string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil && log != nil {
		log.Warn("redis is not answering yet", "for", path, "address", c.addr, "error", err.Error())
	}
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
