package httpsource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/sourcetest"
)

// quiet is a logger for tests that provoke errors on purpose.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestSourceBehaviour runs the shared source table against a fake service.
func TestSourceBehaviour(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T, recs []sourcetest.Record) entitlement.Source {
		return newSource(t, startService(t, recs), Options{})
	}, sourcetest.All)
}

func TestLookupResponses(t *testing.T) {
	const (
		ok       = "ok"
		notFound = "not_found"
	)
	valid := `{"subject":"acme","plan":"pro","status":"active"}`
	huge := `{"subject":"acme","plan":"pro","status":"active","padding":"` + strings.Repeat("x", MaxBodyBytes) + `"}`
	tests := []struct {
		name    string
		status  int
		header  map[string]string
		body    string
		chunked bool   // send the body without Content-Length
		want    string // ok, not_found, or the LookupError outcome
	}{
		{"200 minimal record", 200, nil, valid, false, ok},
		{"200 every field", 200, nil, `{"subject":"acme","plan":"pro","status":"past_due","features":["export"],"quotas":{"requests":5000},"credits":250,
			"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","past_due_since":"2026-11-20T08:30:00Z"}`, false, ok},
		{"200 unknown fields are ignored", 200, nil, `{"subject":"acme","plan":"pro","status":"active","tier":"gold","limits":{"a":[1,2]}}`, false, ok},
		{"200 null optional fields", 200, nil, `{"subject":"acme","plan":"pro","status":"active","features":null,"quotas":null,"credits":null,"period_end":null}`, false, ok},
		{"404 unknown", 404, nil, "not found", false, notFound},
		{"404 with JSON body", 404, nil, `{"error":"not_found"}`, false, notFound},
		{"500", 500, nil, "boom", false, OutcomeServerError},
		{"502", 502, nil, "bad gateway", false, OutcomeServerError},
		{"503", 503, map[string]string{"Retry-After": "1"}, "", false, OutcomeServerError},
		{"429", 429, map[string]string{"Retry-After": "2"}, "slow down", false, OutcomeRateLimited},
		{"401", 401, nil, "who are you", false, OutcomeUnauthorized},
		{"403", 403, nil, "not you", false, OutcomeUnauthorized},
		{"400", 400, nil, "bad request", false, OutcomeUnexpectedStatus},
		{"302 is not followed", 302, map[string]string{"Location": "/elsewhere"}, "", false, OutcomeUnexpectedStatus},
		{"204", 204, nil, "", false, OutcomeUnexpectedStatus},
		{"malformed JSON", 200, nil, `{"subject":"acme","plan":`, false, OutcomeInvalid},
		{"empty body", 200, nil, "", false, OutcomeInvalid},
		{"not an object", 200, nil, `["acme","pro"]`, false, OutcomeInvalid},
		{"null", 200, nil, `null`, false, OutcomeInvalid},
		{"trailing garbage", 200, nil, valid + ` {}`, false, OutcomeInvalid},
		{"invalid status value", 200, nil, `{"subject":"acme","plan":"pro","status":"gold"}`, false, OutcomeInvalid},
		{"missing plan", 200, nil, `{"subject":"acme","status":"active"}`, false, OutcomeInvalid},
		{"missing subject", 200, nil, `{"plan":"pro","status":"active"}`, false, OutcomeInvalid},
		{"missing status", 200, nil, `{"subject":"acme","plan":"pro"}`, false, OutcomeInvalid},
		{"another subject's record", 200, nil, `{"subject":"globex","plan":"pro","status":"active"}`, false, OutcomeInvalid},
		{"wrong type: credits", 200, nil, `{"subject":"acme","plan":"pro","status":"active","credits":"lots"}`, false, OutcomeInvalid},
		{"wrong type: features", 200, nil, `{"subject":"acme","plan":"pro","status":"active","features":"export"}`, false, OutcomeInvalid},
		{"wrong type: plan", 200, nil, `{"subject":"acme","plan":7,"status":"active"}`, false, OutcomeInvalid},
		{"fractional quota", 200, nil, `{"subject":"acme","plan":"pro","status":"active","quotas":{"requests":1.5}}`, false, OutcomeInvalid},
		{"negative quota", 200, nil, `{"subject":"acme","plan":"pro","status":"active","quotas":{"requests":-1}}`, false, OutcomeInvalid},
		{"negative credits", 200, nil, `{"subject":"acme","plan":"pro","status":"active","credits":-5}`, false, OutcomeInvalid},
		{"bad time", 200, nil, `{"subject":"acme","plan":"pro","status":"active","period_end":"next month"}`, false, OutcomeInvalid},
		{"period ends before it starts", 200, nil, `{"subject":"acme","plan":"pro","status":"active","period_start":"2026-12-01T00:00:00Z","period_end":"2026-11-01T00:00:00Z"}`, false, OutcomeInvalid},
		{"huge body", 200, nil, huge, false, OutcomeInvalid},
		{"huge body, chunked", 200, nil, huge, true, OutcomeInvalid},
	}
	f := startService(t, nil)
	obs := &recorder{}
	// The breaker is off: this table is about one call's outcome.
	src := newSource(t, f, Options{Breaker: BreakerOptions{Failures: -1}, Observer: obs, Logger: quiet})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.setRespond(func(w http.ResponseWriter, _ *http.Request) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				if tt.chunked {
					w.WriteHeader(tt.status)
					half := len(tt.body) / 2
					_, _ = io.WriteString(w, tt.body[:half])
					w.(http.Flusher).Flush()
					_, _ = io.WriteString(w, tt.body[half:])
					return
				}
				w.Header().Set("Content-Length", fmt.Sprint(len(tt.body)))
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			})
			got, err := src.Lookup(context.Background(), acme)
			if gotObs, wantObs := obs.lastOutcome(), "subject/"+tt.want; gotObs != wantObs {
				t.Errorf("observer outcome = %q, want %q", gotObs, wantObs)
			}
			switch tt.want {
			case ok:
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if got.Subject != "acme" || got.Plan != "pro" {
					t.Fatalf("got %+v", got)
				}
			case notFound:
				if !errors.Is(err, entitlement.ErrNotFound) {
					t.Fatalf("err = %v, want ErrNotFound", err)
				}
			default:
				if errors.Is(err, entitlement.ErrNotFound) || !errors.Is(err, ErrUnavailable) {
					t.Fatalf("err = %v, want ErrUnavailable and not ErrNotFound", err)
				}
				var le *LookupError
				if !errors.As(err, &le) || le.Outcome != tt.want {
					t.Fatalf("err = %#v, want outcome %s", err, tt.want)
				}
				if tt.want == OutcomeInvalid && !errors.Is(err, ErrInvalidResponse) {
					t.Errorf("err = %v, want ErrInvalidResponse", err)
				}
				if got != nil {
					t.Errorf("got a record with an error: %+v", got)
				}
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	f := startService(t, sourcetest.Records())
	// The service answers only once released, at the end of the test, or
	// when tollgate hangs up: only the source's own timeout ends a Lookup.
	release := make(chan struct{})
	defer close(release)
	f.setRespond(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done(): // tollgate hung up
		}
	})
	obs := &recorder{}
	src := newSource(t, f, Options{Timeout: 50 * time.Millisecond, Observer: obs})

	done := make(chan error, 1)
	go func() {
		_, err := src.Lookup(context.Background(), acme)
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute): // far past the timeout, whatever the machine's load
		t.Fatal("Lookup still waits for a service that does not answer: its timeout was not applied")
	}
	if errors.Is(err, entitlement.ErrNotFound) || !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a timeout that is not ErrNotFound", err)
	}
	if got := obs.lastOutcome(); got != "subject/"+OutcomeTimeout {
		t.Errorf("outcome = %s, want timeout", got)
	}
}

func TestCallerCancelIsNotAFailure(t *testing.T) {
	f := startService(t, sourcetest.Records())
	started := make(chan struct{}, 1)
	f.setRespond(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	})
	obs := &recorder{}
	src := newSource(t, f, Options{Breaker: BreakerOptions{Failures: 1}, Observer: obs})

	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err := src.Lookup(ctx, acme)
	if !errors.Is(err, context.Canceled) || errors.Is(err, entitlement.ErrNotFound) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if got := obs.lastOutcome(); got != "subject/"+OutcomeCanceled {
		t.Errorf("outcome = %s, want canceled", got)
	}
	if got := src.BreakerState(); got != BreakerClosed {
		t.Errorf("breaker = %s after a caller gave up, want closed (threshold 1)", got)
	}

	// An already finished context sends nothing.
	hits := f.hits.Load()
	if _, err := src.Lookup(ctx, acme); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if f.hits.Load() != hits {
		t.Error("a cancelled context still reached the service")
	}
}

func TestMaxInFlight(t *testing.T) {
	f := startService(t, sourcetest.Records())
	release := make(chan struct{})
	arrived := make(chan struct{}, 2)
	f.setRespond(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"subject":"acme","plan":"pro","status":"active"}`)
	})
	obs := &recorder{}
	src := newSource(t, f, Options{MaxInFlight: 2, Observer: obs})

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { _, errs[i] = src.Lookup(context.Background(), acme) })
	}
	<-arrived
	<-arrived

	_, err := src.Lookup(context.Background(), acme)
	if !errors.Is(err, ErrTooManyInFlight) || errors.Is(err, entitlement.ErrNotFound) {
		t.Fatalf("third call: err = %v, want ErrTooManyInFlight", err)
	}
	if got := obs.lastOutcome(); got != "subject/"+OutcomeOverloaded {
		t.Errorf("outcome = %s, want overloaded", got)
	}
	if got := f.hits.Load(); got != 2 {
		t.Errorf("service saw %d requests, want 2: the third must not be sent", got)
	}

	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("blocked call %d: %v", i, err)
		}
	}
	f.setRespond(nil)
	if _, err := src.Lookup(context.Background(), acme); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestKeepAlive(t *testing.T) {
	f := startService(t, sourcetest.Records())
	src := newSource(t, f, Options{Breaker: BreakerOptions{Failures: -1}, Logger: quiet})
	const n = 30
	for i := range n {
		switch i % 3 {
		case 0:
			f.setRespond(nil)
			if _, err := src.Lookup(context.Background(), acmeKey); err != nil {
				t.Fatal(err)
			}
		case 1:
			f.setRespond(nil)
			if _, err := src.Lookup(context.Background(), nobody); !errors.Is(err, entitlement.ErrNotFound) {
				t.Fatal(err)
			}
		case 2: // an error body must be drained too
			f.status(http.StatusInternalServerError)
			if _, err := src.Lookup(context.Background(), acme); !errors.Is(err, ErrUnavailable) {
				t.Fatal(err)
			}
		}
	}
	if got := f.hits.Load(); got != n {
		t.Fatalf("hits = %d, want %d", got, n)
	}
	if got := f.conns.Load(); got != 1 {
		t.Errorf("%d sequential lookups used %d TCP connections, want 1", n, got)
	}
}

func TestBreaker(t *testing.T) {
	f := startService(t, sourcetest.Records())
	clk := newClock()
	obs := &recorder{}
	const cooldown = 10 * time.Second
	src := newSource(t, f, Options{
		Breaker:  BreakerOptions{Failures: 3, Cooldown: cooldown},
		Now:      clk.now,
		Observer: obs,
		Logger:   quiet,
	})
	ctx := context.Background()
	lookup := func() error { _, err := src.Lookup(ctx, acme); return err }
	expectHits := func(want int64) {
		t.Helper()
		if got := f.hits.Load(); got != want {
			t.Fatalf("service saw %d requests, want %d", got, want)
		}
	}
	expectOpen := func(err error) {
		t.Helper()
		if !errors.Is(err, ErrBreakerOpen) || !errors.Is(err, ErrUnavailable) || errors.Is(err, entitlement.ErrNotFound) {
			t.Fatalf("err = %v, want ErrBreakerOpen", err)
		}
	}

	// Answers, including 404 and per-request 4xx, reset the count.
	f.status(500)
	_ = lookup()
	_ = lookup()
	f.setRespond(nil)
	if _, err := src.Lookup(ctx, nobody); !errors.Is(err, entitlement.ErrNotFound) {
		t.Fatal(err)
	}
	f.status(500)
	_ = lookup()
	_ = lookup()
	if got := src.BreakerState(); got != BreakerClosed {
		t.Fatalf("breaker %s after 2 failures, a 404, 2 failures; want closed", got)
	}
	expectHits(5)

	// The third consecutive failure opens it; then nothing is sent.
	if err := lookup(); errors.Is(err, ErrBreakerOpen) {
		t.Fatalf("the failing call itself reported %v", err)
	}
	expectHits(6)
	for range 5 {
		expectOpen(lookup())
	}
	expectHits(6)
	if got := obs.lastOutcome(); got != "subject/"+OutcomeBreakerOpen {
		t.Errorf("outcome = %s, want breaker_open", got)
	}

	// Still open just before the cool-down ends.
	clk.add(cooldown - time.Millisecond)
	expectOpen(lookup())
	expectHits(6)

	// After it, one probe goes through; it fails, and the breaker opens again.
	clk.add(time.Millisecond)
	if err := lookup(); errors.Is(err, ErrBreakerOpen) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("probe: err = %v, want the service's 500", err)
	}
	expectHits(7)
	expectOpen(lookup())
	expectHits(7)

	// Half-open lets exactly one probe out at a time.
	clk.add(cooldown)
	probeIn, probeGo := make(chan struct{}), make(chan struct{})
	f.setRespond(func(w http.ResponseWriter, r *http.Request) {
		close(probeIn)
		<-probeGo
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"subject":"acme","plan":"pro","status":"active"}`)
	})
	probeErr := make(chan error, 1)
	go func() { probeErr <- lookup() }()
	<-probeIn
	if got := src.BreakerState(); got != BreakerHalfOpen {
		t.Errorf("breaker %s during the probe, want half_open", got)
	}
	expectOpen(lookup())
	close(probeGo)
	if err := <-probeErr; err != nil {
		t.Fatalf("probe: %v", err)
	}
	expectHits(8)

	// Its success closed the breaker: calls flow again.
	f.setRespond(nil)
	for range 3 {
		if err := lookup(); err != nil {
			t.Fatal(err)
		}
	}
	expectHits(11)

	want := []string{BreakerClosed, BreakerOpen, BreakerHalfOpen, BreakerOpen, BreakerHalfOpen, BreakerClosed}
	if got := obs.stateLog(); !slices.Equal(got, want) {
		t.Errorf("observed states %v, want %v", got, want)
	}
}

func TestBreakerHonoursRetryAfter(t *testing.T) {
	for _, code := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			f := startService(t, sourcetest.Records())
			clk := newClock()
			src := newSource(t, f, Options{
				Breaker: BreakerOptions{Failures: 5, Cooldown: time.Second, MaxRetryAfter: time.Minute},
				Now:     clk.now,
				Logger:  quiet,
			})
			f.setRespond(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Retry-After", "30")
				w.WriteHeader(code)
			})
			_, err := src.Lookup(context.Background(), acme)
			var le *LookupError
			if !errors.As(err, &le) || le.StatusCode != code || le.RetryAfter != 30*time.Second {
				t.Fatalf("err = %#v, want %d with Retry-After 30s", err, code)
			}
			// One answer with Retry-After opens the breaker, for 30s rather than the 1s cool-down.
			clk.add(29 * time.Second)
			if _, err := src.Lookup(context.Background(), acme); !errors.Is(err, ErrBreakerOpen) {
				t.Fatalf("after 29s: err = %v, want ErrBreakerOpen", err)
			}
			clk.add(time.Second)
			f.setRespond(nil)
			if _, err := src.Lookup(context.Background(), acme); err != nil {
				t.Fatalf("after 30s the probe: %v", err)
			}
			if got := f.hits.Load(); got != 2 {
				t.Errorf("hits = %d, want 2", got)
			}
		})
	}
}

// TestBehindCache puts the real cache in front, as serve does.
func TestBehindCache(t *testing.T) {
	f := startService(t, sourcetest.Records())
	clk := newClock()
	src := newSource(t, f, Options{Now: clk.now, Breaker: BreakerOptions{Failures: 3, Cooldown: time.Minute}, Logger: quiet})
	c := cache.New(src, cache.Options{TTL: time.Second, NegativeTTL: time.Second, StaleIfError: time.Hour, Timeout: 150 * time.Millisecond, Now: clk.now})
	ctx := context.Background()

	// Fill: acme known, nobody unknown (cached negatively).
	if _, o, err := c.Get(ctx, acme); err != nil || o != entitlement.CacheMiss {
		t.Fatalf("acme: %v %v", o, err)
	}
	if _, o, err := c.Get(ctx, nobody); !errors.Is(err, entitlement.ErrNotFound) || o != entitlement.CacheMiss {
		t.Fatalf("nobody: %v %v", o, err)
	}
	hits := f.hits.Load()
	if _, o, err := c.Get(ctx, nobody); !errors.Is(err, entitlement.ErrNotFound) || o != entitlement.CacheNegativeHit {
		t.Fatalf("nobody again: %v %v, want a negative hit", o, err)
	}
	if f.hits.Load() != hits {
		t.Fatal("a cached 404 still reached the service")
	}

	// The service breaks; the records expire.
	f.status(http.StatusInternalServerError)
	clk.add(2 * time.Second)
	ent, o, err := c.Get(ctx, acme)
	if err != nil || o != entitlement.CacheStale || ent.Plan != "pro" {
		t.Fatalf("acme while the service fails: %+v %v %v, want the stale record", ent, o, err)
	}

	// A 500 is never cached as unknown: each Get asks again.
	unseen := entitlement.Key{Kind: entitlement.BySubject, ID: "globex"}
	for range 2 {
		before := f.hits.Load()
		_, o, err := c.Get(ctx, unseen)
		if errors.Is(err, entitlement.ErrNotFound) || !errors.Is(err, ErrUnavailable) || o != entitlement.CacheError {
			t.Fatalf("globex: %v %v, want an error, not unknown", o, err)
		}
		if f.hits.Load() != before+1 {
			t.Fatal("a failed lookup was cached")
		}
	}

	// The breaker is open now (3 failures): stale still serves, with no calls.
	if got := src.BreakerState(); got != BreakerOpen {
		t.Fatalf("breaker = %s, want open", got)
	}
	before := f.hits.Load()
	if ent, o, err := c.Get(ctx, acme); err != nil || o != entitlement.CacheStale || ent.Subject != "acme" {
		t.Fatalf("acme with the breaker open: %+v %v %v", ent, o, err)
	}
	if f.hits.Load() != before {
		t.Error("the open breaker let a call through")
	}
}

func TestRequestHeaders(t *testing.T) {
	const token = "tg-s3cr3t-Zq8w"
	f := startService(t, sourcetest.Records())
	src := newSource(t, f, Options{Token: token, Version: "1.2.3"})
	if _, err := src.Lookup(context.Background(), acme); err != nil {
		t.Fatal(err)
	}
	h := f.lastHeader()
	for name, want := range map[string]string{
		"Authorization":      "Bearer " + token,
		"User-Agent":         "tollgate/1.2.3",
		"X-Tollgate-Request": "1",
		"Accept":             "application/json",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}

	t.Run("no token, no Authorization", func(t *testing.T) {
		src := newSource(t, f, Options{})
		if _, err := src.Lookup(context.Background(), acme); err != nil {
			t.Fatal(err)
		}
		if got := f.lastHeader().Get("Authorization"); got != "" {
			t.Errorf("Authorization = %q, want none", got)
		}
	})

	t.Run("token from the environment", func(t *testing.T) {
		t.Setenv("TOLLGATE_TEST_BILLING_TOKEN", token+"\n")
		src := newSource(t, f, Options{TokenEnv: "TOLLGATE_TEST_BILLING_TOKEN"})
		if _, err := src.Lookup(context.Background(), acme); err != nil {
			t.Fatal(err)
		}
		if got := f.lastHeader().Get("Authorization"); got != "Bearer "+token {
			t.Errorf("Authorization = %q", got)
		}
	})
}

// TestSecretsStayOut checks that no error names the token or the API-key digest.
func TestSecretsStayOut(t *testing.T) {
	const token = "tg-s3cr3t-Zq8w"
	f := startService(t, sourcetest.Records())
	scenarios := map[string]http.HandlerFunc{
		"401": func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "bad token "+r.Header.Get("Authorization"), 401)
		},
		"403": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(403) },
		"500": func(w http.ResponseWriter, r *http.Request) { http.Error(w, r.Header.Get("Authorization"), 500) },
		"429": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(429) },
		"malformed": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, `{"echo":"`+r.Header.Get("Authorization"))
		},
		"hang": func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		},
	}
	for name, h := range scenarios {
		t.Run(name, func(t *testing.T) {
			f.setRespond(h)
			var logs syncBuffer
			src := newSource(t, f, Options{Token: token, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Timeout: 30 * time.Millisecond})
			for _, key := range []entitlement.Key{acme, acmeKey} {
				_, err := src.Lookup(context.Background(), key)
				if err == nil {
					t.Fatal("no error")
				}
				if msg := err.Error(); strings.Contains(msg, token) || strings.Contains(msg, sourcetest.DigestAcme) {
					t.Errorf("error leaks a secret: %s", msg)
				}
			}
			out := logs.String()
			if strings.Contains(out, token) || strings.Contains(out, sourcetest.DigestAcme) {
				t.Errorf("log leaks a secret: %s", out)
			}
			if (name == "401" || name == "403") && !strings.Contains(out, "refused tollgate's credentials") {
				t.Errorf("a credential rejection was not logged; log: %q", out)
			}
		})
	}
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		src, err := New(Options{BaseURL: "http://" + addr, Token: token, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		_, err = src.Lookup(context.Background(), acmeKey)
		var le *LookupError
		if !errors.As(err, &le) || (le.Outcome != OutcomeTransport && le.Outcome != OutcomeTimeout) {
			t.Fatalf("err = %v, want a transport error", err)
		}
		if msg := err.Error(); strings.Contains(msg, token) || strings.Contains(msg, sourcetest.DigestAcme) {
			t.Errorf("error leaks a secret: %s", msg)
		}
	})
	t.Run("a token that cannot be sent", func(t *testing.T) {
		// config refuses it; built anyway, every call fails without echoing it.
		src := newSource(t, f, Options{Token: "tg-s3cr3t\nZq8w"})
		_, err := src.Lookup(context.Background(), acme)
		if err == nil || strings.Contains(err.Error(), "s3cr3t") {
			t.Fatalf("err = %v, want an error that does not echo the token", err)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestKeysOnTheWire(t *testing.T) {
	f := startService(t, nil)
	f.status(http.StatusNotFound)
	src, err := New(Options{BaseURL: f.URL + "/billing/"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		key      entitlement.Key
		wantPath string // "" means nothing is sent
	}{
		{"subject is path-escaped", entitlement.Key{Kind: entitlement.BySubject, ID: "team/a b?c"}, "/billing/v1/entitlements/subjects/team%2Fa%20b%3Fc"},
		{"digest", acmeKey, "/billing/v1/entitlements/api-keys/" + sourcetest.DigestAcme},
		{"upper-case digest is lower-cased", entitlement.Key{Kind: entitlement.ByAPIKey, ID: strings.ToUpper(sourcetest.DigestAcme)}, "/billing/v1/entitlements/api-keys/" + sourcetest.DigestAcme},
		{"a raw key is never sent", entitlement.Key{Kind: entitlement.ByAPIKey, ID: "demo-pro-key"}, ""},
		{"a short digest is never sent", entitlement.Key{Kind: entitlement.ByAPIKey, ID: sourcetest.DigestAcme[:40]}, ""},
		{"empty subject", entitlement.Key{Kind: entitlement.BySubject}, ""},
		{"unknown kind", entitlement.Key{ID: "acme"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.hits.Load()
			_, err := src.Lookup(context.Background(), tt.key)
			if !errors.Is(err, entitlement.ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
			sent := f.hits.Load() != before
			if tt.wantPath == "" {
				if sent {
					t.Errorf("sent %s, want nothing sent", f.lastPath())
				}
				return
			}
			if !sent {
				t.Fatal("nothing sent")
			}
			if got := f.lastPath(); got != tt.wantPath {
				t.Errorf("path = %s, want %s", got, tt.wantPath)
			}
		})
	}
}

// TestNew: New refuses only what it cannot build from, and takes the
// defaults for zero and negative bounds (config refuses the negative ones).
func TestNew(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_EMPTY", "")
	t.Setenv("TOLLGATE_TEST_TOKEN", "from-env")
	tests := []struct {
		name        string
		opts        Options
		wantErr     string
		wantTimeout time.Duration
		wantSlots   int
		wantAuth    string
	}{
		{"no url", Options{}, "httpsource: url is required", 0, 0, ""},
		{"url does not parse", Options{BaseURL: "http://billing/%zz"}, "httpsource: url is not a valid URL", 0, 0, ""},
		{"token_env unset", Options{BaseURL: "http://billing", TokenEnv: "TOLLGATE_TEST_UNSET_VAR"},
			"httpsource: token_env: environment variable TOLLGATE_TEST_UNSET_VAR is unset or empty", 0, 0, ""},
		{"token_env empty", Options{BaseURL: "http://billing", TokenEnv: "TOLLGATE_TEST_EMPTY"},
			"httpsource: token_env: environment variable TOLLGATE_TEST_EMPTY is unset or empty", 0, 0, ""},
		{"defaults", Options{BaseURL: "http://billing"}, "", DefaultTimeout, DefaultMaxInFlight, ""},
		{"negative bounds take the defaults", Options{BaseURL: "http://billing", Timeout: -time.Second, MaxInFlight: -1},
			"", DefaultTimeout, DefaultMaxInFlight, ""},
		{"a timeout over Envoy's default", Options{BaseURL: "http://billing", Timeout: 300 * time.Millisecond}, "", 300 * time.Millisecond, DefaultMaxInFlight, ""},
		{"token_env", Options{BaseURL: "http://billing", TokenEnv: "TOLLGATE_TEST_TOKEN"}, "", DefaultTimeout, DefaultMaxInFlight, "Bearer from-env"},
		{"token wins over token_env", Options{BaseURL: "http://billing", Token: "inline", TokenEnv: "TOLLGATE_TEST_UNSET_VAR"},
			"", DefaultTimeout, DefaultMaxInFlight, "Bearer inline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.opts)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, want := []any{s.timeout, cap(s.slots), s.header.Get("Authorization")}, []any{tt.wantTimeout, tt.wantSlots, tt.wantAuth}; !slices.Equal(got, want) {
				t.Errorf("timeout, max in flight, Authorization = %v, want %v", got, want)
			}
		})
	}
}
