package config

import (
	"strings"
	"testing"
	"time"
)

// paidBase is a config with one priced route and x402 set up (lines 1-11);
// tests append a payments.mpp block at line 12.
const paidBase = `entitlements: {file: {path: e.yaml}}
routes:
  - {name: forecast, match: {path: {prefix: /forecast}}, price: "0.001"}
payments:
  x402:
    network: eip155:84532
    asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    asset_name: USDC
    asset_version: "2"
    decimals: 6
    pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
    facilitator: {url: "http://127.0.0.1:1"}
`

func TestPaymentsMPP(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_MPP_KEY", strings.Repeat("k", 32))
	t.Setenv("TOLLGATE_TEST_MPP_SHORT", "short-key")
	tests := []struct {
		name, doc string
		want      string // the error, "" for none
		realm     string
		ttl       time.Duration
	}{
		{"on, defaults", paidBase + "  mpp: {enabled: true, key_env: TOLLGATE_TEST_MPP_KEY}\n", "", "api", 5 * time.Minute},
		{"realm from responses.realm", paidBase + "  mpp: {enabled: true, key_env: TOLLGATE_TEST_MPP_KEY}\nresponses: {realm: api.example.com}\n", "", "api.example.com", 5 * time.Minute},
		{"own realm and ttl", paidBase + "  mpp: {enabled: true, key_env: TOLLGATE_TEST_MPP_KEY, realm: pay.example.com, ttl: 2m}\n", "", "pay.example.com", 2 * time.Minute},
		{"off needs no key", paidBase + "  mpp: {enabled: false}\n", "", "api", 5 * time.Minute},
		{"no key_env", paidBase + "  mpp:\n    enabled: true\n",
			"t.yaml:13: payments.mpp.key_env: is required: the environment variable holding the challenge-binding key (at least 32 bytes)", "", 0},
		{"key unset", paidBase + "  mpp:\n    enabled: true\n    key_env: TOLLGATE_TEST_MPP_UNSET\n",
			"t.yaml:15: payments.mpp.key_env: environment variable TOLLGATE_TEST_MPP_UNSET is unset or empty", "", 0},
		{"key too short", paidBase + "  mpp:\n    enabled: true\n    key_env: TOLLGATE_TEST_MPP_SHORT\n",
			"t.yaml:15: payments.mpp.key_env: TOLLGATE_TEST_MPP_SHORT holds 9 bytes: want at least 32 bytes", "", 0},
		{"ttl too long", paidBase + "  mpp:\n    enabled: true\n    key_env: TOLLGATE_TEST_MPP_KEY\n    ttl: 48h\n",
			"t.yaml:16: payments.mpp.ttl: want one second to 24 hours", "", 0},
		{"realm not ASCII", paidBase + "  mpp:\n    enabled: true\n    key_env: TOLLGATE_TEST_MPP_KEY\n    realm: \"caf\u00e9\"\n",
			"t.yaml:16: payments.mpp.realm: want printable ASCII (the draft: realm SHOULD be ASCII)", "", 0},
		{"on without anything to pay", "entitlements: {file: {path: e.yaml}}\npayments:\n  mpp: {enabled: true, key_env: TOLLGATE_TEST_MPP_KEY}\n",
			"t.yaml:3: payments.mpp.enabled: needs payments.x402 (network, asset, pay_to, facilitator) and a route with a price", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("t.yaml", []byte(tt.doc))
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Fatalf("error:\n%s\nwant:\n%s", got, tt.want)
			}
			if err == nil {
				if m := c.Payments.MPP; m.Realm != tt.realm || m.TTL != tt.ttl {
					t.Errorf("realm %q ttl %v, want %q %v", m.Realm, m.TTL, tt.realm, tt.ttl)
				}
			}
		})
	}
}
