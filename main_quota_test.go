package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// quotaDemoDir writes a config whose quotas live in the given Redis.
func quotaDemoDir(t *testing.T, redisAddr string, limit, lease int) string {
	t.Helper()
	dir := demoDir(t, "127.0.0.1:0")
	path := filepath.Join(dir, "tollgate.yaml")
	b, _ := os.ReadFile(path)
	s := strings.Replace(string(b), `  pro:
    features: [search, chat]
`, fmt.Sprintf(`  pro:
    features: [search, chat]
    quotas:
      requests: {limit: %d, period: day}
      tokens: {limit: 1000000, period: day, on_store_error: open}
`, limit), 1)
	s = strings.Replace(s, "    feature: search\n", "    feature: search\n    quota: requests\n", 1)
	s = strings.Replace(s, "    feature: chat\n", "    feature: chat\n    quota: tokens\n", 1)
	// A generous round-trip timeout: on a loaded CI machine Redis can take
	// longer than the 50ms default, which would turn spends into 503s.
	s += fmt.Sprintf("\nquota_store: {store: redis, redis: {address: %s, lease_size: %d, timeout: 150ms, retry_every: 50ms}}\n", redisAddr, lease)
	s = strings.Replace(s, "allow_sample_rate: 1.0", "allow_sample_rate: 0", 1)
	writeFile(t, path, s)
	return path
}

// TestReplicasShareQuotaThroughRedis runs two tollgate servers against one
// Redis and sends thousands of concurrent Checks across both: the total
// admitted stays within the documented bound of the limit.
func TestReplicasShareQuotaThroughRedis(t *testing.T) {
	rs := redistest.Start(t)
	const limit, lease, replicas, requests = 1000, 10, 2, 3000
	cfg := quotaDemoDir(t, rs.Addr(), limit, lease)
	servers := []*server{startServe(t, cfg), startServe(t, cfg)}

	var admitted, refused, other atomic.Int64
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := servers[w%replicas]
			for range requests / 32 {
				switch code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"})) {
				case "ok":
					admitted.Add(1)
				case "quota_exhausted":
					refused.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	// Leases never admit more than the limit; unspent leases held by the
	// other replicas can leave it short by at most (R-1)(L-1) (cost 1).
	bound := int64((replicas - 1) * (lease - 1))
	got := admitted.Load()
	if got > limit || got < limit-bound {
		t.Errorf("admitted %d of %d requests, want within [%d, %d]", got, requests/32*32, limit-bound, limit)
	}
	// A Redis round trip slower than its timeout answers 503 (fail closed):
	// allowed under load, but it must stay rare.
	if other.Load() > requests/100 {
		t.Errorf("%d answers were neither ok nor quota_exhausted", other.Load())
	}
	t.Logf("admitted %d, refused %d (limit %d, bound %d)", got, refused.Load(), limit, bound)
}

// TestRedisOutageFollowsEachQuotasPolicy kills Redis under a running
// server: the fail-closed quota answers 503 with Retry-After, the
// fail-open one keeps admitting on local counts, /metrics shows the
// degraded mode, and everything recovers by itself when Redis returns.
func TestRedisOutageFollowsEachQuotasPolicy(t *testing.T) {
	rs := redistest.Start(t)
	s := startServe(t, quotaDemoDir(t, rs.Addr(), 100000, 10))
	search := func() string {
		return code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"}))
	}
	chat := func() string {
		return code(s.check(t, "POST", "/v1/chat", map[string]string{"x-api-key": "demo-pro-key"}))
	}
	metricHas := func(want string) bool {
		_, m := s.get(t, "/metrics")
		return strings.Contains(m, want)
	}
	if got := search(); got != "ok" {
		t.Fatalf("before the outage: %s", got)
	}
	if !metricHas(`tollgate_quota_store_mode{mode="redis_primary"} 1`) ||
		!metricHas(`tollgate_quota_failure_policy{policy="open",quota="tokens"} 1`) ||
		!metricHas(`tollgate_quota_failure_policy{policy="closed",quota="requests"} 1`) {
		t.Error("metrics do not show the store mode and the quotas' policies")
	}

	rs.Kill()
	// Spend the leased units first: then search must go to Redis and fail closed.
	waitFor(t, func() bool { return search() == "entitlements_unavailable" })
	resp := s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"})
	if hs := resp.GetDeniedResponse().GetHeaders(); !hasHeader(hs, "retry-after") {
		t.Errorf("fail-closed 503 without Retry-After")
	}
	for range 20 {
		if got := chat(); got != "ok" {
			t.Fatalf("fail-open quota during the outage: %s, want ok", got)
		}
	}
	if !metricHas(`tollgate_quota_store_mode{mode="redis_degraded"} 1`) {
		t.Error("metrics do not show the degraded mode")
	}

	rs.Restart()
	waitFor(t, func() bool { return search() == "ok" })
	waitFor(t, func() bool { return metricHas(`tollgate_quota_store_mode{mode="redis_primary"} 1`) })
	// The 20 fail-open spends made during the outage are copied to Redis.
	waitFor(t, func() bool { return metricHas(`tollgate_quota_write_back_units_total{result="ok"} 20`) })
	if strings.Contains(s.logs.String(), "panic") {
		t.Error("the log shows a panic")
	}
}

func hasHeader(hs []*corev3.HeaderValueOption, name string) bool {
	for _, h := range hs {
		if h.GetHeader().GetKey() == name {
			return true
		}
	}
	return false
}
