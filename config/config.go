// Package config reads tollgate's config file: one struct, defaults in one
// function, validated once, with errors that name the file, the line and the
// field. Loading compiles the policy and identity chain too, so a config that
// loads is a config that runs.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/identity"
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
	policy.Spec  `yaml:",inline"`

	// Filled by Load.
	Path     string              `yaml:"-"`
	Policy   *policy.Policy      `yaml:"-"`
	Chain    identity.Chain      `yaml:"-"`
	Statuses map[policy.Code]int `yaml:"-"`
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
}

// Log configures the decision log.
type Log struct {
	Level string `yaml:"level"` // debug, info, warn, error
	// AllowSampleRate is the share of allows logged; nil means the default 0.01.
	AllowSampleRate *float64 `yaml:"allow_sample_rate"`
}

// Entitlements configures the source and the cache in front of it.
type Entitlements struct {
	Source string     `yaml:"source"` // file
	File   FileSource `yaml:"file"`
	Cache  Cache      `yaml:"cache"`
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
}

// Headers names the trusted headers sent upstream.
type Headers struct {
	Prefix  string `yaml:"prefix"`
	Subject string `yaml:"subject"`
	Plan    string `yaml:"plan"`
}

// Admin secures the admin server's mutating endpoints.
type Admin struct {
	// TokenEnv names the environment variable holding the bearer token for
	// POST /v1/invalidate. Without a token the endpoint is not served.
	TokenEnv string `yaml:"token_env"`
	// Token is the token itself; prefer TokenEnv, which keeps it out of files.
	Token string `yaml:"token"`
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
	if c.Server.MaxConcurrentStreams == 0 {
		c.Server.MaxConcurrentStreams = 1024
	}
	def(&c.Log.Level, "info")
	if c.Log.AllowSampleRate == nil {
		rate := 0.01
		c.Log.AllowSampleRate = &rate
	}
	def(&c.Entitlements.Source, "file")
	defDur(&c.Entitlements.File.PollInterval, time.Second)
	if c.Entitlements.Cache.MaxEntries == 0 {
		c.Entitlements.Cache.MaxEntries = 100000
	}
	defDur(&c.Entitlements.Cache.TTL, 30*time.Second)
	defDur(&c.Entitlements.Cache.NegativeTTL, 5*time.Second)
	defDur(&c.Entitlements.Cache.StaleIfError, 5*time.Minute)
	defDur(&c.Entitlements.Cache.Timeout, 50*time.Millisecond)
	def(&c.Headers.Prefix, "x-tollgate-")
	c.Headers.Prefix = strings.ToLower(c.Headers.Prefix)
	def(&c.Headers.Subject, c.Headers.Prefix+"subject")
	def(&c.Headers.Plan, c.Headers.Prefix+"plan")
	def(&c.Responses.ProblemTypeBase, authz.DefaultProblemTypeBase)
	def(&c.Responses.Realm, "api")
	defDur(&c.Responses.RetryAfter, 5*time.Second)
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
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%s: the file is empty", name)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, yamlpos.Errors(name, err)
	}
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)
	c.Path = name
	c.defaults()

	var errs []error
	fail := func(path, msg string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: %s: %s", name, yamlpos.Line(&root, path), path, fmt.Sprintf(msg, args...)))
	}

	if err := checkAddress(c.Server.GRPCAddress, true); err != nil {
		fail("server.grpc_address", "%v", err)
	}
	if err := checkAddress(c.Server.AdminAddress, false); err != nil {
		fail("server.admin_address", "%v", err)
	}
	if c.Server.DrainTimeout < 0 {
		fail("server.drain_timeout", "must not be negative")
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
	default:
		fail("entitlements.source", "%q is not a source (want file)", c.Entitlements.Source)
	}
	if p := c.Entitlements.File.Path; p != "" && !filepath.IsAbs(p) {
		c.Entitlements.File.Path = filepath.Join(filepath.Dir(name), p)
	}
	cc := c.Entitlements.Cache
	if cc.MaxEntries < 0 {
		fail("entitlements.cache.max_entries", "must not be negative")
	}
	if cc.NegativeTTL > cc.TTL {
		fail("entitlements.cache.negative_ttl", "%v is longer than ttl %v", cc.NegativeTTL, cc.TTL)
	}
	if cc.Timeout >= 200*time.Millisecond {
		fail("entitlements.cache.timeout", "%v is not under Envoy's default ext_authz timeout of 200ms", cc.Timeout)
	}
	for _, h := range []struct{ path, v string }{{"headers.subject", c.Headers.Subject}, {"headers.plan", c.Headers.Plan}} {
		if h.v != strings.ToLower(h.v) || strings.ContainsAny(h.v, " :") {
			fail(h.path, "%q must be a lower-case header name", h.v)
		}
	}
	if c.Admin.Token != "" && len(c.Admin.Token) < 16 {
		fail("admin.token", "is shorter than 16 characters")
	}
	c.Statuses = map[policy.Code]int{}
	for name, st := range c.Responses.Status {
		code, ok := policy.ParseCode(name)
		if !ok || code == policy.OK {
			fail("responses.status."+name, "%q is not a decision code", name)
			continue
		}
		if st < 400 || st > 599 {
			fail("responses.status."+name, "%d is not a 4xx or 5xx status", st)
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
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

// checkAddress accepts host:port, and unix:///path where allowed.
func checkAddress(addr string, unixOK bool) error {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !unixOK {
			return fmt.Errorf("%q: a unix socket is not supported here", addr)
		}
		if p == "" {
			return fmt.Errorf("%q: the socket path is empty", addr)
		}
		return nil
	}
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return fmt.Errorf("%q is not host:port or unix:///path", addr)
	}
	return nil
}

// AuthzOptions turns the response settings into authz.Options.
func (c *Config) AuthzOptions() authz.Options {
	return authz.Options{
		ProblemTypeBase: c.Responses.ProblemTypeBase,
		Realm:           c.Responses.Realm,
		RetryAfter:      c.Responses.RetryAfter,
		Status:          c.Statuses,
		HeaderPrefix:    c.Headers.Prefix,
		SubjectHeader:   c.Headers.Subject,
		PlanHeader:      c.Headers.Plan,
		Shadow:          c.Shadow,
		AllowSampleRate: *c.Log.AllowSampleRate,
	}
}

// Runtime builds the authz runtime for this config.
func (c *Config) Runtime() (*authz.Runtime, error) {
	return authz.NewRuntime(c.Policy, c.Chain, c.AuthzOptions())
}
