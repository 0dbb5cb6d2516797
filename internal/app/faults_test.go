package app

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// load sends Checks from workers until stop closes, and tallies codes.
type load struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	codes map[string]int
}

func startLoad(t *testing.T, s *server, workers int, req func(w, i int) (method, path string, h map[string]string)) *load {
	l := &load{stop: make(chan struct{}), codes: map[string]int{}}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				m, p, h := req(w, i)
				c := code(s.check(t, m, p, h))
				l.mu.Lock()
				l.codes[c]++
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) finish() map[string]int {
	close(l.stop)
	l.wg.Wait()
	return l.codes
}

// goroutinesBackTo waits for the goroutine count to return near base.
func goroutinesBackTo(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+5 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: %d, baseline %d: a leak\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFilesRewrittenUnderLoad rewrites the config and the entitlements file
// 100 times each, alternating valid and invalid content, while Checks run:
// every Check gets the answer of the last good files, and nothing leaks.
func TestFilesRewrittenUnderLoad(t *testing.T) {
	base := runtime.NumGoroutine()
	dir := demoDir(t, "127.0.0.1:0")
	cfgPath, entPath := filepath.Join(dir, "tollgate.yaml"), filepath.Join(dir, "entitlements.yaml")
	cfgGood, _ := os.ReadFile(cfgPath)
	entGood, _ := os.ReadFile(entPath)
	cfgGoodS := strings.Replace(string(cfgGood), "allow_sample_rate: 1.0", "allow_sample_rate: 0", 1)
	writeFile(t, cfgPath, cfgGoodS)
	s := startServe(t, cfgPath)

	// Each request has one right answer under the good files.
	reqs := []struct {
		key, method, path, want string
	}{
		{"demo-free-key", "GET", "/v1/search", "ok"},
		{"demo-free-key", "POST", "/v1/chat", "feature_not_in_plan"},
		{"demo-pro-key", "POST", "/v1/chat", "ok"},
		{"demo-pastdue-key", "GET", "/v1/search", "payment_failed"},
		{"nope", "GET", "/v1/search", "invalid_credentials"},
	}
	var wrong atomic.Int64
	var firstWrong atomic.Value
	l := startLoad(t, s, 4, func(w, i int) (string, string, map[string]string) {
		r := reqs[(w+i)%len(reqs)]
		return r.method, r.path, map[string]string{"x-api-key": r.key}
	})
	// Check answers as they come, from a separate prober.
	stopProbe := make(chan struct{})
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		for i := 0; ; i++ {
			select {
			case <-stopProbe:
				return
			default:
			}
			r := reqs[i%len(reqs)]
			if got := code(s.check(t, r.method, r.path, map[string]string{"x-api-key": r.key})); got != r.want {
				if wrong.Add(1) == 1 {
					firstWrong.Store(fmt.Sprintf("%s %s with %s: %s, want %s", r.method, r.path, r.key, got, r.want))
				}
			}
		}
	}()

	badCfg := strings.Replace(cfgGoodS, "feature: chat\n", "feature: nonexistent\n", 1)
	badEnt := strings.Replace(string(entGood), "status: active", "status: bogus", 1)
	for i := range 100 {
		if i%2 == 0 {
			writeFile(t, cfgPath, badCfg)
			writeFile(t, entPath, badEnt)
		} else {
			writeFile(t, cfgPath, cfgGoodS+fmt.Sprintf("# rewrite %d\n", i))
			writeFile(t, entPath, string(entGood)+fmt.Sprintf("# rewrite %d\n", i))
		}
		time.Sleep(25 * time.Millisecond) // past the 20ms poll, so many rewrites are seen
	}
	// A rewrite is applied only once it has settled (two polls), which a
	// busy machine may never see in that loop: hold one bad version of each
	// file until its refusal is counted, still under load, then the good.
	writeFile(t, cfgPath, badCfg)
	writeFile(t, entPath, badEnt)
	for _, f := range []string{"config", "entitlements"} {
		waitFor(t, func() bool {
			v := metricValue(t, s, `tollgate_reloads_total{file="`+f+`",result="error"}`)
			return v != "" && v != "0"
		})
	}
	writeFile(t, cfgPath, cfgGoodS)
	writeFile(t, entPath, string(entGood))
	close(stopProbe)
	<-probeDone
	codes := l.finish()
	if n := wrong.Load(); n > 0 {
		t.Errorf("%d answers differed from the last good files; first: %v", n, firstWrong.Load())
	}
	total := 0
	for _, n := range codes {
		total += n
	}
	if codes["entitlements_unavailable"] > 0 || total == 0 {
		t.Errorf("codes under load: %v", codes)
	}
	s.stop()
	s.conn.Close()
	goroutinesBackTo(t, base)
}

// TestSourceFaultsUnderLoad makes the http source slow beyond its timeout,
// then down, then flapping, while Checks run: subjects already cached never
// fail, uncached ones get 503 entitlements_unavailable, memory stays bounded
// and no goroutine outlives the server.
func TestSourceFaultsUnderLoad(t *testing.T) {
	base := runtime.NumGoroutine()
	b := newBillingService(t)
	b.set("initech", "free", "active", "demo-free-key")
	b.set("acme", "pro", "active", "demo-pro-key")
	cfg := httpSourceDir(t, b.URL, "{max_entries: 500, ttl: 50ms, negative_ttl: 50ms, stale_if_error: 1h, timeout: 100ms}")
	raw, _ := os.ReadFile(cfg)
	writeFile(t, cfg, strings.Replace(string(raw), "timeout: 150ms}", "timeout: 150ms, breaker: {cooldown: 100ms}}", 1))
	s := startServe(t, cfg)
	cached := []string{"demo-free-key", "demo-pro-key"}
	for _, k := range cached {
		if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": k})); got != "ok" {
			t.Fatalf("warm-up %s: %s", k, got)
		}
	}
	var cachedFailures atomic.Int64
	l := startLoad(t, s, 6, func(w, i int) (string, string, map[string]string) {
		if w < 4 {
			return "GET", "/v1/search", map[string]string{"x-api-key": cached[w%2]}
		}
		return "GET", "/v1/search", map[string]string{"x-api-key": fmt.Sprint("cold-", w, "-", i)}
	})
	check := startLoad(t, s, 1, func(w, i int) (string, string, map[string]string) {
		return "GET", "/v1/search", map[string]string{"x-api-key": cached[i%2]}
	})

	phases := []struct {
		name string
		set  func()
	}{
		{"slow beyond the timeout", func() {
			b.mu.Lock()
			b.hold = make(chan struct{}) // never released during the phase
			b.mu.Unlock()
		}},
		{"down", func() {
			b.mu.Lock()
			close(b.hold)
			b.hold = nil
			b.mu.Unlock()
			b.down.Store(true)
		}},
		{"flapping", func() {
			for range 10 {
				b.down.Store(!b.down.Load())
				time.Sleep(30 * time.Millisecond)
			}
		}},
		{"back", func() { b.down.Store(false) }},
	}
	for _, ph := range phases {
		ph.set()
		time.Sleep(300 * time.Millisecond)
	}
	// Once the source is back, unknown keys are answered 401 again.
	waitFor(t, func() bool {
		return code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "after-the-faults"})) == "invalid_credentials"
	})
	codes := l.finish()
	probe := check.finish()
	for c, n := range probe {
		if c != "ok" {
			cachedFailures.Add(int64(n))
		}
	}
	if cachedFailures.Load() > 0 {
		t.Errorf("cached subjects failed %d times: %v", cachedFailures.Load(), probe)
	}
	if codes["entitlements_unavailable"] == 0 {
		t.Errorf("uncached keys should get 503 during the faults: %v", codes)
	}
	for c := range codes {
		switch c {
		case "ok", "entitlements_unavailable", "invalid_credentials":
		default:
			t.Errorf("unexpected code %q under faults: %v", c, codes)
		}
	}
	var entries int
	fmt.Sscan(metricValue(t, s, "tollgate_entitlement_cache_entries"), &entries)
	if entries > 500 {
		t.Errorf("cache entries %d over max_entries 500", entries)
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc > 256<<20 {
		t.Errorf("heap %d MiB after the fault run", ms.HeapAlloc>>20)
	}
	s.stop()
	s.conn.Close()
	b.Close()
	goroutinesBackTo(t, base)
}
