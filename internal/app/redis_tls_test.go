package app

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// TestQuotaStoreOverRedisTLS serves with the redis quota store on a Redis
// that speaks only TLS: the spend reaches Redis when the config's tls block
// fits the server, fails closed (503) when it does not, and a bad rewrite of
// the client certificate is refused while the last good one stays in use.
func TestQuotaStoreOverRedisTLS(t *testing.T) {
	rs := redistest.StartTLS(t, true)
	f := rs.TLS()
	dir := t.TempDir()
	badCA := filepath.Join(dir, "other-ca.pem")
	other := redistest.StartTLS(t, false) // a CA that did not sign rs's certificate
	b, err := os.ReadFile(other.TLS().CAFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, badCA, string(b))
	cert := filepath.Join(dir, "client.pem")
	cb, _ := os.ReadFile(f.CertFile)
	writeFile(t, cert, string(cb))

	cases := []struct {
		name string
		tls  string // the quota_store.redis.tls block
		want string // the code of a search Check
	}{
		{"mutual tls", fmt.Sprintf("{enabled: true, ca_file: %s, cert_file: %s, key_file: %s, server_name: localhost}", f.CAFile, cert, f.KeyFile), "ok"},
		{"no client certificate", fmt.Sprintf("{enabled: true, ca_file: %s, server_name: localhost}", f.CAFile), "entitlements_unavailable"},
		{"untrusted server", fmt.Sprintf("{enabled: true, ca_file: %s, cert_file: %s, key_file: %s, server_name: localhost}", badCA, cert, f.KeyFile), "entitlements_unavailable"},
		{"tls off", "{enabled: false}", "entitlements_unavailable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := quotaDemoDir(t, rs.Addr(), 100000, 10)
			b, _ := os.ReadFile(path)
			s := strings.Replace(string(b), "retry_every: 50ms}}", "retry_every: 50ms, tls: "+c.tls+"}}", 1)
			if s == string(b) {
				t.Fatal("quota_store line not found in the config")
			}
			writeFile(t, path, s)
			srv := startServe(t, path)
			if got := code(srv.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"})); got != c.want {
				t.Fatalf("search: %s, want %s", got, c.want)
			}
			if c.want != "ok" {
				return
			}
			keys, err := rs.Client().Keys(t.Context(), "*requests*").Result()
			if err != nil || len(keys) == 0 {
				t.Errorf("no requests counter in Redis after an allowed spend: %v %v", keys, err)
			}

			// A half-written certificate is refused; the good one stays.
			before := metricValue(t, srv, `tollgate_reloads_total{file="tls",result="error"}`)
			writeFile(t, cert, "-----BEGIN CERTIFICATE-----\ntruncated")
			waitFor(t, func() bool {
				return metricValue(t, srv, `tollgate_reloads_total{file="tls",result="error"}`) != before
			})
			// New connections still present the last good certificate.
			rs.Restart()
			waitFor(t, func() bool {
				return code(srv.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"})) == "ok"
			})
			writeFile(t, cert, string(cb))
		})
	}
}
