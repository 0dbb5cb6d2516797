package app

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

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

// patientQuotaTimeouts rewrites a quotaDemoDir config with generous
// timeouts (Envoy's, so that the store's may be long too): on a loaded
// machine a Redis round trip can take far longer than production's 50 ms,
// and a test about answers must not turn that into 503s.
func patientQuotaTimeouts(t *testing.T, path string) {
	t.Helper()
	b, _ := os.ReadFile(path)
	s := strings.Replace(string(b), "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  envoy_timeout: 30s\n", 1)
	s = strings.Replace(s, "timeout: 150ms, retry_every: 50ms}}", "timeout: 4s, retry_every: 50ms}}", 1)
	if strings.Count(s, "4s, retry_every") != 1 || !strings.Contains(s, "envoy_timeout: 30s") {
		t.Fatal("config not rewritten")
	}
	writeFile(t, path, s)
}

// TestReplicasShareQuotaThroughRedis runs two tollgate servers against one
// Redis and sends thousands of concurrent Checks across both: the total
// admitted stays within the documented bound of the limit, and every Check
// is answered ok or quota_exhausted.
func TestReplicasShareQuotaThroughRedis(t *testing.T) {
	rs := redistest.Start(t)
	const limit, lease, replicas, requests = 1000, 10, 2, 3000
	cfg := quotaDemoDir(t, rs.Addr(), limit, lease)
	patientQuotaTimeouts(t, cfg)
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
	// With timeouts far past any round trip, nothing fails closed.
	if other.Load() != 0 {
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

// TestHugeCostIsRefused replays the attack of issue 11 through the real
// server, with each store: a daily limit of 5 read from x-cost, two normal
// requests, then the largest cost (which used to wrap the memory counter and
// open the quota for good), then more requests. The huge costs are refused
// as cost_too_large without counting; exactly 5 units are admitted; every
// request after the limit is refused.
func TestHugeCostIsRefused(t *testing.T) {
	rs := redistest.Start(t)
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			dir := demoDir(t, "127.0.0.1:0")
			path := filepath.Join(dir, "tollgate.yaml")
			b, _ := os.ReadFile(path)
			s := strings.Replace(string(b), `  pro:
    features: [search, chat]
`, `  pro:
    features: [search, chat]
    quotas:
      tokens: {limit: 5, period: day}
`, 1)
			s = strings.Replace(s, "    feature: chat\n", "    feature: chat\n    quota: tokens\n    cost_from: {header: x-cost}\n", 1)
			if store == "redis" {
				// Patient timeouts: this test is about answers, and a loaded
				// machine can take far longer than 50ms for a round trip.
				s = strings.Replace(s, "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  envoy_timeout: 30s\n", 1)
				s += fmt.Sprintf("\nquota_store: {store: redis, redis: {address: %s, prefix: \"%s:\", timeout: 4s}}\n", rs.Addr(), store+t.Name())
			}
			if !strings.Contains(s, "cost_from: {header: x-cost}") {
				t.Fatal("config not rewritten")
			}
			writeFile(t, path, s)
			srv := startServe(t, path)
			chat := func(cost string) *authv3.CheckResponse {
				h := map[string]string{"x-api-key": "demo-pro-key"}
				if cost != "" {
					h["x-cost"] = cost
				}
				return srv.check(t, "POST", "/v1/chat", h)
			}
			steps := []struct {
				cost, want string
			}{
				{"", "ok"}, {"", "ok"},
				{"9223372036854775807", "cost_too_large"},
				{"99999999999999999999", "cost_too_large"},
				{"6", "cost_too_large"},
				{"", "ok"}, {"2", "ok"}, // 5 units spent
				{"", "quota_exhausted"},
				{"9223372036854775807", "cost_too_large"},
				{"1", "quota_exhausted"},
				{"-1", "quota_exhausted"}, // not an allowed cost: the fixed cost 1
				{"", "quota_exhausted"},
			}
			for i, st := range steps {
				resp := chat(st.cost)
				if got := code(resp); got != st.want {
					t.Fatalf("request %d (x-cost %q): %s, want %s", i, st.cost, got, st.want)
				}
				if st.want == "cost_too_large" {
					if got := httpStatus(resp); got != 400 {
						t.Errorf("request %d: status %d, want 400", i, got)
					}
					body := resp.GetDeniedResponse().GetBody()
					if !strings.Contains(body, `"quota":"tokens","limit":5,"cost":`) {
						t.Errorf("request %d: body %s lacks the quota, limit and cost", i, body)
					}
				}
			}
		})
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
