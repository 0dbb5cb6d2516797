package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestOverloadIsShedNotQueued drives twice the concurrency tollgate allows
// at a billing service that takes 30ms per call: Checks over
// server.max_in_flight are answered 503 at once, the rest are decided, and
// the p99 latency stays under Envoy's timeout instead of growing with a
// queue. (The bound asserted is the product's own: Envoy gives up at
// server.envoy_timeout, 200ms, and an answer after that is worthless.)
func TestOverloadIsShedNotQueued(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond)
		http.NotFound(w, r) // every key unknown: each Check is a source call
	}))
	defer slow.Close()
	cfg := httpSourceDir(t, slow.URL, "{ttl: 1s, negative_ttl: 1s, timeout: 150ms}")
	raw, _ := os.ReadFile(cfg)
	writeFile(t, cfg, strings.Replace(string(raw), "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  max_in_flight: 8\n", 1))
	s := startServe(t, cfg)

	const workers, perWorker = 16, 25 // 2× the in-flight bound, closed loop
	var mu sync.Mutex
	var lat []time.Duration
	codes := map[string]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				start := time.Now()
				c := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": fmt.Sprint("k-", w, "-", i)}))
				d := time.Since(start)
				mu.Lock()
				lat = append(lat, d)
				codes[c]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	p99 := lat[len(lat)*99/100]
	t.Logf("codes %v, p50 %v, p99 %v", codes, lat[len(lat)/2], p99)
	if codes["entitlements_unavailable"] == 0 || codes["invalid_credentials"] == 0 {
		t.Errorf("want both shed (503) and decided (401) answers, got %v", codes)
	}
	if p99 >= 200*time.Millisecond {
		t.Errorf("p99 %v is past Envoy's 200ms timeout", p99)
	}
	if v := metricValue(t, s, "tollgate_checks_shed_total"); v == "" || v == "0" {
		t.Errorf("tollgate_checks_shed_total = %q, want > 0", v)
	}
}
