package redissource

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/sourcetest"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// fastClient fails within about 50 ms, as production should (the options
// quota.RedisOptions gives).
func fastClient(t testing.TB, srv *redistest.Server) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:                  srv.Addr(),
		DialTimeout:           DefaultTimeout,
		ReadTimeout:           DefaultTimeout,
		WriteTimeout:          DefaultTimeout,
		PoolTimeout:           DefaultTimeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialerRetries:         1,
		DisableIdentity:       true,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newSource(t testing.TB, c redis.UniversalClient, opts Options) *Source {
	t.Helper()
	opts.Client = c
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var (
	bySubject = func(id string) entitlement.Key { return entitlement.Key{Kind: entitlement.BySubject, ID: id} }
	byKey     = func(d string) entitlement.Key { return entitlement.Key{Kind: entitlement.ByAPIKey, ID: d} }
)

const (
	digestA = sourcetest.DigestAcme
	digestB = sourcetest.DigestInitech
	digestC = "c0ffee0000000000000000000000000000000000000000000000000000000001"
)

func rec(subject string, status entitlement.Status, digests ...string) Record {
	return Record{
		Entitlement:   entitlement.Entitlement{Subject: subject, Plan: "pro", Status: status},
		APIKeyDigests: digests,
	}
}

func mustPut(t testing.TB, s *Source, r Record) {
	t.Helper()
	if err := s.Put(context.Background(), r); err != nil {
		t.Fatalf("put %s: %v", r.Entitlement.Subject, err)
	}
}

// TestSourceBehaviour runs the shared source table against the redis source.
func TestSourceBehaviour(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T, recs []sourcetest.Record) entitlement.Source {
		srv := redistest.Start(t)
		s := newSource(t, srv.Client(), Options{Timeout: 150 * time.Millisecond})
		for _, r := range recs {
			mustPut(t, s, Record{Entitlement: r.Entitlement, APIKeyDigests: r.APIKeyDigests})
		}
		return s
	}, sourcetest.All)
}

func TestNew(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	tests := []struct {
		name        string
		opts        Options
		wantErr     string
		wantTimeout time.Duration
	}{
		{"defaults", Options{Client: c}, "", DefaultTimeout},
		{"no client", Options{}, "client is required", 0},
		// Envoy's timeout is the config's to check (server.envoy_timeout):
		// a raised one allows a longer lookup.
		{"timeout over Envoy's default", Options{Client: c, Timeout: 300 * time.Millisecond}, "", 300 * time.Millisecond},
		{"negative timeout", Options{Client: c, Timeout: -time.Millisecond}, "", DefaultTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.opts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got, want := []any{s.prefix, s.channel, s.timeout}, []any{DefaultPrefix, DefaultChannel, tt.wantTimeout}; !slices.Equal(got, want) {
					t.Errorf("prefix, channel, timeout = %v, want %v", got, want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestTimeoutOverEnvoysDefault: a source built with a 300ms timeout (a
// config that raised server.envoy_timeout to 500ms) serves, and a lookup
// that Redis does not answer fails after that timeout, not a hard-coded one.
func TestTimeoutOverEnvoysDefault(t *testing.T) {
	srv := redistest.Start(t)
	s := newSource(t, srv.Client(), Options{Timeout: 300 * time.Millisecond})
	mustPut(t, s, rec("acme", entitlement.StatusActive, digestA))
	e, err := s.Lookup(context.Background(), byKey(digestA))
	if err != nil || e.Subject != "acme" {
		t.Fatalf("Lookup = %v, %v; want acme's record", e, err)
	}
	srv.Pause()
	defer srv.Resume()
	_, err = s.Lookup(context.Background(), bySubject("acme"))
	var le *LookupError
	if !errors.As(err, &le) || le.Outcome != OutcomeTimeout || !strings.Contains(err.Error(), "no answer within 300ms") {
		t.Fatalf("Lookup with Redis paused: %v; want a timeout after the 300ms Options.Timeout", err)
	}
}

// calls records what the Observer is told.
type calls struct {
	mu  sync.Mutex
	got []string
}

func (c *calls) Call(kind, outcome string, _ time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, kind+"/"+outcome)
}

func (c *calls) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == 0 {
		return ""
	}
	return c.got[len(c.got)-1]
}

// TestLookupFaults: what is stored by hand, wrongly or partly, and what
// Lookup makes of it. Only a missing record is "not found"; everything else
// must be an error the cache does not store as unknown.
func TestLookupFaults(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	obs := &calls{}
	s := newSource(t, c, Options{Observer: obs, Timeout: 150 * time.Millisecond})
	ctx := context.Background()
	set := func(k, v string) {
		t.Helper()
		if err := c.Set(ctx, k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	const good = `{"subject":"acme","plan":"pro","status":"active"}`

	tests := []struct {
		name        string
		setup       func()
		key         entitlement.Key
		wantOutcome string // OutcomeNotFound means ErrNotFound
	}{
		{"no index entry", func() {}, byKey(digestA), OutcomeNotFound},
		{"index entry, no record", func() { set("tollgate:ent:key:"+digestA, "ghost") }, byKey(digestA), OutcomeNotFound},
		{"no record", func() {}, bySubject("nobody"), OutcomeNotFound},
		{"empty subject", func() {}, bySubject(""), ""},
		{"corrupt JSON", func() { set("tollgate:ent:subject:acme", `{"subject":"acme","plan":`) }, bySubject("acme"), OutcomeInvalid},
		{"corrupt JSON by key", func() {
			set("tollgate:ent:key:"+digestA, "acme")
			set("tollgate:ent:subject:acme", "not json at all")
		}, byKey(digestA), OutcomeInvalid},
		{"wrong JSON type", func() { set("tollgate:ent:subject:acme", `{"subject":"acme","plan":5,"status":"active"}`) }, bySubject("acme"), OutcomeInvalid},
		{"bad time", func() {
			set("tollgate:ent:subject:acme", `{"subject":"acme","plan":"pro","status":"active","period_end":"tomorrow"}`)
		}, bySubject("acme"), OutcomeInvalid},
		{"unknown status", func() { set("tollgate:ent:subject:acme", `{"subject":"acme","plan":"pro","status":"gold"}`) }, bySubject("acme"), OutcomeInvalid},
		{"negative credits", func() {
			set("tollgate:ent:subject:acme", `{"subject":"acme","plan":"pro","status":"active","credits":-1}`)
		}, bySubject("acme"), OutcomeInvalid},
		{"another subject's record", func() {
			set("tollgate:ent:key:"+digestA, "acme")
			set("tollgate:ent:subject:acme", `{"subject":"initech","plan":"pro","status":"active"}`)
		}, byKey(digestA), OutcomeInvalid},
		{"oversized record", func() {
			set("tollgate:ent:subject:acme", `{"subject":"acme","plan":"pro","status":"active","x":"`+strings.Repeat("x", MaxRecordBytes)+`"}`)
		}, bySubject("acme"), OutcomeInvalid},
		{"record key is a hash", func() {
			c.HSet(ctx, "tollgate:ent:subject:acme", "plan", "pro")
		}, bySubject("acme"), OutcomeInvalid},
		{"index key is a list", func() {
			c.RPush(ctx, "tollgate:ent:key:"+digestA, "acme")
		}, byKey(digestA), OutcomeInvalid},
		{"record behind index is a set", func() {
			set("tollgate:ent:key:"+digestA, "acme")
			c.SAdd(ctx, "tollgate:ent:subject:acme", good)
		}, byKey(digestA), OutcomeInvalid},
		{"upper-case digest finds the record", func() {
			set("tollgate:ent:key:"+digestA, "acme")
			set("tollgate:ent:subject:acme", good)
		}, byKey(strings.ToUpper(digestA)), OutcomeOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			tt.setup()
			got, err := s.Lookup(ctx, tt.key)
			switch tt.wantOutcome {
			case OutcomeOK:
				if err != nil || got.Plan != "pro" {
					t.Fatalf("got %+v, %v; want the record", got, err)
				}
			case OutcomeNotFound, "":
				if !errors.Is(err, entitlement.ErrNotFound) {
					t.Fatalf("err = %v, want ErrNotFound", err)
				}
			default:
				if err == nil || errors.Is(err, entitlement.ErrNotFound) || !errors.Is(err, ErrUnavailable) {
					t.Fatalf("err = %v, want an ErrUnavailable error that is not ErrNotFound", err)
				}
				var le *LookupError
				if !errors.As(err, &le) || le.Outcome != tt.wantOutcome {
					t.Fatalf("err = %#v, want outcome %s", err, tt.wantOutcome)
				}
				if strings.Contains(err.Error(), digestA) {
					t.Errorf("error names the API-key digest: %v", err)
				}
			}
			if tt.wantOutcome != "" {
				if want := tt.key.Kind.String() + "/" + tt.wantOutcome; obs.last() != want {
					t.Errorf("observer got %q, want %q", obs.last(), want)
				}
			}
		})
	}
}

// TestLookupRedisDown: a dead or stalled Redis is an error, never "not
// found", and a stalled one costs about the timeout, not more.
func TestLookupRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	obs := &calls{}
	s := newSource(t, fastClient(t, srv), Options{Observer: obs})
	mustPut(t, newSource(t, srv.Client(), Options{}), rec("acme", entitlement.StatusActive, digestA))
	ctx := context.Background()
	for _, k := range []entitlement.Key{bySubject("acme"), byKey(digestA)} {
		if _, err := s.Lookup(ctx, k); err != nil {
			t.Fatalf("lookup %v while up: %v", k.Kind, err)
		}
	}

	t.Run("stalled", func(t *testing.T) {
		// A client that would wait for ever: only Options.Timeout, which
		// Lookup puts on the context, can end these calls.
		patient := redis.NewClient(&redis.Options{
			Addr: srv.Addr(), ReadTimeout: -1, WriteTimeout: -1, DialTimeout: waitFor,
			ContextTimeoutEnabled: true, MaxRetries: -1, DisableIdentity: true,
		})
		t.Cleanup(func() { _ = patient.Close() })
		ps := newSource(t, patient, Options{Observer: obs})
		if _, err := ps.Lookup(ctx, bySubject("acme")); err != nil {
			t.Fatalf("lookup while up: %v", err)
		}
		srv.Pause()
		defer srv.Resume()
		for _, k := range []entitlement.Key{bySubject("acme"), byKey(digestA)} {
			done := make(chan error, 1)
			go func() {
				_, err := ps.Lookup(ctx, k)
				done <- err
			}()
			err := receive(t, done, "lookup against a stalled redis to end")
			var le *LookupError
			if !errors.As(err, &le) || le.Outcome != OutcomeTimeout || !errors.Is(err, context.DeadlineExceeded) ||
				!strings.Contains(err.Error(), "no answer within 50ms") {
				t.Fatalf("lookup %v: err = %v, want a timeout after the 50ms Options.Timeout", k.Kind, err)
			}
		}
	})

	t.Run("killed", func(t *testing.T) {
		srv.Kill()
		for _, k := range []entitlement.Key{bySubject("acme"), byKey(digestA)} {
			_, err := s.Lookup(ctx, k)
			if err == nil || errors.Is(err, entitlement.ErrNotFound) || !errors.Is(err, ErrUnavailable) {
				t.Fatalf("lookup %v: err = %v, want unavailable, not ErrNotFound", k.Kind, err)
			}
			if got := obs.last(); got != k.Kind.String()+"/"+OutcomeError && got != k.Kind.String()+"/"+OutcomeTimeout {
				t.Errorf("observer got %q", got)
			}
		}
	})

	t.Run("canceled by the caller", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := s.Lookup(cctx, bySubject("acme"))
		var le *LookupError
		if !errors.As(err, &le) || le.Outcome != OutcomeCanceled {
			t.Fatalf("err = %v, want outcome canceled", err)
		}
	})
}

// resolve is what Lookup by digest says: the subject, or "" for not found.
func resolve(t *testing.T, s *Source, d string) string {
	t.Helper()
	e, err := s.Lookup(context.Background(), byKey(d))
	if errors.Is(err, entitlement.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatalf("lookup %s…: %v", d[:8], err)
	}
	return e.Subject
}

func TestPutReplacesKeyIndex(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	s := newSource(t, c, Options{Timeout: 150 * time.Millisecond})
	ctx := context.Background()

	mustPut(t, s, rec("acme", entitlement.StatusActive, digestA, strings.ToUpper(digestB), digestA))
	got, err := s.Get(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{digestB, digestA}; !slices.Equal(got.APIKeyDigests, want) {
		t.Errorf("digests = %v, want %v (lower-case, sorted, unique)", got.APIKeyDigests, want)
	}

	// A key left out of the record stops resolving; a new one starts.
	mustPut(t, s, rec("acme", entitlement.StatusPastDue, digestB, digestC))
	for d, want := range map[string]string{digestA: "", digestB: "acme", digestC: "acme"} {
		if got := resolve(t, s, d); got != want {
			t.Errorf("key %s… resolves to %q, want %q", d[:8], got, want)
		}
	}
	if n, _ := c.Exists(ctx, "tollgate:ent:key:"+digestA).Result(); n != 0 {
		t.Error("the removed key's index entry is still stored")
	}

	// A key given to another subject moves: it leaves acme's list, and a
	// later Put of acme does not take it back by deleting it.
	mustPut(t, s, rec("initech", entitlement.StatusActive, digestC))
	if got, _ := s.Get(ctx, "acme"); !slices.Equal(got.APIKeyDigests, []string{digestB}) {
		t.Errorf("acme's digests = %v after its key moved, want [%s]", got.APIKeyDigests, digestB)
	}
	mustPut(t, s, rec("acme", entitlement.StatusActive, digestB))
	if got := resolve(t, s, digestC); got != "initech" {
		t.Errorf("moved key resolves to %q, want initech", got)
	}

	// Delete removes the record, its index entries and its key set, and
	// leaves the other subject alone.
	if err := s.Delete(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, bySubject("acme")); !errors.Is(err, entitlement.ErrNotFound) {
		t.Errorf("lookup after delete: %v, want ErrNotFound", err)
	}
	if got := resolve(t, s, digestB); got != "" {
		t.Errorf("deleted subject's key resolves to %q", got)
	}
	if _, err := s.Get(ctx, "acme"); !errors.Is(err, entitlement.ErrNotFound) {
		t.Errorf("get after delete: %v, want ErrNotFound", err)
	}
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	want := []string{"tollgate:ent:key:" + digestC, "tollgate:ent:meta:dataset", "tollgate:ent:subject-keys:initech", "tollgate:ent:subject:initech"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys after delete = %v, want %v", keys, want)
	}
	if err := s.Delete(ctx, "acme"); !errors.Is(err, entitlement.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

func TestPutRejectsInvalidRecords(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	s := newSource(t, c, Options{})
	ctx := context.Background()
	neg := int64(-1)
	tests := []struct {
		name    string
		rec     Record
		wantErr string
	}{
		{"empty subject", rec("", entitlement.StatusActive), "subject is empty"},
		{"control character", rec("ac\nme", entitlement.StatusActive), "control character"},
		{"no plan", Record{Entitlement: entitlement.Entitlement{Subject: "acme", Status: entitlement.StatusActive}}, `"plan" is required`},
		{"unknown status", rec("acme", "gold"), `"status": "gold"`},
		{"short digest", rec("acme", entitlement.StatusActive, "abc"), "not 64 hex digits"},
		{"not hex", rec("acme", entitlement.StatusActive, strings.Repeat("g", 64)), "not 64 hex digits"},
		{"negative credits", Record{Entitlement: entitlement.Entitlement{Subject: "acme", Plan: "p", Status: "active", Credits: &neg}}, `"credits"`},
		{"period backwards", Record{Entitlement: entitlement.Entitlement{Subject: "acme", Plan: "p", Status: "active",
			PeriodStart: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), PeriodEnd: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}, `"period_end"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Put(ctx, tt.rec)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	if n, _ := c.DBSize(ctx).Result(); n != 0 {
		t.Errorf("%d keys written by rejected puts", n)
	}
}

// TestPutWrongTypeWritesNothing: a write that meets a key of the wrong type
// fails before it changes anything.
func TestPutWrongTypeWritesNothing(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	s := newSource(t, c, Options{})
	ctx := context.Background()
	c.RPush(ctx, "tollgate:ent:key:"+digestB, "x")
	err := s.Put(ctx, rec("acme", entitlement.StatusActive, digestA, digestB))
	if err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("err = %v, want WRONGTYPE", err)
	}
	if n, _ := c.Exists(ctx, "tollgate:ent:subject:acme", "tollgate:ent:key:"+digestA).Result(); n != 0 {
		t.Errorf("a failed put left %d keys", n)
	}
}

func TestRecordJSON(t *testing.T) {
	credits := int64(7)
	r := Record{
		Entitlement: entitlement.Entitlement{
			Subject: "acme", Plan: "pro", Status: entitlement.StatusPastDue,
			Features: []string{"sso"}, Quotas: map[string]int64{"requests": 10}, Credits: &credits,
			PeriodEnd: time.Date(2026, 12, 1, 0, 0, 0, 0, time.FixedZone("CET", 3600)),
		},
		APIKeyDigests: []string{digestA},
	}
	b, err := r.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"subject":"acme","plan":"pro","status":"past_due","features":["sso"],"quotas":{"requests":10},"credits":7,"period_end":"2026-11-30T23:00:00Z","api_key_sha256":["` + digestA + `"]}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	var back Record
	if err := back.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	sourcetest.Compare(t, &back.Entitlement, &r.Entitlement, sourcetest.All)
	if !slices.Equal(back.APIKeyDigests, r.APIKeyDigests) {
		t.Errorf("digests = %v", back.APIKeyDigests)
	}
}
