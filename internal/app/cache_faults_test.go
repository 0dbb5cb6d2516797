package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// The paying customers of these tests: cust-N, on plan pro, with API key
// cust-key-N, stored in Redis as `tollgate entitlements set` stores them.
const cacheFaultCustomers = 20

func cacheFaultKey(i int) map[string]string {
	return map[string]string{"x-api-key": fmt.Sprint("cust-key-", i)}
}

// putCustomers writes the customers to rs with status, publishing each write.
func putCustomers(t *testing.T, rs *redistest.Server, status entitlement.Status) {
	t.Helper()
	w, err := redissource.New(redissource.Options{Client: rs.Client()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range cacheFaultCustomers {
		err := w.Put(context.Background(), redissource.Record{
			Entitlement:   entitlement.Entitlement{Subject: fmt.Sprint("cust-", i), Plan: "pro", Status: status},
			APIKeyDigests: []string{identity.HashKey(fmt.Sprint("cust-key-", i))},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// redisCacheConfig is the demo config with the redis source at addr and
// the given entitlements.cache block (YAML flow mapping).
func redisCacheConfig(t *testing.T, addr, cacheBlock string) string {
	t.Helper()
	dir := demoDir(t, "127.0.0.1:0")
	path := filepath.Join(dir, "tollgate.yaml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(raw), "  source: file\n", "  source: redis\n  redis: {address: "+addr+", timeout: 150ms}\n", 1)
	s = strings.Replace(s, `  cache:
    max_entries: 100000
    ttl: 30s
    negative_ttl: 5s
    stale_if_error: 5m
    timeout: 50ms`, "  cache: "+cacheBlock, 1)
	s = strings.Replace(s, "allow_sample_rate: 1.0", "allow_sample_rate: 0", 1)
	if !strings.Contains(s, "source: redis") || !strings.Contains(s, "cache: "+cacheBlock) {
		t.Fatalf("the demo config changed shape; update redisCacheConfig:\n%s", s)
	}
	writeFile(t, path, s)
	return path
}

// customerCodes checks every customer once, concurrently, and tallies the
// codes.
func customerCodes(t *testing.T, s *server) map[string]int {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for i := range cacheFaultCustomers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := code(s.check(t, "GET", "/v1/search", cacheFaultKey(i)))
			mu.Lock()
			got[c]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return got
}

// warmCustomers has every customer looked up and cached, retrying a first
// lookup that a busy machine let time out.
func warmCustomers(t *testing.T, s *server) {
	t.Helper()
	for i := range cacheFaultCustomers {
		waitFor(t, func() bool { return code(s.check(t, "GET", "/v1/search", cacheFaultKey(i))) == "ok" })
	}
}

func allOK(t *testing.T, when string, got map[string]int) {
	t.Helper()
	if got["ok"] != cacheFaultCustomers {
		t.Errorf("%s: customers' codes %v, want all %d ok", when, got, cacheFaultCustomers)
	}
}

// metricSum adds the samples of every series of name whose labels contain
// all of labels (each `k="v"`).
func metricSum(t *testing.T, s *server, name string, labels ...string) float64 {
	t.Helper()
	_, m := s.get(t, "/metrics")
	sum := 0.0
	for _, line := range strings.Split(m, "\n") {
		series, v, ok := strings.Cut(line, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if f, err := strconv.ParseFloat(v, 64); match && err == nil {
			sum += f
		}
	}
	return sum
}

// subscribedTimes counts the subscriber's "(re)subscribed" log lines.
func subscribedTimes(s *server) int {
	return strings.Count(s.logs.String(), "subscribed to entitlement invalidations")
}

// TestConfigReloadWhileRedisStalls: with Redis stalled, a harmless edit of
// the config file reloads it. Paying customers keep being served from the
// cache (stale if need be), not answered 503.
func TestConfigReloadWhileRedisStalls(t *testing.T) {
	rs := redistest.Start(t)
	putCustomers(t, rs, entitlement.StatusActive)
	cfg := redisCacheConfig(t, rs.Addr(), "{ttl: 1h, negative_ttl: 5s, stale_if_error: 1h, timeout: 150ms}")
	s := startServe(t, cfg)
	warmCustomers(t, s)

	rs.Pause()
	defer rs.Resume()
	raw, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, cfg, string(raw)+"# a comment\n")
	waitFor(t, func() bool { return metricSum(t, s, "tollgate_reloads_total", `file="config"`, `result="ok"`) >= 1 })

	allOK(t, "after a config reload, Redis stalled", customerCodes(t, s))
}

// TestRedisRestartKeepsPayingCustomers: Redis comes back from a restart
// still loading its data, or empty, and tollgate resubscribes at once. The
// customers it knew keep being served until stale_if_error runs out,
// rather than answered 503 (loading) or 401 (empty).
func TestRedisRestartKeepsPayingCustomers(t *testing.T) {
	const cacheBlock = "{ttl: 1h, negative_ttl: 5s, stale_if_error: 1h, timeout: 150ms}"

	t.Run("loading", func(t *testing.T) {
		rs, master := redistest.Start(t), redistest.Start(t)
		putCustomers(t, rs, entitlement.StatusActive)
		putCustomers(t, master, entitlement.StatusActive)
		master.Fill(100000)
		s := startServe(t, redisCacheConfig(t, rs.Addr(), cacheBlock))
		warmCustomers(t, s)
		waitFor(t, func() bool { return subscribedTimes(s) >= 1 })

		// Redis restarts with its data: it takes connections, SUBSCRIBE
		// among them, long before it can answer a read.
		finish := rs.LoadFrom(master)
		if err := rs.Client().Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return subscribedTimes(s) >= 2 })

		allOK(t, "resubscribed while Redis loads", customerCodes(t, s))
		for range 5 {
			allOK(t, "again", customerCodes(t, s))
		}
		info, err := rs.Client().Info(context.Background(), "persistence").Result()
		if err != nil || !strings.Contains(info, "loading:1") {
			t.Fatalf("Redis finished loading before the checks did (%v); the test proves nothing: give the master more keys", err)
		}
		if n := metricSum(t, s, "tollgate_entitlement_source_calls_total", `source="redis"`, `outcome="not_ready"`); n == 0 {
			t.Errorf("no lookup counted as not_ready (LOADING)")
		}
		finish()
		allOK(t, "loaded", customerCodes(t, s))
	})

	t.Run("empty", func(t *testing.T) {
		rs := redistest.Start(t)
		putCustomers(t, rs, entitlement.StatusActive)
		s := startServe(t, redisCacheConfig(t, rs.Addr(), cacheBlock))
		warmCustomers(t, s)
		waitFor(t, func() bool { return subscribedTimes(s) >= 1 })

		rs.Restart() // no persistence: every record is gone
		waitFor(t, func() bool { return subscribedTimes(s) >= 2 })

		for range 3 {
			allOK(t, "resubscribed to an empty Redis", customerCodes(t, s))
		}
		// Doubted "unknown" answers, or stale ones where a lookup timed out
		// on a busy machine: either way the record served.
		if n := metricSum(t, s, "tollgate_entitlement_cache_total", `outcome="suspect_not_found"`); n == 0 {
			t.Errorf("no suspect_not_found counted")
		}
		if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "never-issued"})); got != "invalid_credentials" {
			t.Errorf("a key tollgate never knew: %s, want invalid_credentials", got)
		}

		// The billing job replays its state: answers from Redis replace the
		// doubted records, a status change included.
		putCustomers(t, rs, entitlement.StatusActive)
		w, err := redissource.New(redissource.Options{Client: rs.Client()})
		if err != nil {
			t.Fatal(err)
		}
		err = w.Put(context.Background(), redissource.Record{
			Entitlement:   entitlement.Entitlement{Subject: "cust-0", Plan: "pro", Status: entitlement.StatusPastDue},
			APIKeyDigests: []string{identity.HashKey("cust-key-0")},
		})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return code(s.check(t, "GET", "/v1/search", cacheFaultKey(0))) == "payment_failed" })
		// A deletion, announced on the channel, is believed at once.
		if err := w.Delete(context.Background(), "cust-1"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return code(s.check(t, "GET", "/v1/search", cacheFaultKey(1))) == "invalid_credentials" })
		if got := code(s.check(t, "GET", "/v1/search", cacheFaultKey(2))); got != "ok" {
			t.Errorf("another customer: %s, want ok", got)
		}
	})
}

// TestUnknownKeyFloodKeepsPayingCustomers: a flood of made-up keys, ten
// times max_entries, then Redis stalls. The customers cached before the
// flood are still cached: served, not 503.
func TestUnknownKeyFloodKeepsPayingCustomers(t *testing.T) {
	rs := redistest.Start(t)
	putCustomers(t, rs, entitlement.StatusActive)
	s := startServe(t, redisCacheConfig(t, rs.Addr(), "{max_entries: 100, ttl: 1h, negative_ttl: 1h, stale_if_error: 1h, timeout: 150ms}"))
	warmCustomers(t, s)

	const flood, workers = 1000, 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < flood; i += workers {
				// Until it is cached as unknown: a lookup that a busy
				// machine let time out (503) is not cached.
				h := map[string]string{"x-api-key": fmt.Sprint("made-up-", i)}
				waitFor(t, func() bool { return code(s.check(t, "GET", "/v1/search", h)) == "invalid_credentials" })
			}
		}()
	}
	wg.Wait()
	if n := metricSum(t, s, "tollgate_entitlement_cache_entries"); n > 100+10000 {
		t.Errorf("cache entries = %v, over max_entries + negative_max_entries", n)
	}

	rs.Pause()
	defer rs.Resume()
	allOK(t, "after the flood, Redis stalled", customerCodes(t, s))
}
