package config

import (
	"cmp"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/mpp"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/x402"
)

// Payments makes refusals payable by machines (x402): routes with a price
// are paid per call, and top-ups buy credits.
type Payments struct {
	X402 struct {
		// Network is the CAIP-2 chain id, such as eip155:8453 (Base) or
		// eip155:84532 (Base Sepolia).
		Network string `yaml:"network"`
		// Asset is the token contract; AssetName and AssetVersion its
		// EIP-712 domain (USDC: "USDC" or "USD Coin", "2"); Decimals its
		// decimals (USDC: 6); Currency its name in refusals' text.
		Asset        string `yaml:"asset"`
		AssetName    string `yaml:"asset_name"`
		AssetVersion string `yaml:"asset_version"`
		Decimals     *int   `yaml:"decimals"`
		Currency     string `yaml:"currency"`
		// PayTo is the address that receives payments.
		PayTo string `yaml:"pay_to"`
		// MaxTimeoutSeconds is how long a signed authorization may stay
		// open (default 60).
		MaxTimeoutSeconds int64 `yaml:"max_timeout_seconds"`
		Facilitator       struct {
			URL      string `yaml:"url"`
			TokenEnv string `yaml:"token_env"`
			// VerifyTimeout bounds /verify (default 3s); SettleTimeout
			// bounds /settle (default 10s).
			VerifyTimeout time.Duration `yaml:"verify_timeout"`
			SettleTimeout time.Duration `yaml:"settle_timeout"`
		} `yaml:"facilitator"`
	} `yaml:"x402"`
	// MPP also takes the Payment HTTP authentication scheme (MPP,
	// draft-ryan-httpauth-payment) on the same 402s: method evm, intent
	// charge, with x402's network, asset, pay_to and route prices.
	MPP struct {
		Enabled bool `yaml:"enabled"`
		// KeyEnv names the environment variable holding the key that
		// binds challenges (HMAC-SHA256): at least 32 bytes.
		KeyEnv string `yaml:"key_env"`
		// Realm is the challenges' protection space (default:
		// responses.realm).
		Realm string `yaml:"realm"`
		// TTL is how long a challenge may be paid (default 5m).
		TTL time.Duration `yaml:"ttl"`
	} `yaml:"mpp"`
	// TopUps are offered on insufficient_credits: credits for a price.
	TopUps []struct {
		Credits int64  `yaml:"credits"`
		Price   string `yaml:"price"`
	} `yaml:"top_ups"`
	// Store is where claimed and settled payments are kept: "memory"
	// (default, one replica) or "redis" (shared by replicas).
	Store string `yaml:"store"`
	Redis struct {
		RedisConn `yaml:",inline"`
		Prefix    string `yaml:"prefix"`
	} `yaml:"redis"`
	// MaxEntries bounds the memory store (default 100000).
	MaxEntries int `yaml:"max_entries"`
	// ReconcileEvery is how often settlements with an unknown outcome are
	// looked at again (default 30s).
	ReconcileEvery time.Duration `yaml:"reconcile_every"`
	// EnvoyTimeout is the timeout of the ext_authz filter in front of paid
	// routes (default 15s): a paid Check waits for the facilitator.
	EnvoyTimeout time.Duration `yaml:"envoy_timeout"`
}

// Paid reports whether payments are configured.
func (c *Config) Paid() bool {
	if c.Payments.X402.PayTo != "" || len(c.Payments.TopUps) > 0 {
		return true
	}
	for _, r := range c.Spec.Routes {
		if strings.TrimSpace(r.Price) != "" {
			return true
		}
	}
	return false
}

func (c *Config) paymentsDefaults() {
	p := &c.Payments
	if p.Store == "" {
		p.Store = "memory"
	}
	x := &p.X402
	if x.MaxTimeoutSeconds == 0 {
		x.MaxTimeoutSeconds = 60
	}
	if x.Facilitator.VerifyTimeout == 0 {
		x.Facilitator.VerifyTimeout = 3 * time.Second
	}
	if x.Facilitator.SettleTimeout == 0 {
		x.Facilitator.SettleTimeout = 10 * time.Second
	}
	if p.EnvoyTimeout == 0 {
		p.EnvoyTimeout = 15 * time.Second
	}
	if p.ReconcileEvery == 0 {
		p.ReconcileEvery = 30 * time.Second
	}
	if x.Currency == "" {
		x.Currency = x.AssetName
	}
	m := &p.MPP
	if m.Realm == "" {
		// responses.realm's own default is set after this one.
		m.Realm = cmp.Or(c.Responses.Realm, policy.DefaultRealm)
	}
	if m.TTL == 0 {
		m.TTL = 5 * time.Minute
	}
}

// checkPayments checks the payments block and every route's price.
func (c *Config) checkPayments(fail func(path, msg string, args ...any)) {
	if !c.Paid() {
		if c.Payments.MPP.Enabled {
			fail("payments.mpp.enabled", "needs payments.x402 (network, asset, pay_to, facilitator) and a route with a price")
		}
		return
	}
	p := &c.Payments
	c.checkMPP(fail)
	x := &p.X402
	req := func(path, v string) bool {
		if v == "" {
			fail("payments.x402."+path, "is required when a route has a price or top-ups are offered")
			return false
		}
		return true
	}
	req("network", x.Network)
	req("asset_name", x.AssetName)
	req("asset_version", x.AssetVersion)
	okAsset, okPayTo := req("asset", x.Asset), req("pay_to", x.PayTo)
	if x.Decimals == nil {
		fail("payments.x402.decimals", "is required: the asset's decimals (USDC: 6)")
	} else if *x.Decimals < 0 || *x.Decimals > 36 {
		fail("payments.x402.decimals", "must be between 0 and 36")
	}
	if x.MaxTimeoutSeconds < 1 || x.MaxTimeoutSeconds > 3600 {
		fail("payments.x402.max_timeout_seconds", "must be between 1 and 3600")
	}
	if x.Network != "" && okAsset && okPayTo {
		probe := x402.PaymentRequirements{Scheme: x402.SchemeExact, Network: x.Network, Amount: "1", Asset: x.Asset, PayTo: x.PayTo,
			MaxTimeoutSeconds: x.MaxTimeoutSeconds, Extra: x402.Extra{Name: x.AssetName, Version: x.AssetVersion}}
		if err := x402.ValidateRequirements(probe, ""); err != nil {
			var xe *x402.Error
			field := ""
			if e, ok := err.(*x402.Error); ok {
				xe = e
				field = map[string]string{"payTo": "pay_to", "asset": "asset", "network": "network"}[xe.Field]
			}
			if field == "" {
				field = "network"
			}
			fail("payments.x402."+field, "%v", err)
		}
	}
	f := &x.Facilitator
	if f.URL == "" {
		fail("payments.x402.facilitator.url", "is required: the x402 facilitator that verifies and settles payments")
	} else if err := checkHTTPURL(f.URL); err != nil {
		fail("payments.x402.facilitator.url", "%v", err)
	}
	if f.TokenEnv != "" {
		if _, err := envvar.Lookup(f.TokenEnv); err != nil {
			fail("payments.x402.facilitator.token_env", "%v", err)
		}
	}
	if f.VerifyTimeout < 0 || f.SettleTimeout < 0 {
		fail("payments.x402.facilitator", "timeouts must not be negative")
	}
	if f.VerifyTimeout >= p.EnvoyTimeout {
		fail("payments.x402.facilitator.verify_timeout", "%v is not below payments.envoy_timeout (%v): Envoy would give up on the Check first", f.VerifyTimeout, p.EnvoyTimeout)
	}
	if len(p.TopUps) > 0 && f.VerifyTimeout+f.SettleTimeout >= p.EnvoyTimeout {
		fail("payments.envoy_timeout", "%v is not above verify_timeout + settle_timeout (%v): a top-up is settled during its Check", p.EnvoyTimeout, f.VerifyTimeout+f.SettleTimeout)
	}
	dec := 0
	if x.Decimals != nil {
		dec = *x.Decimals
	}
	for i, t := range p.TopUps {
		at := "payments.top_ups[" + strconv.Itoa(i) + "]"
		if t.Credits <= 0 {
			fail(at+".credits", "must be at least 1")
		}
		if _, err := x402.AtomicAmount(t.Price, dec); err != nil {
			fail(at+".price", "%q %v", t.Price, err)
		}
	}
	for i, r := range c.Spec.Routes {
		if price := strings.TrimSpace(r.Price); price != "" {
			if _, err := x402.AtomicAmount(price, dec); err != nil {
				fail("routes["+strconv.Itoa(i)+"].price", "%q %v", price, err)
			}
		}
	}
	switch p.Store {
	case "memory":
		if p.MaxEntries < 0 {
			fail("payments.max_entries", "must not be negative")
		}
	case "redis":
		if p.Redis.Address == "" {
			fail("payments.redis.address", "is required for the redis store")
		}
		checkRedisConn("payments.redis", p.Redis.RedisConn, fail)
		if p.Redis.Cluster && p.Redis.Prefix != "" && !hasHashTag(p.Redis.Prefix) {
			fail("payments.redis.prefix", "%q has no hash tag: with cluster, a payment's keys must share one slot", p.Redis.Prefix)
		}
	default:
		fail("payments.store", "%q is not memory or redis", p.Store)
	}
	if p.ReconcileEvery < time.Second {
		fail("payments.reconcile_every", "must be at least 1s")
	}
}

// checkMPP checks payments.mpp when it is on: the key's variable, and the
// realm and ttl, as mpp.ValidateConfig takes them.
func (c *Config) checkMPP(fail func(path, msg string, args ...any)) {
	m := &c.Payments.MPP
	if !m.Enabled {
		return
	}
	var key []byte
	if m.KeyEnv == "" {
		fail("payments.mpp.key_env", "is required: the environment variable holding the challenge-binding key (at least %d bytes)", mpp.MinKeyBytes)
	} else if v, err := envvar.Lookup(m.KeyEnv); err != nil {
		fail("payments.mpp.key_env", "%v", err)
	} else {
		key = []byte(v)
	}
	if err := mpp.ValidateConfig(key, m.Realm, m.TTL); err != nil {
		var ce *mpp.ConfigError
		switch {
		case !errors.As(err, &ce):
			fail("payments.mpp", "%v", err)
		case ce.Field == "key" && key == nil: // reported above
		case ce.Field == "key":
			fail("payments.mpp.key_env", "%s holds %d bytes: %s", m.KeyEnv, len(key), ce.Reason)
		default:
			fail("payments.mpp."+ce.Field, "%s", ce.Reason)
		}
	}
	// x402's network is eip155:<chain id> already (checked above), which
	// the evm method needs.
}
