package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/policy"
)

func TestLoadExample(t *testing.T) {
	c, err := Load("../examples/tollgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"grpc", c.Server.GRPCAddress, "127.0.0.1:9191"},
		{"admin", c.Server.AdminAddress, "127.0.0.1:9090"},
		{"entitlements path is relative to the config", c.Entitlements.File.Path, filepath.Join("..", "examples", "entitlements.yaml")},
		{"plans in file order", strings.Join(c.Policy.PlanNames(), ","), "free,pro"},
		{"routes", len(c.Policy.Routes()), 3},
		{"identity chain", len(c.Chain), 3},
		{"cache ttl", c.Entitlements.Cache.TTL, 30 * time.Second},
		{"subject header", c.Headers.Subject, "x-tollgate-subject"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse("t.yaml", []byte("entitlements: {file: {path: e.yaml}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Entitlements.Cache.Timeout, 50*time.Millisecond; got != want {
		t.Errorf("source timeout = %v, want %v", got, want)
	}
	if got, want := len(c.Chain), 2; got != want {
		t.Errorf("default identity chain = %d extractors, want %d (x-api-key, bearer)", got, want)
	}
	if c.Policy.Match(&policy.Request{Method: "GET", Path: "/"}) != nil {
		t.Error("with no routes the default must be deny")
	}
}

func TestErrorsNameFileLineField(t *testing.T) {
	base := `entitlements:
  file: {path: e.yaml}
plans:
  free: {features: [search]}
routes:
  - name: search
    match: {path: {prefix: /v1/search}}
    feature: search
`
	tests := []struct {
		name string
		doc  string
		want string
	}{
		{"unknown top-level field", base + "sevrer: {}\n", "t.yaml:9: sevrer: unknown field; did you mean `server`?"},
		{"unknown nested field", strings.Replace(base, "feature: search", "featur: search", 1), "t.yaml:8: routes[0].featur: unknown field; did you mean `feature`?"},
		{"unknown plan field", strings.Replace(base, "{features: [search]}", "{feature: [search]}", 1), "t.yaml:4: plans.free.feature: unknown field; did you mean `features`?"},
		{"route feature not in any plan", strings.Replace(base, "feature: search", "feature: chat", 1), `t.yaml:8: routes[0].feature: "chat" is not a feature of any plan`},
		{"bad status code name", base + "responses:\n  status:\n    payment_faild: 403\n", `t.yaml:11: responses.status.payment_faild: "payment_faild" is not a decision code`},
		{"bad status", base + "responses:\n  status:\n    payment_failed: 200\n", "t.yaml:11: responses.status.payment_failed: 200 is not a 4xx or 5xx status"},
		{"bad log level", base + "log: {level: loud}\n", `t.yaml:9: log.level: "loud"`},
		{"sample rate", base + "log: {allow_sample_rate: 2}\n", "t.yaml:9: log.allow_sample_rate: 2 is not between 0 and 1"},
		{"bad address", base + "server: {grpc_address: nowhere}\n", `t.yaml:9: server.grpc_address: "nowhere" is not host:port`},
		{"timeout over envoy's", strings.Replace(base, "file: {path: e.yaml}", "file: {path: e.yaml}\n  cache: {timeout: 250ms}", 1), "entitlements.cache.timeout: 250ms is not under server.envoy_timeout 200ms"},
		{"bad identity", base + "identity: [cookie]\n", `t.yaml:9: identity[0]: unknown identity kind "cookie"`},
		{"wrong type", base + "shadow: maybe\n", `t.yaml:9: shadow: expected true or false, got "maybe"`},
		{"bad duration", base + "server: {drain_timeout: soon}\n", "t.yaml:9:"},
		{"no source path", "plans: {}\n", "entitlements.file.path: is required"},
		{"unknown source", "entitlements: {source: ldap}\n", `entitlements.source: "ldap" is not a source`},
		{"http needs a url", "entitlements: {source: http}\n", "entitlements.http.url: is required"},
		{"http url", "entitlements: {source: http, http: {url: ftp://x}}\n", `entitlements.http.url: "ftp://x" is not an http(s) URL`},
		{"http timeout", "entitlements: {source: http, http: {url: http://x, timeout: 300ms}}\n", "entitlements.http.timeout: 300ms is not under"},
		{"stripe key", "entitlements: {source: stripe, stripe: {customers: c.yaml}}\n", "entitlements.stripe.secret_key_env: is required"},
		{"raised envoy timeout", "server: {envoy_timeout: 1s}\nentitlements: {source: http, http: {url: http://x, timeout: 300ms}, cache: {timeout: 400ms}}\nlog: {level: loud}\n", `log.level: "loud"`},
		{"empty file", "\n", "t.yaml: the file is empty"},
		{"comments only", "# nothing yet\n", "t.yaml: the file is empty"},
		{"redis tls file without tls", base + "quota_store:\n  store: redis\n  redis:\n    address: r:6379\n    tls: {ca_file: ca.pem}\n",
			"t.yaml:13: quota_store.redis.tls.ca_file: is set but quota_store.redis.tls.enabled is false"},
		{"redis tls cert without key", base + "quota_store:\n  store: redis\n  redis:\n    address: r:6379\n    tls: {enabled: true, cert_file: c.pem}\n",
			"t.yaml:13: quota_store.redis.tls: set cert_file and key_file together"},
		{"cluster db", base + "quota_store:\n  store: redis\n  redis: {address: r:6379, cluster: true, db: 2}\n",
			"t.yaml:11: quota_store.redis.db: must be 0 with cluster"},
		{"cluster prefix without hash tag", "entitlements:\n  source: redis\n  redis: {address: r:6379, cluster: true, prefix: \"tollgate:ent:\"}\n",
			`t.yaml:3: entitlements.redis.prefix: "tollgate:ent:" has no hash tag`},
		{"cluster default prefix", "entitlements:\n  source: redis\n  redis: {address: r:6379, cluster: true}\n",
			`entitlements.redis.prefix: "" has no hash tag`},
		{"redis source tls", "entitlements:\n  source: redis\n  redis: {address: r:6379, tls: {server_name: redis.internal}}\n",
			"t.yaml:3: entitlements.redis.tls.server_name: is set but entitlements.redis.tls.enabled is false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestAllProblemsReported(t *testing.T) {
	doc := "log: {level: loud, allow_sample_rate: 3}\nentitlements: {file: {path: e.yaml}}\n"
	_, err := Parse("t.yaml", []byte(doc))
	if err == nil {
		t.Fatal("want errors")
	}
	if got := strings.Count(err.Error(), "\n") + 1; got != 2 {
		t.Errorf("got %d problems, want 2:\n%v", got, err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !os.IsNotExist(err) {
		t.Errorf("err = %v, want not-exist", err)
	}
}

func TestRedisTLSPathsAreRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	abs := filepath.Join(dir, "etc", "c.pem") // named absolute in the file
	for _, f := range []string{"conf/ca.pem", "etc/c.pem", "conf/k.pem", "conf/q/ca.pem"} {
		writeFile(t, filepath.Join(dir, f), "pem")
	}
	doc := `entitlements:
  source: redis
  redis: {address: r:6379, tls: {enabled: true, ca_file: ca.pem, cert_file: ` + abs + `, key_file: k.pem}}
quota_store:
  store: redis
  redis: {address: r:6379, tls: {enabled: true, ca_file: q/ca.pem}}
`
	c, err := Parse(filepath.Join(dir, "conf", "t.yaml"), []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"source ca", c.Entitlements.Redis.TLS.CAFile, filepath.Join(dir, "conf", "ca.pem")},
		{"absolute stays", c.Entitlements.Redis.TLS.CertFile, abs},
		{"source key", c.Entitlements.Redis.TLS.KeyFile, filepath.Join(dir, "conf", "k.pem")},
		{"store ca", c.QuotaStore.Redis.TLS.CAFile, filepath.Join(dir, "conf", "q", "ca.pem")},
		{"store enabled", c.QuotaStore.Redis.TLS.Enabled, true},
		{"address through the shared block", c.QuotaStore.Redis.Address, "r:6379"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

// writeFile writes data to path, making its directory.
func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestHasHashTag(t *testing.T) {
	cases := []struct {
		prefix string
		want   bool
	}{
		{"{tollgate:ent}:", true},
		{"app:{ent}:", true},
		{"tollgate:ent:", false},
		{"{}:", false},
		{"{tollgate:ent:", false},
		{"}x{y}", true},
		{"", false},
	}
	for _, c := range cases {
		if got := hasHashTag(c.prefix); got != c.want {
			t.Errorf("hasHashTag(%q) = %v, want %v", c.prefix, got, c.want)
		}
	}
}

// TestAddressesAreCheckedWithoutEchoingSecrets: an address or URL that
// carries credentials is refused, with the file, line and field, and the
// error never holds the password (nor the user name of a URL).
func TestAddressesAreCheckedWithoutEchoingSecrets(t *testing.T) {
	const secret = "s3cr3t-Pa55"
	redisSource := func(addr string) string {
		return "entitlements:\n  source: redis\n  redis: {address: \"" + addr + "\"}\n"
	}
	quotaStore := func(addr string) string {
		return "entitlements: {file: {path: e.yaml}}\nquota_store:\n  store: redis\n  redis:\n    address: \"" + addr + "\"\n"
	}
	httpSource := func(u string) string {
		return "entitlements:\n  source: http\n  http: {url: \"" + u + "\"}\n"
	}
	tests := []struct {
		name string
		doc  string
		want string // "" means the config loads
	}{
		{"redis host:port", redisSource("redis.internal:6379"), ""},
		{"redis IPv6", redisSource("[::1]:6379"), ""},
		{"redis URL with a password", redisSource("redis://:" + secret + "@redis.internal:6379"),
			`t.yaml:3: entitlements.redis.address: "redis://xxxxx@redis.internal:6379" is not host:port: write the address alone; a password goes in an environment variable`},
		{"rediss URL with user and password", redisSource("rediss://admin:" + secret + "@r:6380/0"),
			`t.yaml:3: entitlements.redis.address: "rediss://xxxxx@r:6380/0" is not host:port`},
		{"redis password@host without a scheme", redisSource(":" + secret + "@r:6379"),
			`t.yaml:3: entitlements.redis.address: "xxxxx@r:6379" is not host:port`},
		{"redis password with an @ in it", redisSource("redis://u:" + secret + "@x@r:6379"),
			`entitlements.redis.address: "redis://xxxxx@r:6379"`},
		{"redis without a port", redisSource("redis.internal"), `t.yaml:3: entitlements.redis.address: "redis.internal" is not host:port`},
		{"redis port out of range", redisSource("r:70000"), `entitlements.redis.address: host "r": the port is not a number from 1 to 65535`},
		{"redis port not a number", redisSource("r:redis"), `the port is not a number`},
		{"redis empty host", redisSource(":6379"), `entitlements.redis.address: ":6379" is not host:port`},
		{"quota store URL with a password", quotaStore("redis://default:" + secret + "@r:6379"),
			`t.yaml:5: quota_store.redis.address: "redis://xxxxx@r:6379" is not host:port`},
		{"http URL", httpSource("https://billing.internal/v1"), ""},
		{"http URL with credentials", httpSource("https://alice:" + secret + "@billing.internal/v1"),
			`t.yaml:3: entitlements.http.url: "https://xxxxx@billing.internal/v1" has credentials in it`},
		{"http URL with credentials and a wrong scheme", httpSource("htp://alice:" + secret + "@billing.internal/v1"),
			`t.yaml:3: entitlements.http.url: "htp://xxxxx@billing.internal/v1" has credentials in it`},
		{"http URL that does not parse", httpSource("http://alice:" + secret + "@[::1/x"),
			`t.yaml:3: entitlements.http.url: "http://xxxxx@[::1/x" is not a URL`},
		{"http URL with a token in the query", httpSource("ftp://billing/x?token=" + secret),
			`entitlements.http.url: "ftp://billing/x" is not an http(s) URL`},
		{"stripe api_base with credentials", "entitlements:\n  source: stripe\n  stripe: {secret_key_env: K, customers: c.yaml, api_base: \"https://u:" + secret + "@api.stripe.test\"}\n",
			`t.yaml:3: entitlements.stripe.api_base: "https://xxxxx@api.stripe.test" has credentials in it`},
		{"grpc address with credentials", "entitlements: {file: {path: e.yaml}}\nserver: {grpc_address: \"u:" + secret + "@127.0.0.1:9191\"}\n",
			`t.yaml:2: server.grpc_address: "xxxxx@127.0.0.1:9191" is not host:port or unix:///path`},
		{"admin port out of range", "entitlements: {file: {path: e.yaml}}\nserver: {admin_address: \"127.0.0.1:99999\"}\n",
			`t.yaml:2: server.admin_address: host "127.0.0.1": the port is not a number from 0 to 65535`},
		{"grpc any port", "entitlements: {file: {path: e.yaml}}\nserver: {grpc_address: \"127.0.0.1:0\"}\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tt.doc))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("err = %v, want none", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "alice") {
				t.Errorf("the error echoes the credentials: %v", err)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"r:6379", "r:6379"},
		{"redis://:pw@r:6379", "redis://xxxxx@r:6379"},
		{"u:pw@r:6379", "xxxxx@r:6379"},
		{"https://h/p?token=t", "https://h/p…"},
		{"https://u:p@h/p#frag@x", "https://xxxxx@x"},
		// A password that holds '?', '#', '/' or '@' is masked whole.
		{"redis://:hunter2?x@redis:6379", "redis://xxxxx@redis:6379"},
		{"https://user:pa?ss@host/x", "https://xxxxx@host/x"},
		{"redis://:a#b/c@d@r:6379", "redis://xxxxx@r:6379"},
		// Connection strings carry options, a password among them.
		{"cache.example.net:6380,password=SECRETKEY=,ssl=True", "cache.example.net:6380…"},
		{"host=r port=6379 password=SECRETKEY", "host…"},
		{"r:6379;password=SECRETKEY", "r:6379…"},
	}
	for _, tt := range tests {
		got := Redact(tt.in)
		if got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
		for _, secret := range []string{"pw", "hunter2", "pa?ss", "SECRETKEY", "a#b"} {
			if strings.Contains(tt.in, secret) && strings.Contains(got, secret) {
				t.Errorf("Redact(%q) = %q still holds %q", tt.in, got, secret)
			}
		}
	}
}

// TestAddressErrorsNeverQuoteAPassword: whatever is wrong with an address,
// its error does not hold the password written into it.
func TestAddressErrorsNeverQuoteAPassword(t *testing.T) {
	const secret = "SECRETKEY"
	for _, addr := range []string{
		"redis://:" + secret + "?x@redis:6379",
		"redis://:" + secret + "#x@redis:6379",
		"cache.example.net:6380,password=" + secret + ",ssl=True",
		"cache.example.net:6380;password=" + secret,
		"r:" + secret,
		"r:6379 password=" + secret,
		"unix://" + secret + "@x",
	} {
		for name, check := range map[string]func(string) error{
			"CheckHostPort":      CheckHostPort,
			"checkListenAddress": func(a string) error { return checkListenAddress(a, false) },
			"checkHTTPURL":       checkHTTPURL,
		} {
			err := check(addr)
			if err == nil {
				t.Errorf("%s(%q) accepted it", name, addr)
				continue
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s(%q): %v", name, addr, err)
			}
		}
	}
}

func TestConfigErrorf(t *testing.T) {
	parsed, err := Parse("t.yaml", []byte("# head\nentitlements:\n  file: {path: e.yaml}\n"))
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	named := Default()
	named.Path = "conf/t.yaml"
	tests := []struct {
		name string
		c    *Config
		path string
		want string
	}{
		{"parsed field", parsed, "entitlements.file.path", "t.yaml:3: entitlements.file.path: open e.yaml: no such file"},
		{"parsed field not written", parsed, "server.tls.cert_file", "t.yaml:2: server.tls.cert_file: open e.yaml: no such file"},
		{"built in memory with a path", &named, "entitlements.file.path", "conf/t.yaml: entitlements.file.path: open e.yaml: no such file"},
		{"built in memory", &def, "entitlements.file.path", "config: entitlements.file.path: open e.yaml: no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.Errorf(tt.path, "open %s: no such file", "e.yaml").Error(); got != tt.want {
				t.Errorf("Errorf(%q) = %q, want %q", tt.path, got, tt.want)
			}
		})
	}
}

// TestTimeoutsUnderEnvoys: every source and store timeout must be under
// server.envoy_timeout, whatever it is raised to; the error is exact.
func TestTimeoutsUnderEnvoys(t *testing.T) {
	redisSource := func(envoy, timeout string) string {
		return "server: {envoy_timeout: " + envoy + "}\nentitlements:\n  source: redis\n  redis: {address: r:6379, timeout: " + timeout + "}\n"
	}
	httpSource := func(envoy, timeout string) string {
		return "server: {envoy_timeout: " + envoy + "}\nentitlements:\n  source: http\n  http: {url: http://billing, timeout: " + timeout + "}\n"
	}
	tests := []struct {
		name string
		doc  string
		want string // "" means the config loads
	}{
		{"redis source under a raised envoy timeout", redisSource("500ms", "300ms"), ""},
		{"redis source at envoy's", redisSource("500ms", "500ms"), "t.yaml:4: entitlements.redis.timeout: 500ms is not under server.envoy_timeout 500ms"},
		{"redis source over the default", redisSource("200ms", "300ms"), "t.yaml:4: entitlements.redis.timeout: 300ms is not under server.envoy_timeout 200ms"},
		{"http source under a raised envoy timeout", httpSource("500ms", "300ms"), ""},
		{"http source over the default", httpSource("200ms", "300ms"), "t.yaml:4: entitlements.http.timeout: 300ms is not under server.envoy_timeout 200ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tt.doc))
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestRulesCheckedAtLoad: what the adapters used to check when they were
// built (variables in the environment, files that can be read, bounds) is
// checked when the config loads, each problem as FILE:LINE: field: problem.
func TestRulesCheckedAtLoad(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"ca.pem", "tls.crt", "tls.key"} {
		writeFile(t, filepath.Join(dir, f), "pem")
	}
	t.Setenv("TOLLGATE_TEST_TOKEN", "0123456789abcdef-token\n")
	t.Setenv("TOLLGATE_TEST_EMPTY", " ")
	t.Setenv("TOLLGATE_TEST_SHORT", "k3y-9")
	t.Setenv("TOLLGATE_TEST_SPACE", "a token")
	t.Setenv("TOLLGATE_TEST_UNSET", "")
	os.Unsetenv("TOLLGATE_TEST_UNSET")

	name := filepath.Join(dir, "t.yaml")
	const file = "entitlements: {file: {path: e.yaml}}\n"
	http := func(fields string) string {
		return "entitlements:\n  source: http\n  http: {url: \"http://billing\", " + fields + "}\n"
	}
	stripe := func(fields string) string {
		return "entitlements:\n  source: stripe\n  stripe: {customers: c.yaml, " + fields + "}\n"
	}
	redisSource := func(fields string) string {
		return "entitlements:\n  source: redis\n  redis: {address: r:6379, " + fields + "}\n"
	}
	quotaStore := func(fields string) string {
		return file + "quota_store:\n  store: redis\n  redis: {address: r:6379, " + fields + "}\n"
	}
	serverTLS := func(fields string) string {
		return file + "server:\n  tls: {" + fields + "}\n"
	}
	tests := []struct {
		name string
		doc  string
		want string // "" means the config loads; else every line after the file name
	}{
		{"envoy timeout negative", "server: {envoy_timeout: -1s}\n" + file,
			":1: server.envoy_timeout: must be positive\n" +
				":2: entitlements.cache.timeout: 50ms is not under server.envoy_timeout -1s (Envoy's ext_authz timeout)"},

		{"http token_env set", http("token_env: TOLLGATE_TEST_TOKEN"), ""},
		{"http token_env unset", http("token_env: TOLLGATE_TEST_UNSET"),
			":3: entitlements.http.token_env: environment variable TOLLGATE_TEST_UNSET is unset or empty"},
		{"http token_env blank", http("token_env: TOLLGATE_TEST_EMPTY"),
			":3: entitlements.http.token_env: environment variable TOLLGATE_TEST_EMPTY is unset or empty"},
		{"http token_env with a space", http("token_env: TOLLGATE_TEST_SPACE"),
			":3: entitlements.http.token_env: the token in TOLLGATE_TEST_SPACE has a space or control character; it must be visible ASCII"},
		{"http token with a space", http("token: \"a token\""),
			":3: entitlements.http.token: has a space or control character; it must be visible ASCII"},
		{"http timeout negative", http("timeout: -1ms"), ":3: entitlements.http.timeout: must not be negative"},
		{"http max_in_flight negative", http("max_in_flight: -1"), ":3: entitlements.http.max_in_flight: must not be negative"},
		{"http max_idle_conns negative", http("max_idle_conns: -1"), ":3: entitlements.http.max_idle_conns: must not be negative"},
		{"http idle_conn_timeout negative", http("idle_conn_timeout: -1s"), ":3: entitlements.http.idle_conn_timeout: must not be negative"},
		{"http breaker cooldown negative", http("breaker: {cooldown: -1s}"), ":3: entitlements.http.breaker.cooldown: must not be negative"},
		{"http url with a query", "entitlements:\n  source: http\n  http: {url: \"https://billing/v1?token=x\"}\n",
			`:3: entitlements.http.url: "https://billing/v1…" must not have a query or fragment`},

		{"stripe key set", stripe("secret_key_env: TOLLGATE_TEST_TOKEN"), ""},
		{"stripe key unset", stripe("secret_key_env: TOLLGATE_TEST_UNSET"),
			":3: entitlements.stripe.secret_key_env: environment variable TOLLGATE_TEST_UNSET is unset or empty"},
		{"stripe webhook secret unset", stripe("secret_key_env: TOLLGATE_TEST_TOKEN, webhook: {secret_env: TOLLGATE_TEST_UNSET}"),
			":3: entitlements.stripe.webhook.secret_env: environment variable TOLLGATE_TEST_UNSET is unset or empty"},
		{"stripe timeout negative", stripe("secret_key_env: TOLLGATE_TEST_TOKEN, timeout: -1ms"),
			":3: entitlements.stripe.timeout: must not be negative"},

		{"redis source password set", redisSource("password_env: TOLLGATE_TEST_TOKEN"), ""},
		{"redis source password unset", redisSource("password_env: TOLLGATE_TEST_UNSET"),
			":3: entitlements.redis.password_env: environment variable TOLLGATE_TEST_UNSET is unset or empty"},
		{"redis source timeout negative", redisSource("timeout: -1ms"), ":3: entitlements.redis.timeout: must not be negative"},
		{"redis source ca file", redisSource("tls: {enabled: true, ca_file: ca.pem}"), ""},
		{"redis source ca file missing", redisSource("tls: {enabled: true, ca_file: nope.pem}"),
			":3: entitlements.redis.tls.ca_file: open " + filepath.Join(dir, "nope.pem") + ": no such file or directory"},
		{"quota store password unset", quotaStore("password_env: TOLLGATE_TEST_UNSET"),
			":4: quota_store.redis.password_env: environment variable TOLLGATE_TEST_UNSET is unset or empty"},
		{"quota store client key missing", quotaStore("tls: {enabled: true, cert_file: tls.crt, key_file: no.key}"),
			":4: quota_store.redis.tls.key_file: open " + filepath.Join(dir, "no.key") + ": no such file or directory"},
		{"quota store timeout negative", quotaStore("timeout: -1ms"), ":4: quota_store.redis.timeout: must not be negative"},
		{"quota store password unused", file + "quota_store:\n  redis: {password_env: TOLLGATE_TEST_UNSET}\n", ""},

		{"server tls files", serverTLS("cert_file: tls.crt, key_file: tls.key, client_ca_file: ca.pem"), ""},
		{"server tls cert missing", serverTLS("cert_file: no.crt, key_file: tls.key"),
			":3: server.tls.cert_file: open " + filepath.Join(dir, "no.crt") + ": no such file or directory"},
		{"server tls client ca is a directory", serverTLS("cert_file: tls.crt, key_file: tls.key, client_ca_file: ."),
			":3: server.tls.client_ca_file: " + dir + " is a directory"},

		{"admin token_env set", file + "admin: {token_env: TOLLGATE_TEST_TOKEN}\n", ""},
		{"admin token_env unset: the endpoint is off", file + "admin: {token_env: TOLLGATE_TEST_UNSET}\n", ""},
		{"admin token_env short", file + "admin: {token_env: TOLLGATE_TEST_SHORT}\n",
			":2: admin.token_env: the token in TOLLGATE_TEST_SHORT is shorter than 16 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(name, []byte(tt.doc))
			got := ""
			if err != nil {
				got = err.Error()
			}
			want := ""
			if tt.want != "" {
				want = name + strings.ReplaceAll(tt.want, "\n", "\n"+name)
			}
			if got != want {
				t.Errorf("got  %q\nwant %q", got, want)
			}
			for _, secret := range []string{"0123456789abcdef-token", "k3y-9", "a token"} {
				if err != nil && strings.Contains(err.Error(), secret) && !strings.Contains(tt.doc, secret) {
					t.Errorf("the error holds the value of a variable: %v", err)
				}
			}
		})
	}
}
