// Package config reads tollgate's config file: one struct, defaults in one
// function, validated once, with errors that name the file, the line and the
// field. Loading compiles the policy and identity chain too, so a config that
// loads is a config that runs.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/internal/yamlpos"
	"github.com/tollgate-authz/tollgate/policy"
)

// Config is the whole file.
type Config struct {
	Server       Server          `yaml:"server"`
	Log          Log             `yaml:"log"`
	Shadow       bool            `yaml:"shadow"`
	Identity     []identity.Spec `yaml:"identity"`
	Entitlements Entitlements    `yaml:"entitlements"`
	Headers      Headers         `yaml:"headers"`
	Responses    Responses       `yaml:"responses"`
	Admin        Admin           `yaml:"admin"`
	QuotaStore   QuotaStore      `yaml:"quota_store"`
	Reload       Reload          `yaml:"reload"`
	Metering     Metering        `yaml:"metering"`
	Tracing      Tracing         `yaml:"tracing"`
	Payments     Payments        `yaml:"payments"`
	policy.Spec  `yaml:",inline"`

	// Filled by Load.
	Path     string              `yaml:"-"`
	Policy   *policy.Policy      `yaml:"-"`
	Chain    identity.Chain      `yaml:"-"`
	Statuses map[policy.Code]int `yaml:"-"`

	// doc is the YAML the config was parsed from, kept so that problems
	// found later (while building) can name the line of their field.
	doc *yamlpos.Doc
}

// Errorf reports a problem with the field at path (for example
// "entitlements.file.path") as "FILE:LINE: path: problem", the form of every
// config error, for problems found after Parse, while building from the
// config. A Config not built by Parse names the file (or "config") but no line.
func (c *Config) Errorf(path, format string, args ...any) error {
	d := c.doc
	if d == nil {
		name := c.Path
		if name == "" {
			name = "config"
		}
		d = yamlpos.Named(name)
	}
	return d.Errorf(path, format, args...)
}

// Reload paces the watches that apply edits while serving: the config
// file itself and the TLS certificates (the server's and the Redis
// clients'). The entitlement sources keep their own poll_interval.
type Reload struct {
	// PollInterval is how often each watched file is checked. A change is
	// applied once the file has stayed the same for one more poll.
	PollInterval time.Duration `yaml:"poll_interval"`
}

// Server is where tollgate listens and how it stops.
type Server struct {
	// GRPCAddress is host:port, or unix:///path/to.sock.
	GRPCAddress string `yaml:"grpc_address"`
	// AdminAddress serves /healthz, /readyz and /metrics.
	AdminAddress string `yaml:"admin_address"`
	// DrainTimeout bounds GracefulStop on SIGTERM.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// ShutdownDelay keeps serving after readiness turns false, so load
	// balancers notice before the listener closes.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
	// MaxConcurrentStreams per gRPC connection; Envoy multiplexes Checks on one.
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
	// MaxInFlight bounds Checks being decided at once across all
	// connections; over it a Check is shed at once with 503 and
	// Retry-After. 0 means the default, 4096; -1 means no bound.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxConnectionIdle closes a gRPC connection that has carried no Check
	// for this long (with a GOAWAY: Envoy reconnects on its next Check), so
	// idle connections cannot pile up. Default 5m.
	MaxConnectionIdle time.Duration `yaml:"max_connection_idle"`
	// TLS serves gRPC over TLS, and with ClientCAFile over mutual TLS.
	TLS struct {
		CertFile     string `yaml:"cert_file"`
		KeyFile      string `yaml:"key_file"`
		ClientCAFile string `yaml:"client_ca_file"`
	} `yaml:"tls"`
	// EnvoyTimeout is the ext_authz timeout configured in Envoy (its default
	// is 200ms). Source timeouts are validated to stay under it.
	EnvoyTimeout time.Duration `yaml:"envoy_timeout"`
}

// Log configures the decision log.
type Log struct {
	Level string `yaml:"level"` // debug, info, warn, error
	// AllowSampleRate is the share of allows logged; nil means the default 0.01.
	AllowSampleRate *float64 `yaml:"allow_sample_rate"`
}

// Entitlements configures the source and the cache in front of it.
type Entitlements struct {
	Source string       `yaml:"source"` // file, http, redis, stripe
	File   FileSource   `yaml:"file"`
	HTTP   HTTPSource   `yaml:"http"`
	Redis  RedisSource  `yaml:"redis"`
	Stripe StripeSource `yaml:"stripe"`
	Cache  Cache        `yaml:"cache"`
}

// HTTPSource is the team's own billing service (see docs/openapi).
type HTTPSource struct {
	URL             string        `yaml:"url"`
	TokenEnv        string        `yaml:"token_env"`
	Token           string        `yaml:"token"`
	Timeout         time.Duration `yaml:"timeout"`
	MaxInFlight     int           `yaml:"max_in_flight"`
	MaxIdleConns    int           `yaml:"max_idle_conns"`
	IdleConnTimeout time.Duration `yaml:"idle_conn_timeout"`
	Breaker         struct {
		Failures      int           `yaml:"failures"`
		Cooldown      time.Duration `yaml:"cooldown"`
		MaxRetryAfter time.Duration `yaml:"max_retry_after"`
	} `yaml:"breaker"`
}

// RedisConn is how tollgate reaches a Redis server: the connection part of
// the redis source and of the redis quota store.
type RedisConn struct {
	Address     string   `yaml:"address"`
	Cluster     bool     `yaml:"cluster"` // address is one node (or a configuration endpoint) of a Redis Cluster
	Username    string   `yaml:"username"`
	PasswordEnv string   `yaml:"password_env"`
	DB          int      `yaml:"db"`
	TLS         RedisTLS `yaml:"tls"`
}

// RedisTLS turns on TLS to Redis. Without CAFile the server's certificate is
// checked against the system's roots; CertFile and KeyFile are a client
// certificate for a server that requires one (reloaded when they change).
type RedisTLS struct {
	Enabled    bool   `yaml:"enabled"`
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"` // default: the host of address
}

// RedisSource is entitlement records shared in Redis.
type RedisSource struct {
	RedisConn `yaml:",inline"`
	Prefix    string        `yaml:"prefix"`
	Channel   string        `yaml:"channel"`
	Timeout   time.Duration `yaml:"timeout"`
}

// StripeSource reads Stripe Billing.
type StripeSource struct {
	SecretKeyEnv       string        `yaml:"secret_key_env"`
	Customers          string        `yaml:"customers"` // the credential map, relative to the config file
	PollInterval       time.Duration `yaml:"poll_interval"`
	APIBase            string        `yaml:"api_base"`
	APIVersion         string        `yaml:"api_version"`
	Timeout            time.Duration `yaml:"timeout"`
	MaxInFlight        int           `yaml:"max_in_flight"`
	PlanMetadataKey    string        `yaml:"plan_metadata_key"`
	SubjectMetadataKey string        `yaml:"subject_metadata_key"`
	Webhook            struct {
		SecretEnv string        `yaml:"secret_env"`
		Tolerance time.Duration `yaml:"tolerance"`
		MaxBody   int64         `yaml:"max_body"`
	} `yaml:"webhook"`
}

// FileSource is the embedded YAML source.
type FileSource struct {
	Path         string        `yaml:"path"` // relative to the config file
	PollInterval time.Duration `yaml:"poll_interval"`
}

// Cache configures the entitlement cache.
type Cache struct {
	MaxEntries   int           `yaml:"max_entries"`
	TTL          time.Duration `yaml:"ttl"`
	NegativeTTL  time.Duration `yaml:"negative_ttl"`
	StaleIfError time.Duration `yaml:"stale_if_error"`
	Timeout      time.Duration `yaml:"timeout"`
	// NegativeMaxEntries bounds the unknown-key answers, held apart from
	// the records of known subjects so that a flood cannot evict them.
	NegativeMaxEntries int `yaml:"negative_max_entries"`
}

// Headers names the trusted headers sent upstream.
type Headers struct {
	Prefix  string `yaml:"prefix"`
	Subject string `yaml:"subject"`
	Plan    string `yaml:"plan"`
}

// QuotaStore says where quota counters live.
type QuotaStore struct {
	Store string `yaml:"store"` // memory (default, per replica) or redis (shared)
	Redis struct {
		RedisConn  `yaml:",inline"`
		Prefix     string        `yaml:"prefix"`
		LeaseSize  int64         `yaml:"lease_size"`
		Timeout    time.Duration `yaml:"timeout"`
		RetryEvery time.Duration `yaml:"retry_every"`
	} `yaml:"redis"`
}

// Admin secures the admin server's mutating endpoints.
type Admin struct {
	// TokenEnv names the environment variable holding the bearer token for
	// POST /v1/invalidate. Without a token the endpoint is not served.
	TokenEnv string `yaml:"token_env"`
	// Token is the token itself; prefer TokenEnv, which keeps it out of files.
	Token string `yaml:"token"`
	// Pprof serves /debug/pprof on the admin listener. Off by default: it
	// shows internals and costs CPU on demand.
	Pprof bool `yaml:"pprof"`
	// BodyTimeout bounds reading one request body, counted from the end of
	// its headers; a slower client's connection is closed. Default 10s.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// IdleTimeout closes a keep-alive connection with no request for this
	// long. Default 60s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxBodyBytes caps one request body on every admin endpoint. Default 1 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxConcurrentBodies bounds request bodies being read at once on each
	// admin endpoint (the Stripe webhook and /v1/invalidate have separate
	// pools); over it a request with a body is answered 503 at once.
	// Default 16.
	MaxConcurrentBodies int `yaml:"max_concurrent_bodies"`
	// MaxBodiesPerClient bounds the bodies one client IP address reads at
	// once on each admin endpoint, so one client cannot take the pool.
	// Default 2; at most MaxConcurrentBodies. Behind a proxy every client
	// has the proxy's address: raise it there.
	MaxBodiesPerClient int `yaml:"max_bodies_per_client"`
	// MinBodyRate, in bytes per second, is the slowest a request body may
	// arrive after its first second; a slower client's connection is closed.
	// Default 1024; negative: off (only BodyTimeout applies).
	MinBodyRate int64 `yaml:"min_body_rate"`
}

// AdminToken resolves the admin token from the environment or the file.
func (c *Config) AdminToken() string {
	if c.Admin.TokenEnv != "" {
		if v := os.Getenv(c.Admin.TokenEnv); v != "" {
			return v
		}
	}
	return c.Admin.Token
}

// Responses shapes denials.
type Responses struct {
	ProblemTypeBase string         `yaml:"problem_type_base"`
	Realm           string         `yaml:"realm"`
	RetryAfter      time.Duration  `yaml:"retry_after"`
	Status          map[string]int `yaml:"status"`
}

// Default returns a config with every default filled in.
func Default() Config {
	var c Config
	c.defaults()
	return c
}

func (c *Config) defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Server.GRPCAddress, "127.0.0.1:9191")
	def(&c.Server.AdminAddress, "127.0.0.1:9090")
	defDur(&c.Server.DrainTimeout, 10*time.Second)
	defDur(&c.Server.EnvoyTimeout, 200*time.Millisecond)
	if c.Server.MaxInFlight == 0 {
		c.Server.MaxInFlight = 4096
	}
	if c.Server.MaxConcurrentStreams == 0 {
		c.Server.MaxConcurrentStreams = 1024
	}
	defDur(&c.Server.MaxConnectionIdle, 5*time.Minute)
	defDur(&c.Admin.BodyTimeout, 10*time.Second)
	defDur(&c.Admin.IdleTimeout, time.Minute)
	if c.Admin.MaxBodyBytes == 0 {
		c.Admin.MaxBodyBytes = 1 << 20
	}
	if c.Admin.MaxConcurrentBodies == 0 {
		c.Admin.MaxConcurrentBodies = 16
	}
	if c.Admin.MaxBodiesPerClient == 0 {
		c.Admin.MaxBodiesPerClient = 2
	}
	if c.Admin.MinBodyRate == 0 {
		c.Admin.MinBodyRate = 1024
	}
	def(&c.Log.Level, "info")
	if c.Log.AllowSampleRate == nil {
		rate := 0.01
		c.Log.AllowSampleRate = &rate
	}
	def(&c.Entitlements.Source, "file")
	defDur(&c.Entitlements.File.PollInterval, time.Second)
	defDur(&c.Reload.PollInterval, time.Second)
	c.meteringDefaults()
	c.tracingDefaults()
	c.paymentsDefaults()
	defDur(&c.Entitlements.Stripe.PollInterval, time.Second)
	if c.Entitlements.Cache.MaxEntries == 0 {
		c.Entitlements.Cache.MaxEntries = cache.DefaultMaxEntries
	}
	if c.Entitlements.Cache.NegativeMaxEntries == 0 {
		c.Entitlements.Cache.NegativeMaxEntries = cache.DefaultNegativeMaxEntries
	}
	defDur(&c.Entitlements.Cache.TTL, cache.DefaultTTL)
	defDur(&c.Entitlements.Cache.NegativeTTL, cache.DefaultNegativeTTL)
	defDur(&c.Entitlements.Cache.StaleIfError, 5*time.Minute)
	defDur(&c.Entitlements.Cache.Timeout, cache.DefaultTimeout)
	def(&c.Headers.Prefix, policy.DefaultHeaderPrefix)
	c.Headers.Prefix = strings.ToLower(c.Headers.Prefix)
	def(&c.Headers.Subject, c.Headers.Prefix+"subject")
	def(&c.Headers.Plan, c.Headers.Prefix+"plan")
	def(&c.Responses.ProblemTypeBase, policy.DefaultProblemTypeBase)
	def(&c.Responses.Realm, policy.DefaultRealm)
	defDur(&c.Responses.RetryAfter, policy.DefaultRetryAfter)
	if len(c.Identity) == 0 {
		c.Identity = identity.DefaultSpecs()
	}
}

// Load reads, defaults, validates and compiles the config at path. Every
// problem found is returned, each as "file:line: field: message".
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse is Load for bytes already read; name is used in errors and to
// resolve relative paths.
func Parse(name string, data []byte) (*Config, error) {
	var c Config
	yd, err := yamlpos.Decode(name, data, &c, "")
	if err != nil {
		return nil, err
	}
	c.Path = name
	c.doc = yd
	c.defaults()
	// Files are named relative to the config file.
	et, qt := &c.Entitlements.Redis.TLS, &c.QuotaStore.Redis.TLS
	for _, p := range []*string{&c.Entitlements.File.Path, &c.Entitlements.Stripe.Customers,
		&c.Server.TLS.CertFile, &c.Server.TLS.KeyFile, &c.Server.TLS.ClientCAFile,
		&et.CAFile, &et.CertFile, &et.KeyFile, &qt.CAFile, &qt.CertFile, &qt.KeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(name), *p)
		}
	}

	var errs []error
	fail := func(path, msg string, args ...any) {
		errs = append(errs, yd.Errorf(path, msg, args...))
	}

	if err := checkListenAddress(c.Server.GRPCAddress, true); err != nil {
		fail("server.grpc_address", "%v", err)
	}
	if err := checkListenAddress(c.Server.AdminAddress, false); err != nil {
		fail("server.admin_address", "%v", err)
	}
	if c.Server.DrainTimeout < 0 {
		fail("server.drain_timeout", "must not be negative")
	}
	if c.Server.EnvoyTimeout <= 0 {
		fail("server.envoy_timeout", "must be positive")
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"server.max_connection_idle", c.Server.MaxConnectionIdle}, {"admin.body_timeout", c.Admin.BodyTimeout}, {"admin.idle_timeout", c.Admin.IdleTimeout}} {
		if d.v < 0 {
			fail(d.field, "must not be negative")
		}
	}
	if c.Reload.PollInterval < 0 {
		fail("reload.poll_interval", "must not be negative")
	}
	if c.Admin.MaxBodyBytes < 0 {
		fail("admin.max_body_bytes", "must not be negative")
	}
	if c.Admin.MaxConcurrentBodies < 0 {
		fail("admin.max_concurrent_bodies", "must not be negative")
	}
	if c.Admin.MaxBodiesPerClient < 0 {
		fail("admin.max_bodies_per_client", "must not be negative")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		fail("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if r := *c.Log.AllowSampleRate; r < 0 || r > 1 {
		fail("log.allow_sample_rate", "%v is not between 0 and 1", r)
	}
	chain, err := identity.Build(c.Identity)
	if err != nil {
		fail("identity"+strings.SplitN(err.Error(), ":", 2)[0], "%s", strings.TrimSpace(strings.SplitN(err.Error(), ":", 2)[1]))
	}
	c.Chain = chain

	switch c.Entitlements.Source {
	case "file":
		if c.Entitlements.File.Path == "" {
			fail("entitlements.file.path", "is required for the file source")
		}
	case "http":
		h := c.Entitlements.HTTP
		if h.URL == "" {
			fail("entitlements.http.url", "is required for the http source")
		} else if err := checkHTTPURL(h.URL); err != nil {
			fail("entitlements.http.url", "%v", err)
		}
		if h.Token != "" && h.TokenEnv != "" {
			fail("entitlements.http.token", "set token or token_env, not both")
		}
		if err := checkToken(h.Token); err != nil {
			fail("entitlements.http.token", "%v", err)
		}
		if h.TokenEnv != "" {
			if v, err := envvar.Lookup(h.TokenEnv); err != nil {
				fail("entitlements.http.token_env", "%v", err)
			} else if err := checkToken(v); err != nil {
				fail("entitlements.http.token_env", "the token in %s %v", h.TokenEnv, err)
			}
		}
		checkTimeout("entitlements.http.timeout", h.Timeout, c.Server.EnvoyTimeout, fail)
		for _, n := range []struct {
			path string
			v    int64
		}{
			{"entitlements.http.max_in_flight", int64(h.MaxInFlight)},
			{"entitlements.http.max_idle_conns", int64(h.MaxIdleConns)},
			{"entitlements.http.idle_conn_timeout", int64(h.IdleConnTimeout)},
			{"entitlements.http.breaker.cooldown", int64(h.Breaker.Cooldown)},
		} {
			if n.v < 0 {
				fail(n.path, "must not be negative")
			}
		}
	case "redis":
		if c.Entitlements.Redis.Address == "" {
			fail("entitlements.redis.address", "is required for the redis source")
		}
		checkTimeout("entitlements.redis.timeout", c.Entitlements.Redis.Timeout, c.Server.EnvoyTimeout, fail)
	case "stripe":
		st := c.Entitlements.Stripe
		if st.SecretKeyEnv == "" {
			fail("entitlements.stripe.secret_key_env", "is required: the name of the variable holding the Stripe key")
		} else if _, err := envvar.Lookup(st.SecretKeyEnv); err != nil {
			fail("entitlements.stripe.secret_key_env", "%v", err)
		}
		// Without secret_env the webhook is not served; named, it must hold
		// the signing secret (or several, comma-separated, during a rotation).
		if env := st.Webhook.SecretEnv; env != "" {
			if _, err := envvar.Lookup(env); err != nil {
				fail("entitlements.stripe.webhook.secret_env", "%v", err)
			}
		}
		if st.Customers == "" && st.SubjectMetadataKey == "" {
			fail("entitlements.stripe.customers", "is required (or subject_metadata_key)")
		}
		if st.APIBase != "" {
			if err := checkHTTPURL(st.APIBase); err != nil {
				fail("entitlements.stripe.api_base", "%v", err)
			}
		}
		checkTimeout("entitlements.stripe.timeout", st.Timeout, c.Server.EnvoyTimeout, fail)
	default:
		fail("entitlements.source", "%q is not a source (want file, http, redis or stripe)", c.Entitlements.Source)
	}
	if t := c.Server.TLS; (t.CertFile == "") != (t.KeyFile == "") || (t.ClientCAFile != "" && t.CertFile == "") {
		fail("server.tls", "set cert_file and key_file together (client_ca_file needs both)")
	}
	checkReadable("server.tls.cert_file", c.Server.TLS.CertFile, fail)
	checkReadable("server.tls.key_file", c.Server.TLS.KeyFile, fail)
	checkReadable("server.tls.client_ca_file", c.Server.TLS.ClientCAFile, fail)
	if c.Entitlements.Source == "redis" {
		er := c.Entitlements.Redis
		checkRedisConn("entitlements.redis", er.RedisConn, fail)
		// A write touches the record, its key index and the digests'
		// entries in one script: in a cluster they must share a slot.
		if er.Cluster && !hasHashTag(er.Prefix) {
			fail("entitlements.redis.prefix", "%q has no hash tag: with cluster, every key must share one slot (for example \"{tollgate:ent}:\")", er.Prefix)
		}
	}
	if c.QuotaStore.Store == "redis" {
		checkRedisConn("quota_store.redis", c.QuotaStore.Redis.RedisConn, fail)
	}
	cc := c.Entitlements.Cache
	if cc.MaxEntries < 0 {
		fail("entitlements.cache.max_entries", "must not be negative")
	}
	if cc.NegativeMaxEntries < 0 {
		fail("entitlements.cache.negative_max_entries", "must not be negative")
	}
	if cc.NegativeTTL > cc.TTL {
		fail("entitlements.cache.negative_ttl", "%v is longer than ttl %v", cc.NegativeTTL, cc.TTL)
	}
	if cc.Timeout >= c.Server.EnvoyTimeout {
		fail("entitlements.cache.timeout", "%v is not under server.envoy_timeout %v (Envoy's ext_authz timeout)", cc.Timeout, c.Server.EnvoyTimeout)
	}
	for _, h := range []struct{ path, v string }{{"headers.subject", c.Headers.Subject}, {"headers.plan", c.Headers.Plan}} {
		if h.v != strings.ToLower(h.v) || strings.ContainsAny(h.v, " :") {
			fail(h.path, "%q must be a lower-case header name", h.v)
		}
	}
	if c.Admin.Token != "" && len(c.Admin.Token) < 16 {
		fail("admin.token", "is shorter than 16 characters")
	}
	// An unset or empty admin.token_env is not an error: it falls back to
	// admin.token, and without either /v1/invalidate is not served. A token
	// it does hold must be as long as one written in the file.
	if env := c.Admin.TokenEnv; env != "" {
		if v := os.Getenv(env); v != "" && len(v) < 16 {
			fail("admin.token_env", "the token in %s is shorter than 16 characters", env)
		}
	}
	switch c.QuotaStore.Store {
	case "", "memory":
	case "redis":
		if c.QuotaStore.Redis.Address == "" {
			fail("quota_store.redis.address", "is required for the redis store")
		}
		if c.QuotaStore.Redis.LeaseSize < 0 {
			fail("quota_store.redis.lease_size", "must not be negative")
		}
		checkTimeout("quota_store.redis.timeout", c.QuotaStore.Redis.Timeout, c.Server.EnvoyTimeout, fail)
	default:
		fail("quota_store.store", "%q is not memory or redis", c.QuotaStore.Store)
	}
	c.Statuses = map[policy.Code]int{}
	for name, st := range c.Responses.Status {
		code, ok := policy.ParseCode(name)
		if !ok || code == policy.OK {
			fail("responses.status."+name, "%q is not a decision code", name)
			continue
		}
		if err := policy.CheckStatus(st); err != nil {
			fail("responses.status."+name, "%v", err)
		}
		c.Statuses[code] = st
	}

	p, perrs := policy.Compile(c.Spec)
	for _, e := range perrs {
		var fe *policy.FieldError
		if errors.As(e, &fe) {
			fail(fe.Path, "%s", fe.Msg)
		} else {
			errs = append(errs, fmt.Errorf("%s: %v", name, e))
		}
	}
	c.Policy = p
	c.checkMetering(name, c.Metered(), fail)
	c.checkTracing(fail)
	c.checkPayments(fail)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

// checkRedisConn checks the address (host:port, never a URL that could
// carry a password), refuses a database number in a cluster (which has
// only database 0), and checks the TLS block.
func checkRedisConn(path string, rc RedisConn, fail func(path, msg string, args ...any)) {
	if rc.Address != "" {
		if err := CheckHostPort(rc.Address); err != nil {
			fail(path+".address", "%v", err)
		}
	}
	if rc.Cluster && rc.DB != 0 {
		fail(path+".db", "must be 0 with cluster (Redis Cluster has one database)")
	}
	if rc.PasswordEnv != "" {
		if _, err := envvar.Lookup(rc.PasswordEnv); err != nil {
			fail(path+".password_env", "%v", err)
		}
	}
	checkRedisTLS(path+".tls", rc.TLS, fail)
}

// checkTimeout refuses a source or store timeout that is negative, or that
// is not under Envoy's: Envoy would give up first, and answer its
// status_on_error, whatever tollgate decided. Zero takes the adapter's
// default, which is under Envoy's default.
func checkTimeout(path string, t, envoy time.Duration, fail func(path, msg string, args ...any)) {
	switch {
	case t < 0:
		fail(path, "must not be negative")
	case t >= envoy:
		fail(path, "%v is not under server.envoy_timeout %v", t, envoy)
	}
}

// checkReadable fails path when file is set and cannot be opened for
// reading. The file is closed at once: it is read when the server is built,
// and again on each reload, which keeps the last good one if it fails then.
func checkReadable(path, file string, fail func(path, msg string, args ...any)) {
	if file == "" {
		return
	}
	f, err := os.Open(file)
	if err != nil {
		fail(path, "%v", err)
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		fail(path, "%s is a directory", file)
	}
}

// checkToken refuses a bearer token with a space or a control character:
// RFC 6750's b64token is visible ASCII, and anything else would break the
// Authorization header. The error never holds the token.
func checkToken(token string) error {
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c >= 0x7f {
			return errors.New("has a space or control character; it must be visible ASCII")
		}
	}
	return nil
}

// hasHashTag reports whether a key starting with prefix is hashed by a
// Redis Cluster hash tag inside prefix: a non-empty {…} at its first '{'.
func hasHashTag(prefix string) bool {
	i := strings.IndexByte(prefix, '{')
	if i < 0 {
		return false
	}
	j := strings.IndexByte(prefix[i+1:], '}')
	return j > 0
}

// checkRedisTLS refuses a TLS block whose files are set while TLS is off, or
// a client certificate without its key.
func checkRedisTLS(path string, t RedisTLS, fail func(path, msg string, args ...any)) {
	if !t.Enabled {
		for _, f := range []struct{ name, v string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"server_name", t.ServerName}} {
			if f.v != "" {
				fail(path+"."+f.name, "is set but %s.enabled is false", path)
			}
		}
		return
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		fail(path, "set cert_file and key_file together")
	}
	checkReadable(path+".ca_file", t.CAFile, fail)
	checkReadable(path+".cert_file", t.CertFile, fail)
	checkReadable(path+".key_file", t.KeyFile, fail)
}
