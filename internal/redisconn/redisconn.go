package redisconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/internal/tlsreload"
)

// DefaultTimeout bounds a dial, a write and a wait for a pooled connection
// when Options.Timeout is zero: short, so that a dead Redis costs a request
// about this much.
const DefaultTimeout = 50 * time.Millisecond

// DefaultLateRead is how much longer than Timeout a reply is still read when
// Options.ReadTimeout is zero. A call with a context deadline waits no longer
// than its deadline; the longer read timeout lets a caller that detaches its
// round trips (quota.Leased) read a reply that came after its requester gave
// up, and keep what Redis granted.
const DefaultLateRead = time.Second

// Options say how to reach Redis. Only Address is required.
type Options struct {
	// Address is host:port, alone: never a URL, never a password. With
	// Cluster it is one node (or a configuration endpoint) of a Redis
	// Cluster; the client learns the others and follows MOVED and ASK.
	Address string
	Cluster bool
	// Username is the ACL user; empty for the default user.
	Username string
	// PasswordEnv names the environment variable holding the password;
	// Dial reads it (surrounding spaces trimmed), so the password itself is
	// never in options that could be logged. Set but unset or empty in the
	// environment, it is an error.
	PasswordEnv string
	// DB is the database number (not with Cluster, which has only 0).
	DB int
	// TLS, when Enabled, is how to speak TLS to the server.
	TLS TLS
	// Timeout bounds a dial, a write and a wait for a pooled connection;
	// default DefaultTimeout. With TLS a dial may take up to a second,
	// for the handshakes of the idle connections kept ready; a call's own
	// context deadline still bounds the dials it waits for.
	Timeout time.Duration
	// ReadTimeout bounds the wait for a reply; default Timeout +
	// DefaultLateRead. A context deadline that is sooner wins.
	ReadTimeout time.Duration
	// OnReload, when not nil, is told the outcome of each reload of the
	// TLS client certificate.
	OnReload func(error)
	// Lazy keeps no connections ready: nothing is dialled before the first
	// command (with TLS, idle connections are otherwise kept warm from the
	// start). For `tollgate validate`, which must touch no network.
	Lazy bool
}

// TLS turns on TLS. Without CAFile the server's certificate is checked
// against the system's roots; CertFile and KeyFile are a client
// certificate for a server that requires one, reloaded by Conn.Watch.
type TLS struct {
	Enabled                   bool
	CAFile, CertFile, KeyFile string
	// ServerName is the name to check in the server's certificate;
	// default: the host each connection was dialed by (in a cluster, each
	// node's own).
	ServerName string
}

// Conn is a client made by Dial.
type Conn struct {
	// UniversalClient is a *redis.Client, or a *redis.ClusterClient with
	// Options.Cluster.
	redis.UniversalClient
	// Address is Options.Address, safe to log: it holds no password.
	Address string
	// Watch, when not nil, reloads the TLS client certificate when its
	// files change (checked every every) until ctx ends. It is nil without
	// a client certificate: there is nothing to watch.
	Watch func(ctx context.Context, every time.Duration)
}

// FieldError is an option Dial refused, named by its field in the config
// (address, password_env, tls.ca_file): a caller puts where the options
// came from in front, as in "quota_store.redis." + err.Error().
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Dial makes the client for o. It does not connect: an unreachable server
// is not an error here (see Warm). o is checked by its caller: Address is
// host:port, checked by config.CheckHostPort (the config and the CLI's
// --redis), which refuses a URL that could carry a password; Dial refuses
// only an empty one. Its errors are about what it reads (the password's
// variable, the TLS files) and name the field at fault.
func Dial(o Options) (*Conn, error) {
	if o.Address == "" {
		return nil, &FieldError{"address", errors.New("is required")}
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	read := o.ReadTimeout
	if read <= 0 {
		read = timeout + DefaultLateRead
	}
	opts := &redis.Options{
		Addr:                  o.Address,
		Username:              o.Username,
		DB:                    o.DB,
		DialTimeout:           timeout,
		ReadTimeout:           read,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
		ContextTimeoutEnabled: true, // a call's deadline bounds its reads and dials
		MaxRetries:            -1,   // no command retries: the caller's failure policy decides
		DialerRetries:         1,
		DisableIdentity:       true, // no CLIENT SETINFO: older servers and proxies refuse it
	}
	if o.PasswordEnv != "" {
		pw, err := envvar.Lookup(o.PasswordEnv)
		if err != nil {
			return nil, &FieldError{"password_env", err}
		}
		opts.Password = pw
	}
	c := &Conn{Address: o.Address}
	if o.TLS.Enabled {
		if err := withTLS(opts, o.TLS, o.OnReload, c); err != nil {
			return nil, err
		}
	}
	if o.Lazy {
		opts.MinIdleConns = 0
	}
	if !o.Cluster {
		c.UniversalClient = redis.NewClient(opts)
		return c, nil
	}
	c.UniversalClient = redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:    []string{opts.Addr},
		Username: opts.Username, Password: opts.Password,
		DialTimeout: opts.DialTimeout, ReadTimeout: opts.ReadTimeout, WriteTimeout: opts.WriteTimeout, PoolTimeout: opts.PoolTimeout,
		ContextTimeoutEnabled: opts.ContextTimeoutEnabled, MaxRetries: opts.MaxRetries, DialerRetries: opts.DialerRetries,
		DisableIdentity: opts.DisableIdentity, TLSConfig: opts.TLSConfig, Dialer: opts.Dialer, MinIdleConns: opts.MinIdleConns,
	})
	return c, nil
}

// withTLS sets opts up for t, and c.Watch for a client certificate.
func withTLS(opts *redis.Options, t TLS, onReload func(error), c *Conn) error {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return &FieldError{"tls.ca_file", err}
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return &FieldError{"tls.ca_file", fmt.Errorf("%s holds no PEM certificate", t.CAFile)}
		}
	}
	if t.CertFile != "" {
		r, err := tlsreload.New(tlsreload.Files{CertFile: t.CertFile, KeyFile: t.KeyFile}, onReload)
		if err != nil {
			return &FieldError{"tls", err}
		}
		tc.GetClientCertificate = r.ClientCertificate
		c.Watch = r.Watch
	}
	opts.TLSConfig = tc
	// go-redis's own TLS dial ignores the context, so a call that needs a
	// new connection could wait for a whole handshake past its deadline.
	// This dialer keeps to the context; its own timeout is longer, for the
	// handshakes of the idle connections kept ready. Without server_name
	// each server is checked for the host it was dialed by: the address,
	// or in a cluster each node's own.
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
	return nil
}

// Warm opens a first connection now, TLS handshake included, so that the
// first calls do not pay for it inside their deadlines. An unreachable
// server is logged on log (when not nil) as a warning for name (the
// config's "quota_store.redis"), not returned: the callers' failure
// policies cover it.
func (c *Conn) Warm(log *slog.Logger, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil && log != nil {
		log.Warn("redis is not answering yet", "for", name, "address", c.Address, "error", err.Error())
	}
}
