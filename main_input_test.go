package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// Hostile or mistaken input, through the real commands: secrets written
// into addresses, a config written in place, bytes that are not UTF-8 or
// not a CheckRequest at all.

// runCommand runs tollgate with args until it exits, and returns its exit
// status, stdout and stderr. A serve that starts serving (when it should
// have refused its config) is stopped and reported.
func runCommand(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	exit := make(chan int, 1)
	go func() { exit <- run(ctx, args, strings.NewReader(""), &stdout, &stderr) }()
	deadline := time.After(time.Minute)
	for {
		select {
		case code := <-exit:
			return code, stdout.String(), stderr.String()
		case <-deadline:
		case <-time.After(10 * time.Millisecond):
			if !strings.Contains(stderr.String(), `"msg":"serving"`) {
				continue
			}
		}
		cancel()
		code := <-exit
		t.Errorf("tollgate %s ran instead of exiting (exit %d when stopped)", args[0], code)
		return code, stdout.String(), stderr.String()
	}
}

// TestSecretsInAddressesAreNeverPrinted: a password written into a Redis
// address, or credentials in the http source's URL, make serve, validate
// and check refuse the config with FILE:LINE: field: problem, and the
// secret appears in no output. (internal/app's TestRedisPasswordNeverLogged
// holds the same for a password given the documented way.)
func TestSecretsInAddressesAreNeverPrinted(t *testing.T) {
	const secret = "Hunter2-Redis-Secret-0042"
	rs := redistest.Start(t)
	dir := demoDir(t, "127.0.0.1:0")
	cfg := filepath.Join(dir, "tollgate.yaml")
	raw, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	source := func(block string) string {
		return strings.Replace(string(raw), "  source: file\n", "  source: "+block+"\n", 1)
	}
	refused := []struct {
		name  string
		conf  string
		field string
	}{
		{"redis source URL", source("redis\n  redis: {address: \"redis://:" + secret + "@" + rs.Addr() + "\"}"), "entitlements.redis.address"},
		{"redis source user and password", source("redis\n  redis: {address: \"default:" + secret + "@" + rs.Addr() + "\"}"), "entitlements.redis.address"},
		{"quota store URL", string(raw) + "\nquota_store:\n  store: redis\n  redis: {address: \"rediss://default:" + secret + "@" + rs.Addr() + "/0\"}\n", "quota_store.redis.address"},
		{"http source URL with a wrong scheme", source("http\n  http: {url: \"htp://alice:" + secret + "@billing.internal/v1\"}"), "entitlements.http.url"},
		{"http source URL", source("http\n  http: {url: \"https://alice:" + secret + "@billing.internal/v1\"}"), "entitlements.http.url"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tollgate.yaml")
			writeFile(t, path, strings.ReplaceAll(tt.conf, "path: entitlements.yaml", "path: "+filepath.Join(dir, "entitlements.yaml")))
			line := regexp.MustCompile(`tollgate: ` + regexp.QuoteMeta(path) + `:\d+: ` + regexp.QuoteMeta(tt.field) + `: `)
			for _, args := range [][]string{
				{"serve", "--config", path},
				{"validate", "--config", path},
				{"check", "--config", path, "--path", "/v1/search", "-H", "x-api-key: demo-free-key"},
			} {
				code, stdout, stderr := runCommand(t, args...)
				if code != 1 || !line.MatchString(stderr) {
					t.Errorf("%s: exit %d, stderr %q; want 1 and %s", args[0], code, stderr, line)
				}
				if out := stdout + stderr; strings.Contains(out, secret) || strings.Contains(out, "alice") {
					t.Errorf("%s prints the credentials: %q", args[0], out)
				}
			}
		})
	}
}
