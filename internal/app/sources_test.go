package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/internal/apptest"
	"github.com/tollgate-authz/tollgate/internal/redisconn"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// billingService is an in-test billing service speaking the http source's
// contract, whose records, health and call count the test controls.
type billingService struct {
	*httptest.Server
	mu      sync.Mutex
	records map[string]map[string]any // subject → record
	keys    map[string]string         // digest → subject
	down    atomic.Bool
	calls   atomic.Int64
	hold    chan struct{} // when set, requests wait on it
}

func newBillingService(t *testing.T) *billingService {
	b := &billingService{records: map[string]map[string]any{}, keys: map[string]string{}}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.calls.Add(1)
		b.mu.Lock()
		hold := b.hold
		b.mu.Unlock()
		if hold != nil {
			<-hold
		}
		if b.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		var subject string
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/entitlements/subjects/"):
			subject = strings.TrimPrefix(r.URL.Path, "/v1/entitlements/subjects/")
		case strings.HasPrefix(r.URL.Path, "/v1/entitlements/api-keys/"):
			subject = b.keys[strings.TrimPrefix(r.URL.Path, "/v1/entitlements/api-keys/")]
		}
		rec, ok := b.records[subject]
		if !ok {
			http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rec)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *billingService) set(subject, plan, status, key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.records[subject] = map[string]any{"subject": subject, "plan": plan, "status": status}
	b.keys[identity.HashKey(key)] = subject
}

// httpSourceDir writes the demo config with the http source.
func httpSourceDir(t *testing.T, url, cache string) string {
	t.Helper()
	return httpSourceDirTimeout(t, url, "150ms", cache)
}

// httpSourceDirTimeout is httpSourceDir with the http source's timeout
// given. Tests that hold the billing service until they release it give
// every timeout generously (server.envoy_timeout bounds the others), so
// that a busy machine cannot turn "held" into "timed out".
func httpSourceDirTimeout(t *testing.T, url, timeout, cache string) string {
	t.Helper()
	dir := demoDir(t, "127.0.0.1:0")
	path := filepath.Join(dir, "tollgate.yaml")
	b, _ := os.ReadFile(path)
	s := strings.Replace(string(b), "  source: file\n", "  source: http\n  http: {url: "+url+", timeout: "+timeout+"}\n", 1)
	if timeout != "150ms" {
		s = strings.Replace(s, "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  envoy_timeout: 5m\n", 1)
	}
	s = strings.Replace(s, `  cache:
    max_entries: 100000
    ttl: 30s
    negative_ttl: 5s
    stale_if_error: 5m
    timeout: 50ms`, "  cache: "+cache, 1)
	s = strings.Replace(s, "allow_sample_rate: 1.0", "allow_sample_rate: 0", 1)
	writeFile(t, path, s)
	return path
}

func metricValue(t *testing.T, s *server, series string) string {
	t.Helper()
	return apptest.MetricValue(t, s.admin, series)
}

func TestHTTPSourceThroughServer(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_ADMIN_TOKEN", "test-admin-token-0123456789")
	free := map[string]string{"x-api-key": "demo-free-key"}

	// The cache's rule: while a source call for a key is in flight, every
	// other miss on that key waits for it; a miss that comes after the
	// answer was stored finds it (fetch looks again before calling). So the
	// source is asked once however the 1000 Checks interleave, as long as
	// the call succeeds: the timeouts here are generous so that a busy
	// machine cannot make the held call fail.
	t.Run("1000 concurrent checks for a cold subject make one source call", func(t *testing.T) {
		b := newBillingService(t)
		b.set("initech", "free", "active", "demo-free-key")
		s := startServe(t, httpSourceDirTimeout(t, b.URL, "1m", "{ttl: 1h, timeout: 2m}"))
		hold := make(chan struct{})
		b.mu.Lock()
		b.hold = hold
		b.mu.Unlock()
		var wg sync.WaitGroup
		var ok atomic.Int64
		for range 1000 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if code(s.check(t, "GET", "/v1/search", free)) == "ok" {
					ok.Add(1)
				}
			}()
		}
		waitFor(t, func() bool { return b.calls.Load() >= 1 })
		close(hold)
		wg.Wait()
		// Checks that arrive after the answer landed are cache hits: either
		// way the source was asked once.
		if got := b.calls.Load(); got != 1 {
			t.Errorf("source calls = %d, want 1", got)
		}
		if ok.Load() != 1000 {
			t.Errorf("allowed %d of 1000", ok.Load())
		}
	})

	t.Run("an outage is served stale up to stale_if_error, then 503", func(t *testing.T) {
		b := newBillingService(t)
		b.set("initech", "free", "active", "demo-free-key")
		s := startServe(t, httpSourceDir(t, b.URL, "{ttl: 50ms, negative_ttl: 50ms, stale_if_error: 500ms, timeout: 150ms}"))
		if got := code(s.check(t, "GET", "/v1/search", free)); got != "ok" {
			t.Fatalf("before the outage: %s", got)
		}
		b.down.Store(true)
		// Right after the TTL the record is stale, the source fails, and the
		// last known record still answers.
		waitFor(t, func() bool {
			return metricValue(t, s, `tollgate_entitlement_cache_total{outcome="stale"}`) != "0" || code(s.check(t, "GET", "/v1/search", free)) != "ok"
		})
		if v := metricValue(t, s, `tollgate_entitlement_cache_total{outcome="stale"}`); v == "0" {
			t.Fatalf("no stale answer was served during the outage")
		}
		// Past stale_if_error: 503 entitlements_unavailable.
		waitFor(t, func() bool { return code(s.check(t, "GET", "/v1/search", free)) == "entitlements_unavailable" })
		// The breaker opened on the way, and metrics show it.
		if v := metricValue(t, s, `tollgate_entitlement_source_breaker_state{source="http",state="open"}`); v != "1" {
			t.Errorf("breaker open gauge = %q, want 1", v)
		}
	})

	t.Run("after invalidation the next check sees the new record", func(t *testing.T) {
		b := newBillingService(t)
		b.set("globex", "pro", "past_due", "demo-pastdue-key")
		s := startServe(t, httpSourceDir(t, b.URL, "{ttl: 1h, timeout: 150ms}"))
		pastdue := map[string]string{"x-api-key": "demo-pastdue-key"}
		if got := code(s.check(t, "GET", "/v1/search", pastdue)); got != "payment_failed" {
			t.Fatalf("before paying: %s", got)
		}
		b.set("globex", "pro", "active", "demo-pastdue-key") // the card is updated
		if got := code(s.check(t, "GET", "/v1/search", pastdue)); got != "payment_failed" {
			t.Fatalf("without invalidation the cache must still answer from its copy: %s", got)
		}
		r, _ := http.NewRequest("POST", "http://"+s.admin+"/v1/invalidate", strings.NewReader(`{"subject":"globex"}`))
		r.Header.Set("Authorization", "Bearer test-admin-token-0123456789")
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got := code(s.check(t, "GET", "/v1/search", pastdue)); got != "ok" {
			t.Errorf("after invalidation: %s, want ok", got)
		}
	})

	t.Run("memory stays bounded under a flood of unknown keys", func(t *testing.T) {
		b := newBillingService(t)
		s := startServe(t, httpSourceDirTimeout(t, b.URL, "1m", "{max_entries: 200, negative_max_entries: 100, ttl: 1m, negative_ttl: 1m, timeout: 2m}"))
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 500 {
					if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": fmt.Sprint("made-up-", w, "-", i)})); got != "invalid_credentials" {
						t.Errorf("unknown key: %s", got)
						return
					}
				}
			}()
		}
		wg.Wait()
		// Unknown keys are held apart from known subjects, up to negative_max_entries.
		if got := metricValue(t, s, "tollgate_entitlement_cache_entries"); got != "100" {
			t.Errorf("cache entries = %s, want 100 (negative_max_entries)", got)
		}
	})
}

// TestRedisSourceReplicasSeeWritesAtOnce runs two servers on the redis
// source with a one-hour TTL: a write (redissource.Put, as `tollgate
// entitlements set` writes) reaches both through pub/sub, so a customer who pays is let in at once.
// It runs on a plain Redis and on one that speaks only mutual TLS.
func TestRedisSourceReplicasSeeWritesAtOnce(t *testing.T) {
	cases := []struct {
		name  string
		start func(t *testing.T) *redistest.Server
		tls   func(f *redistest.TLSFiles) redisconn.TLS // the writer's TLS
		conf  func(f *redistest.TLSFiles) string        // the config's tls block
	}{
		{"plain", func(t *testing.T) *redistest.Server { return redistest.Start(t) },
			func(*redistest.TLSFiles) redisconn.TLS { return redisconn.TLS{} },
			func(*redistest.TLSFiles) string { return "" }},
		{"mutual tls", func(t *testing.T) *redistest.Server { return redistest.StartTLS(t, true) },
			func(f *redistest.TLSFiles) redisconn.TLS {
				return redisconn.TLS{Enabled: true, CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: f.KeyFile}
			},
			func(f *redistest.TLSFiles) string {
				return fmt.Sprintf(", tls: {enabled: true, ca_file: %s, cert_file: %s, key_file: %s}", f.CAFile, f.CertFile, f.KeyFile)
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rs := c.start(t)
			// The writer connects as the CLI's entitlements set does.
			conn, err := redisconn.Dial(redisconn.Options{Address: rs.Addr(), TLS: c.tls(rs.TLS()), Timeout: patience})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			writer, err := redissource.New(redissource.Options{Client: conn.UniversalClient})
			if err != nil {
				t.Fatal(err)
			}
			set := func(status entitlement.Status) {
				t.Helper()
				rec := redissource.Record{
					Entitlement:   entitlement.Entitlement{Subject: "globex", Plan: "pro", Status: status},
					APIKeyDigests: []string{identity.HashKey("demo-pastdue-key")},
				}
				if err := writer.Put(context.Background(), rec); err != nil {
					t.Fatalf("put: %v", err)
				}
			}
			set(entitlement.StatusPastDue)
			dir := demoDir(t, "127.0.0.1:0")
			cfg := filepath.Join(dir, "tollgate.yaml")
			raw, _ := os.ReadFile(cfg)
			s := strings.Replace(string(raw), "  source: file\n", "  source: redis\n  redis: {address: "+rs.Addr()+", timeout: 150ms"+c.conf(rs.TLS())+"}\n", 1)
			s = strings.Replace(s, "    ttl: 30s\n", "    ttl: 1h\n", 1)
			// This test is about pub/sub, not speed: give a loaded CI
			// machine running -race room for a first lookup over TLS.
			s = strings.Replace(s, "    timeout: 50ms\n", "    timeout: 150ms\n", 1)
			writeFile(t, cfg, s)
			replicas := []*server{startServe(t, cfg), startServe(t, cfg)}
			key := map[string]string{"x-api-key": "demo-pastdue-key"}
			for i, r := range replicas {
				if got := code(r.check(t, "GET", "/v1/search", key)); got != "payment_failed" {
					t.Fatalf("replica %d before paying: %s", i, got)
				}
				// A write published before a replica subscribes is not
				// delivered (the replica purges its cache on subscribing
				// instead): wait, so the test proves the pub/sub path.
				waitFor(t, func() bool { return strings.Contains(r.logs.String(), "subscribed to entitlement invalidations") })
			}
			set(entitlement.StatusActive)
			for i, r := range replicas {
				waitFor(t, func() bool { return code(r.check(t, "GET", "/v1/search", key)) == "ok" })
				if v := metricValue(t, r, `tollgate_entitlement_invalidations_total{via="pubsub"}`); v == "" || v == "0" {
					t.Errorf("replica %d: pub/sub invalidation not counted", i)
				}
			}
		})
	}
}

// TestSourceTimeoutsFollowEnvoys: with server.envoy_timeout raised to
// 500ms, as docs/sources.md tells users to do, an http or redis source with a
// 300ms timeout builds and serves (both used to refuse anything ≥ 200ms).
func TestSourceTimeoutsFollowEnvoys(t *testing.T) {
	b := newBillingService(t)
	b.set("initech", "free", "active", "demo-free-key")
	rs := redistest.Start(t)
	writer, err := redissource.New(redissource.Options{Client: rs.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.Put(context.Background(), redissource.Record{
		Entitlement:   entitlement.Entitlement{Subject: "initech", Plan: "free", Status: entitlement.StatusActive},
		APIKeyDigests: []string{identity.HashKey("demo-free-key")},
	}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, source string }{
		{"http", "http\n  http: {url: " + b.URL + ", timeout: 300ms}"},
		{"redis", "redis\n  redis: {address: \"" + rs.Addr() + "\", timeout: 300ms}"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := demoDir(t, "127.0.0.1:0")
			cfg := filepath.Join(dir, "tollgate.yaml")
			editFile(t, cfg, "  source: file\n", "  source: "+tt.source+"\n")
			editFile(t, cfg, "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  envoy_timeout: 500ms\n")
			editFile(t, cfg, "    timeout: 50ms\n", "    timeout: 400ms\n") // the cache's, under Envoy's too
			s := startServe(t, cfg)
			// A loaded machine may miss 300ms once; errors are not cached,
			// so the next Check asks again.
			waitFor(t, func() bool {
				return code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})) == "ok"
			})
		})
	}
}
