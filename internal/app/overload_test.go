package app

import (
	"fmt"
	"sync"
	"testing"
)

// TestOverloadIsShedNotQueued fills server.max_in_flight with Checks held
// inside a billing service until the test releases them. Every further
// Check is answered 503 while those are still held, so it was not queued
// behind them; once released, the held Checks complete with their real
// answers. Nothing here depends on how fast the machine is: the held
// Checks stay held however long the rest takes.
func TestOverloadIsShedNotQueued(t *testing.T) {
	const inFlight, extra = 8, 40
	b := newBillingService(t) // knows no key: a decided Check is 401
	hold := make(chan struct{})
	b.mu.Lock()
	b.hold = hold
	b.mu.Unlock()
	released := false
	defer func() {
		if !released {
			close(hold)
		}
	}()
	cfg := httpSourceDirTimeout(t, b.URL, "1m", "{ttl: 1s, negative_ttl: 1s, timeout: 2m}")
	editFile(t, cfg, "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  max_in_flight: 8\n")
	s := startServe(t, cfg)

	// Fill every slot: eight different unknown keys, eight source calls.
	held := make(chan string, inFlight)
	var wg sync.WaitGroup
	for i := range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held <- code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": fmt.Sprint("held-", i)}))
		}()
	}
	waitFor(t, func() bool { return b.calls.Load() == inFlight })

	// Over the bound: answered at once, while the eight are still held.
	for i := range extra {
		if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": fmt.Sprint("extra-", i)})); got != "entitlements_unavailable" {
			t.Fatalf("Check %d over max_in_flight: %q, want entitlements_unavailable (shed)", i, got)
		}
	}
	if got := len(held); got != 0 {
		t.Fatalf("%d held Checks were answered before the billing service was released", got)
	}
	if got, want := b.calls.Load(), int64(inFlight); got != want {
		t.Errorf("source calls = %d, want %d: a shed Check must not reach the source", got, want)
	}
	if got, want := metricValue(t, s, "tollgate_checks_shed_total"), fmt.Sprint(extra); got != want {
		t.Errorf("tollgate_checks_shed_total = %q, want %s", got, want)
	}

	// Released: the held Checks finish with their real answers, and the
	// slots are free again.
	close(hold)
	released = true
	wg.Wait()
	close(held)
	for got := range held {
		if got != "invalid_credentials" {
			t.Errorf("held Check answered %q, want invalid_credentials", got)
		}
	}
	if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})); got != "invalid_credentials" {
		t.Errorf("after the release: %q, want invalid_credentials (decided, not shed)", got)
	}
}
