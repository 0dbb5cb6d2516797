package config

import (
	"strings"
	"testing"
)

func TestMeteringChecked(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_METER_KEY", strings.Repeat("k", 32))
	t.Setenv("TOLLGATE_TEST_SHORT_KEY", "short")
	t.Setenv("TOLLGATE_TEST_STRIPE", "sk_test_123")
	base := `entitlements:
  file: {path: e.yaml}
plans:
  pro: {features: [chat], quotas: {tokens: {limit: 1000, period: day}}}
routes:
  - name: chat
    match: {path: {prefix: /v1/chat}}
    feature: chat
    quota: tokens
    meter: {units_from: {body: usage.total_tokens}}
`
	good := "metering:\n  key_env: TOLLGATE_TEST_METER_KEY\n  outbox: {path: usage.db}\n"
	tests := []struct {
		name string
		doc  string
		want string // "" means valid
	}{
		{"valid", base + good, ""},
		{"no key", base + "metering:\n  outbox: {path: usage.db}\n", "t.yaml:11: metering.key_env: is required when a route has a meter"},
		{"short key", base + "metering:\n  key_env: TOLLGATE_TEST_SHORT_KEY\n  outbox: {path: usage.db}\n", "t.yaml:12: metering.key_env: $TOLLGATE_TEST_SHORT_KEY holds 5 bytes; the key needs at least 32"},
		{"unset key", base + "metering:\n  key_env: TOLLGATE_TEST_NO_SUCH_KEY\n  outbox: {path: usage.db}\n", "t.yaml:12: metering.key_env: environment variable TOLLGATE_TEST_NO_SUCH_KEY is unset or empty"},
		{"no outbox path", base + "metering:\n  key_env: TOLLGATE_TEST_METER_KEY\n", "metering.outbox.path: is required for the file outbox"},
		{"bad store", base + good + "  export: {to: kafka}\n", `metering.export.to: "kafka" is not stripe, openmeter, http or none`},
		{"stripe without key", base + good + "  export: {to: stripe}\n", "metering.export.stripe.secret_key_env: is required"},
		{"stripe", base + good + "  export: {to: stripe, stripe: {secret_key_env: TOLLGATE_TEST_STRIPE}}\n", ""},
		{"when_full", base + strings.Replace(good, "{path: usage.db}", "{path: usage.db, when_full: drop}", 1), `metering.outbox.when_full: "drop" is not refuse or admit`},
		{"redis outbox without address", base + strings.Replace(good, "{path: usage.db}", "{store: redis}", 1), "metering.outbox.redis.address: is required"},
		{"no meter needs no key", strings.Replace(base, "    meter: {units_from: {body: usage.total_tokens}}\n", "", 1), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("t.yaml", []byte(tt.doc))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("err = %v, want none", err)
				}
				if c.Metered() && !strings.HasSuffix(c.Metering.Outbox.Path, "usage.db") {
					t.Errorf("outbox path = %q", c.Metering.Outbox.Path)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
