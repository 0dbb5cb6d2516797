package redissource

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// waitFor is how long a test waits for something that should happen at
// once; it bounds a failure, it is not a threshold the code must beat.
const waitFor = 10 * time.Second

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after %v", what, waitFor)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// receive waits for one value from ch, or fails.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("no %s within %v", what, waitFor)
		panic("unreachable")
	}
}

type invalidation struct {
	subject string
	digests []string
}

// subscribe runs s.Subscribe until the test ends, reporting invalidations
// and resyncs on channels. It returns once the subscription is live.
func subscribe(t *testing.T, s *Source) (<-chan invalidation, <-chan struct{}) {
	t.Helper()
	inv := make(chan invalidation, 100)
	resync := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx,
			func(subject string, digests []string) { inv <- invalidation{subject, digests} },
			func() { resync <- struct{}{} })
	}()
	t.Cleanup(func() {
		cancel()
		if err := receive(t, done, "return from Subscribe after cancel"); err != nil {
			t.Errorf("Subscribe returned %v", err)
		}
	})
	receive(t, resync, "first resync (subscription live)")
	return inv, resync
}

// replica is one tollgate replica: a cache over its own source and client.
// With pubsub, a subscriber is wired as the server wires it.
func replica(t *testing.T, srv *redistest.Server, pubsub bool) *cache.Cache {
	t.Helper()
	// Generous timeouts: this test is about invalidation, not about failing fast.
	src := newSource(t, srv.Client(), Options{Timeout: 150 * time.Millisecond})
	c := cache.New(src, cache.Options{TTL: time.Hour, NegativeTTL: time.Hour, Timeout: 150 * time.Millisecond,
		StaleIfError: time.Hour})
	if !pubsub {
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	live := make(chan struct{})
	var once sync.Once
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = src.Subscribe(ctx,
			func(subject string, digests []string) {
				c.InvalidateSubject(subject)
				for _, d := range digests {
					c.InvalidateKey(d)
				}
			},
			func() {
				c.Revalidate()
				once.Do(func() { close(live) })
			})
	}()
	t.Cleanup(func() { cancel(); <-done })
	receive(t, live, "live subscription")
	return c
}

func status(t *testing.T, c *cache.Cache, k entitlement.Key) entitlement.Status {
	t.Helper()
	e, err := c.Lookup(context.Background(), k)
	if err != nil {
		t.Fatalf("lookup %v: %v", k.Kind, err)
	}
	return e.Status
}

// TestPubSubInvalidation: two replicas cache a subject as past_due for an
// hour; another client marks it active; both serve active within a bounded
// wait. A third replica without a subscriber keeps serving past_due, which
// shows the test depends on pub/sub and not on expiry or luck.
func TestPubSubInvalidation(t *testing.T) {
	srv := redistest.Start(t)
	writer := newSource(t, srv.Client(), Options{})
	mustPut(t, writer, rec("acme", entitlement.StatusPastDue, digestA))

	a, b := replica(t, srv, true), replica(t, srv, true)
	control := replica(t, srv, false)
	keys := []entitlement.Key{bySubject("acme"), byKey(digestA)}
	for _, c := range []*cache.Cache{a, b, control} {
		for _, k := range keys {
			if got := status(t, c, k); got != entitlement.StatusPastDue {
				t.Fatalf("before: %v = %s", k.Kind, got)
			}
		}
	}
	// A key issued now was unknown to the replicas: cached as not found.
	for _, c := range []*cache.Cache{a, b, control} {
		if _, err := c.Lookup(context.Background(), byKey(digestC)); !errors.Is(err, entitlement.ErrNotFound) {
			t.Fatalf("new key before put: %v", err)
		}
	}

	mustPut(t, writer, rec("acme", entitlement.StatusActive, digestA, digestC))

	for name, c := range map[string]*cache.Cache{"a": a, "b": b} {
		eventually(t, "active on replica "+name, func() bool {
			for _, k := range keys {
				if status(t, c, k) != entitlement.StatusActive {
					return false
				}
			}
			e, err := c.Lookup(context.Background(), byKey(digestC))
			return err == nil && e.Subject == "acme"
		})
	}
	// a and b have seen the message; control would have too, had it listened.
	for _, k := range keys {
		if got := status(t, control, k); got != entitlement.StatusPastDue {
			t.Errorf("replica without pub/sub serves %s for %v; the test no longer proves pub/sub", got, k.Kind)
		}
	}
	if _, err := control.Lookup(context.Background(), byKey(digestC)); !errors.Is(err, entitlement.ErrNotFound) {
		t.Errorf("replica without pub/sub knows the new key: %v", err)
	}
}

// TestPublishedMessages: what Put and Delete publish.
func TestPublishedMessages(t *testing.T) {
	srv := redistest.Start(t)
	s := newSource(t, srv.Client(), Options{Channel: "inv", Prefix: "p:"})
	inv, _ := subscribe(t, s)
	ctx := context.Background()

	steps := []struct {
		name string
		do   func() error
		want invalidation
	}{
		{"first put", func() error { return s.Put(ctx, rec("acme", entitlement.StatusActive, digestB, digestA)) },
			invalidation{"acme", []string{digestB, digestA}}},
		{"put that drops a key lists old and new", func() error { return s.Put(ctx, rec("acme", entitlement.StatusActive, digestC)) },
			invalidation{"acme", []string{digestC, digestB, digestA}}},
		{"delete lists the keys it removed", func() error { return s.Delete(ctx, "acme") },
			invalidation{"acme", []string{digestC}}},
		{"delete of nothing still publishes", func() error { _ = s.Delete(ctx, "acme"); return nil },
			invalidation{"acme", nil}},
		{"subject needing JSON escapes", func() error { return s.Put(ctx, rec(`a"c\mé/`, entitlement.StatusActive)) },
			invalidation{`a"c\mé/`, nil}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		got := receive(t, inv, st.name+" invalidation")
		slices.Sort(got.digests)
		slices.Sort(st.want.digests)
		if got.subject != st.want.subject || !slices.Equal(got.digests, st.want.digests) {
			t.Errorf("%s: got %+v, want %+v", st.name, got, st.want)
		}
	}

	// A writer of its own may publish a bare subject id.
	if err := srv.Client().Publish(ctx, "inv", "initech").Err(); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, inv, "plain invalidation"); got.subject != "initech" || got.digests != nil {
		t.Errorf("plain message: got %+v", got)
	}
}

// TestUnreadableMessageResyncs: a message whose subject cannot be known
// resyncs everything rather than nothing.
func TestUnreadableMessageResyncs(t *testing.T) {
	srv := redistest.Start(t)
	s := newSource(t, srv.Client(), Options{Logger: slog.New(slog.DiscardHandler)})
	inv, resync := subscribe(t, s)
	if err := srv.Client().Publish(context.Background(), DefaultChannel, `{"subject": 12}`).Err(); err != nil {
		t.Fatal(err)
	}
	receive(t, resync, "resync for an unreadable message")
	select {
	case got := <-inv:
		t.Errorf("unreadable message invalidated %+v", got)
	default:
	}
}

func TestParseMessage(t *testing.T) {
	tests := []struct {
		name, payload string
		subject       string
		digests       []string
		ok            bool
	}{
		{"json", `{"subject":"acme","api_key_sha256":["` + digestA + `"]}`, "acme", []string{digestA}, true},
		{"json without digests", `{"subject":"acme"}`, "acme", nil, true},
		{"digests lower-cased, junk dropped", `{"subject":"acme","api_key_sha256":["` + strings.ToUpper(digestA) + `","nope"]}`, "acme", []string{digestA}, true},
		{"plain subject", "acme", "acme", nil, true},
		{"plain subject with spaces", "Acme Corp", "Acme Corp", nil, true},
		{"empty", "", "", nil, false},
		{"malformed json", `{"subject":`, "", nil, false},
		{"json without subject", `{"api_key_sha256":[]}`, "", nil, false},
		{"control character", "ac\x00me", "", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			subject, digests, ok := parseMessage(tt.payload)
			if ok != tt.ok || subject != tt.subject || !slices.Equal(digests, tt.digests) {
				t.Errorf("got %q %v %v, want %q %v %v", subject, digests, ok, tt.subject, tt.digests, tt.ok)
			}
		})
	}
}

// TestSubscribeSurvivesRestart: Redis crashes and comes back on the same
// port with no data. The subscriber reconnects by itself, calls onResync
// (what was published meanwhile is lost), and later invalidations arrive.
func TestSubscribeSurvivesRestart(t *testing.T) {
	srv := redistest.Start(t)
	s := newSource(t, fastClient(t, srv), Options{Logger: slog.New(slog.DiscardHandler)})
	inv, resync := subscribe(t, s)
	mustPut(t, newSource(t, srv.Client(), Options{}), rec("acme", entitlement.StatusActive))
	if got := receive(t, inv, "invalidation before restart"); got.subject != "acme" {
		t.Fatalf("got %+v", got)
	}

	srv.Kill()
	srv.Restart()
	receive(t, resync, "resync after restart")

	// A fresh client: the old one's pooled connections died with the server.
	mustPut(t, newSource(t, srv.Client(), Options{}), rec("initech", entitlement.StatusActive))
	if got := receive(t, inv, "invalidation after restart"); got.subject != "initech" {
		t.Fatalf("got %+v", got)
	}
	select {
	case <-resync:
		t.Error("more than one resync for one restart")
	default:
	}
}

// logBuffer is a slog sink tests read while the subscriber writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestSubscribeStalledRedis: a connection that goes silent without an I/O
// error (a stalled server, a partition) is noticed by the health check,
// replaced, and the cache resynced once Redis answers again.
func TestSubscribeStalledRedis(t *testing.T) {
	srv := redistest.Start(t)
	logs := &logBuffer{}
	s := newSource(t, fastClient(t, srv), Options{
		HealthCheck: 20 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
	})
	inv, resync := subscribe(t, s)

	srv.Pause()
	eventually(t, "logged as lost", func() bool { return strings.Contains(logs.String(), "lost the entitlement invalidation subscription") })
	srv.Resume()
	receive(t, resync, "resync after the stall")

	mustPut(t, newSource(t, srv.Client(), Options{}), rec("acme", entitlement.StatusActive))
	if got := receive(t, inv, "invalidation after the stall"); got.subject != "acme" {
		t.Fatalf("got %+v", got)
	}
	if !strings.Contains(logs.String(), "resubscribed") {
		t.Errorf("no resubscribe logged:\n%s", logs.String())
	}
}

// TestSubscribeIdleStaysSubscribed: the health check's PINGs keep a quiet
// subscription as it is: no reconnect, no purge, and messages still arrive.
func TestSubscribeIdleStaysSubscribed(t *testing.T) {
	srv := redistest.Start(t)
	logs := &logBuffer{}
	s := newSource(t, fastClient(t, srv), Options{
		HealthCheck: 10 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
	})
	inv, resync := subscribe(t, s)
	time.Sleep(20 * s.healthCheck) // quiet for many health-check intervals

	mustPut(t, newSource(t, srv.Client(), Options{}), rec("acme", entitlement.StatusActive))
	if got := receive(t, inv, "invalidation after a quiet spell"); got.subject != "acme" {
		t.Fatalf("got %+v", got)
	}
	select {
	case <-resync:
		t.Errorf("a quiet but healthy subscription was resynced; log:\n%s", logs.String())
	default:
	}
}

func TestSubscribeNeedsCallback(t *testing.T) {
	s := newSource(t, fastClient(t, redistest.Start(t)), Options{})
	if err := s.Subscribe(context.Background(), nil, nil); err == nil {
		t.Fatal("Subscribe with a nil onInvalidate did not fail")
	}
}

// TestSuggestedACLs: replicas run with the Redis user that
// docs/sources.md suggests (read and subscribe, no writes), and the
// writer with the one suggested for it.
func TestSuggestedACLs(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client()
	ctx := context.Background()
	user := func(name, rules string) *redis.Client {
		t.Helper()
		args := []any{"ACL", "SETUSER", name, "on", ">s3cret"}
		for _, r := range strings.Fields(rules) {
			args = append(args, r)
		}
		if err := admin.Do(ctx, args...).Err(); err != nil {
			t.Fatal(err)
		}
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: name, Password: "s3cret", DisableIdentity: true})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	const replicaRules = "resetkeys ~tollgate:ent:* resetchannels &tollgate:invalidate -@all +get +eval +evalsha +subscribe +ping +hello +auth"
	const writerRules = replicaRules + " +set +del +smembers +sadd +srem +publish +multi +exec"
	writer := newSource(t, user("billing", writerRules), Options{})
	s := newSource(t, user("tollgate", replicaRules), Options{Timeout: 150 * time.Millisecond})

	mustPut(t, writer, rec("initech", entitlement.StatusActive, digestB))
	mustPut(t, writer, rec("acme", entitlement.StatusActive, digestA, digestB)) // moves digestB
	if _, err := writer.Get(ctx, "acme"); err != nil {
		t.Fatalf("writer get: %v", err)
	}
	for _, k := range []entitlement.Key{bySubject("acme"), byKey(digestA)} {
		if _, err := s.Lookup(ctx, k); err != nil {
			t.Fatalf("lookup %v: %v", k.Kind, err)
		}
	}
	// A miss reads the dataset marker too (unset yet: no deletion so far).
	for _, k := range []entitlement.Key{bySubject("nobody"), byKey(digestC)} {
		if _, err := s.Lookup(ctx, k); err != entitlement.ErrNotFoundUnconfirmed {
			t.Fatalf("lookup %v: %v, want ErrNotFoundUnconfirmed", k.Kind, err)
		}
	}
	if err := s.Put(ctx, rec("acme", entitlement.StatusCanceled)); err == nil {
		t.Error("the replica's user could write")
	}
	inv, _ := subscribe(t, s)
	if err := writer.Delete(ctx, "initech"); err != nil {
		t.Fatalf("writer delete: %v", err)
	}
	if got := receive(t, inv, "invalidation"); got.subject != "initech" {
		t.Errorf("got %+v", got)
	}
	for _, k := range []entitlement.Key{bySubject("initech"), byKey(digestC)} {
		if _, err := s.Lookup(ctx, k); err != entitlement.ErrNotFound {
			t.Errorf("lookup %v after a deletion: %v, want ErrNotFound", k.Kind, err)
		}
	}
}
