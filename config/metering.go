package config

import (
	"path/filepath"

	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/reservation"
)

// Metering settles metered routes (routes[].meter) and exports their usage.
type Metering struct {
	// KeyEnv names the variable holding the key (at least 32 bytes) that
	// signs reservations. Every replica that may settle another's requests
	// needs the same key. Required when a route has a meter.
	KeyEnv string `yaml:"key_env"`
	Outbox struct {
		// Store is "file" (default: an embedded store on local disk, for
		// one replica) or "redis" (Redis Streams, shared by replicas).
		Store string `yaml:"store"`
		// Path is the file store, relative to the config file.
		Path  string `yaml:"path"`
		Redis struct {
			RedisConn `yaml:",inline"`
			Prefix    string `yaml:"prefix"`
		} `yaml:"redis"`
		// MaxEvents bounds the backlog (default 1000000).
		MaxEvents int `yaml:"max_events"`
		// WhenFull is "refuse" (default: metered requests are refused with
		// 503 entitlements_unavailable while the outbox is full, so nothing
		// is served unbilled) or "admit" (they are served; their events are
		// dropped and counted in tollgate_usage_events_dropped_total).
		WhenFull string `yaml:"when_full"`
	} `yaml:"outbox"`
	Export Export `yaml:"export"`
}

// Export names where usage events go.
type Export struct {
	// To is "stripe", "openmeter", "http" or "none" (default: events stay
	// in the outbox: its backlog shows in GET /v1/usage and the metrics;
	// with when_full: refuse, a full outbox then closes metered routes).
	To     string `yaml:"to"`
	Stripe struct {
		SecretKeyEnv string            `yaml:"secret_key_env"`
		APIBase      string            `yaml:"api_base"`
		EventNames   map[string]string `yaml:"event_names"`
		// RatePerSecond bounds the requests (default: Stripe's published
		// limit for the key's mode).
		RatePerSecond float64 `yaml:"rate_per_second"`
	} `yaml:"stripe"`
	OpenMeter struct {
		URL      string            `yaml:"url"`
		TokenEnv string            `yaml:"token_env"`
		Source   string            `yaml:"source"`
		Types    map[string]string `yaml:"types"`
	} `yaml:"openmeter"`
	HTTP struct {
		URL      string `yaml:"url"`
		TokenEnv string `yaml:"token_env"`
	} `yaml:"http"`
}

// Metered reports whether any route has a meter.
func (c *Config) Metered() bool {
	if c.Policy == nil {
		return false
	}
	for _, r := range c.Policy.Routes() {
		if r.Meter != nil {
			return true
		}
	}
	return false
}

func (c *Config) meteringDefaults() {
	m := &c.Metering
	if m.Outbox.Store == "" {
		m.Outbox.Store = "file"
	}
	if m.Outbox.WhenFull == "" {
		m.Outbox.WhenFull = "refuse"
	}
	if m.Export.To == "" {
		m.Export.To = "none"
	}
}

// checkMetering checks the metering block; metered says whether a route
// has a meter (then the key is required). name is the config file's path.
func (c *Config) checkMetering(name string, metered bool, fail func(path, msg string, args ...any)) {
	m := &c.Metering
	if metered || m.KeyEnv != "" {
		if m.KeyEnv == "" {
			fail("metering.key_env", "is required when a route has a meter: the variable holding the key that signs reservations")
		} else if v, err := envvar.Lookup(m.KeyEnv); err != nil {
			fail("metering.key_env", "%v", err)
		} else if len(v) < reservation.MinKeyBytes {
			fail("metering.key_env", "$%s holds %d bytes; the key needs at least %d", m.KeyEnv, len(v), reservation.MinKeyBytes)
		}
	}
	switch m.Outbox.Store {
	case "file":
		if metered && m.Outbox.Path == "" {
			fail("metering.outbox.path", "is required for the file outbox (for example /var/lib/tollgate/usage.db)")
		}
		if m.Outbox.Path != "" && !filepath.IsAbs(m.Outbox.Path) {
			m.Outbox.Path = filepath.Join(filepath.Dir(name), m.Outbox.Path)
		}
	case "redis":
		if m.Outbox.Redis.Address == "" {
			fail("metering.outbox.redis.address", "is required for the redis outbox")
		}
		checkRedisConn("metering.outbox.redis", m.Outbox.Redis.RedisConn, fail)
		if m.Outbox.Redis.Cluster && m.Outbox.Redis.Prefix != "" && !hasHashTag(m.Outbox.Redis.Prefix) {
			fail("metering.outbox.redis.prefix", "%q has no hash tag: with cluster, the outbox's keys must share one slot", m.Outbox.Redis.Prefix)
		}
	default:
		fail("metering.outbox.store", "%q is not file or redis", m.Outbox.Store)
	}
	if m.Outbox.MaxEvents < 0 {
		fail("metering.outbox.max_events", "must not be negative")
	}
	switch m.Outbox.WhenFull {
	case "refuse", "admit":
	default:
		fail("metering.outbox.when_full", "%q is not refuse or admit", m.Outbox.WhenFull)
	}
	e := &m.Export
	env := func(path, name string, required bool) {
		if name == "" {
			if required {
				fail(path, "is required")
			}
			return
		}
		if _, err := envvar.Lookup(name); err != nil {
			fail(path, "%v", err)
		}
	}
	switch e.To {
	case "none":
	case "stripe":
		env("metering.export.stripe.secret_key_env", e.Stripe.SecretKeyEnv, true)
		if e.Stripe.APIBase != "" {
			if err := checkHTTPURL(e.Stripe.APIBase); err != nil {
				fail("metering.export.stripe.api_base", "%v", err)
			}
		}
		if e.Stripe.RatePerSecond < 0 {
			fail("metering.export.stripe.rate_per_second", "must not be negative")
		}
	case "openmeter":
		if err := checkHTTPURL(e.OpenMeter.URL); e.OpenMeter.URL == "" || err != nil {
			fail("metering.export.openmeter.url", "is required: OpenMeter's base URL")
		}
		env("metering.export.openmeter.token_env", e.OpenMeter.TokenEnv, false)
	case "http":
		if err := checkHTTPURL(e.HTTP.URL); e.HTTP.URL == "" || err != nil {
			fail("metering.export.http.url", "is required: the URL that receives JSON lines")
		}
		env("metering.export.http.token_env", e.HTTP.TokenEnv, false)
	default:
		fail("metering.export.to", "%q is not stripe, openmeter, http or none", e.To)
	}
}
