package redissource

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// TestLookupWhileLoading: a Redis that restarted with its data answers
// LOADING until it has read it. That is "cannot answer", never "unknown".
func TestLookupWhileLoading(t *testing.T) {
	srv, master := redistest.Start(t), redistest.Start(t)
	w := newSource(t, master.Client(), Options{})
	mustPut(t, w, rec("acme", entitlement.StatusActive, digestA))
	master.Fill(100000)
	obs := &calls{}
	s := newSource(t, fastClient(t, srv), Options{Observer: obs, Timeout: 150 * time.Millisecond})
	finish := srv.LoadFrom(master)
	for _, k := range []entitlement.Key{bySubject("acme"), byKey(digestA), bySubject("nobody")} {
		_, err := s.Lookup(context.Background(), k)
		var le *LookupError
		// Redis answers between the keys it loads: on a busy machine the
		// answer may come after the timeout. Either way, not "unknown".
		if !errors.As(err, &le) || (le.Outcome != OutcomeNotReady && le.Outcome != OutcomeTimeout) ||
			errors.Is(err, entitlement.ErrNotFound) || !errors.Is(err, ErrUnavailable) {
			t.Errorf("lookup %v %s while loading: err = %v, want %s, not ErrNotFound", k.Kind, k.ID, err, OutcomeNotReady)
		}
	}
	finish()
	if e, err := s.Lookup(context.Background(), bySubject("acme")); err != nil || e.Subject != "acme" {
		t.Errorf("after loading: %v %v", e, err)
	}
}

// replyServer is a stand-in for a Redis that answers every command with one
// error line: the transient replies a real one gives only in states a test
// cannot easily bring about (a busy script, a cluster or sentinel outage).
func replyServer(t *testing.T, reply string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					// A command is an array of bulk strings: *N, then N
					// pairs of $len and the bytes.
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
					for range 2 * n {
						if _, err := r.ReadString('\n'); err != nil {
							return
						}
					}
					if _, err := io.WriteString(c, "-"+reply+"\r\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// TestTransientRepliesAreNotUnknown: replies by which Redis says "not now"
// are errors of their own outcome, never "not found".
func TestTransientRepliesAreNotUnknown(t *testing.T) {
	tests := []struct{ reply, want string }{
		{"LOADING Redis is loading the dataset in memory", OutcomeNotReady},
		{"BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.", OutcomeNotReady},
		{"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", OutcomeNotReady},
		{"TRYAGAIN Multiple keys request during rehashing of slot", OutcomeNotReady},
		{"CLUSTERDOWN The cluster is down", OutcomeNotReady},
		{"ERR max number of clients reached", OutcomeNotReady},
		{"NOPERM this user has no permissions to run the 'get' command", OutcomeError},
		{"ERR unknown command", OutcomeError},
	}
	for _, tt := range tests {
		t.Run(strings.Fields(tt.reply)[0], func(t *testing.T) {
			c := redis.NewClient(&redis.Options{
				Addr: replyServer(t, tt.reply), Protocol: 2, DisableIdentity: true, MaxRetries: -1,
				ContextTimeoutEnabled: true,
			})
			t.Cleanup(func() { _ = c.Close() })
			obs := &calls{}
			s := newSource(t, c, Options{Observer: obs, Timeout: 150 * time.Millisecond})
			for _, k := range []entitlement.Key{bySubject("acme"), byKey(digestA)} {
				_, err := s.Lookup(context.Background(), k)
				var le *LookupError
				if !errors.As(err, &le) || le.Outcome != tt.want || errors.Is(err, entitlement.ErrNotFound) || !errors.Is(err, ErrUnavailable) {
					t.Errorf("lookup %v: err = %v, want outcome %s and not ErrNotFound", k.Kind, err, tt.want)
				}
				if got, want := obs.last(), k.Kind.String()+"/"+tt.want; got != want {
					t.Errorf("observer got %q, want %q", got, want)
				}
			}
		})
	}
}

// resyncingReplica is one tollgate replica wired as the server wires it: a
// cache whose records serve stale for an hour, and a subscriber. Each
// resync after the first is reported on the channel.
func resyncingReplica(t *testing.T, srv *redistest.Server) (*cache.Cache, <-chan struct{}) {
	t.Helper()
	src := newSource(t, fastClient(t, srv), Options{HealthCheck: 50 * time.Millisecond, Timeout: 500 * time.Millisecond})
	c := cache.New(src, cache.Options{TTL: time.Hour, NegativeTTL: time.Minute, StaleIfError: time.Hour,
		Timeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	resyncs := make(chan struct{}, 10)
	live := make(chan struct{})
	done := make(chan struct{})
	first := true
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
				if first {
					first = false
					close(live)
					return
				}
				resyncs <- struct{}{}
			})
	}()
	t.Cleanup(func() { cancel(); <-done })
	receive(t, live, "live subscription")
	return c, resyncs
}

// TestResyncKeepsRecords: Redis comes back still loading, or empty; the
// subscriber resubscribes at once. The replica keeps serving what it knew
// (stale while Redis cannot answer, doubted while it says "unknown") rather
// than answering 503 or 401 for every subject.
func TestResyncKeepsRecords(t *testing.T) {
	keys := []entitlement.Key{bySubject("acme"), byKey(digestA)}
	warm := func(t *testing.T, c *cache.Cache) {
		t.Helper()
		for _, k := range keys {
			if _, o, err := c.Get(context.Background(), k); err != nil || o != entitlement.CacheMiss {
				t.Fatalf("warm %v: %s %v", k.Kind, o, err)
			}
		}
	}
	// serves checks that acme is served, as one of want.
	serves := func(t *testing.T, c *cache.Cache, when string, want ...entitlement.CacheOutcome) {
		t.Helper()
		for _, k := range keys {
			e, o, err := c.Get(context.Background(), k)
			if err != nil || !slices.Contains(want, o) || e.Subject != "acme" {
				t.Errorf("%s, %v: %s %v, want acme served (%v)", when, k.Kind, o, err, want)
			}
		}
	}

	t.Run("loading", func(t *testing.T) {
		srv, master := redistest.Start(t), redistest.Start(t)
		for _, r := range []*redistest.Server{srv, master} {
			mustPut(t, newSource(t, r.Client(), Options{}), rec("acme", entitlement.StatusActive, digestA))
		}
		master.Fill(100000)
		c, resyncs := resyncingReplica(t, srv)
		warm(t, c)
		finish := srv.LoadFrom(master)
		// Redis restarted: the subscription drops and comes back at once,
		// while reads still get LOADING.
		if err := srv.Client().Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		receive(t, resyncs, "resync while loading")
		serves(t, c, "resubscribed while loading", entitlement.CacheStale)
		// Redis answers the subscriber's health-check PINGs with LOADING:
		// an answer, so the subscription stays as it is.
		pings := pingsSeen(t, srv)
		eventually(t, "more PINGs seen", func() bool { return pingsSeen(t, srv) >= pings+2*silentLimit })
		select {
		case <-resyncs:
			t.Errorf("the subscriber resubscribed while Redis answered its PINGs with LOADING")
		default:
		}
		finish()
		eventually(t, "acme from the loaded Redis", func() bool {
			_, o, _ := c.Get(context.Background(), keys[0])
			return o == entitlement.CacheMiss || o == entitlement.CacheHit
		})
	})

	t.Run("restarted empty", func(t *testing.T) {
		srv := redistest.Start(t)
		mustPut(t, newSource(t, srv.Client(), Options{}), rec("acme", entitlement.StatusActive, digestA))
		c, resyncs := resyncingReplica(t, srv)
		warm(t, c)
		srv.Restart()
		receive(t, resyncs, "resync after restart")
		// Stale where a lookup timed out on a busy machine; either way served.
		serves(t, c, "resubscribed to an empty Redis", entitlement.CacheSuspectNotFound, entitlement.CacheStale)
		eventually(t, "a doubted unknown", func() bool {
			_, o, _ := c.Get(context.Background(), keys[0])
			return o == entitlement.CacheSuspectNotFound
		})
		// The writer replays its state: records from the source replace the
		// doubted ones.
		writer := newSource(t, srv.Client(), Options{})
		mustPut(t, writer, rec("acme", entitlement.StatusActive, digestA))
		eventually(t, "acme served from Redis again", func() bool {
			_, o, _ := c.Get(context.Background(), keys[0])
			return o == entitlement.CacheHit || o == entitlement.CacheMiss
		})
		// A deletion it announces is believed at once.
		if err := writer.Delete(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "acme unknown after its deletion was announced", func() bool {
			for _, k := range keys {
				if _, err := c.Lookup(context.Background(), k); !errors.Is(err, entitlement.ErrNotFound) {
					return false
				}
			}
			return true
		})
	})
}

// pingsSeen is how many PINGs srv has been sent, answered or refused.
func pingsSeen(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	info, err := srv.Client().Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		stats, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_ping:")
		if !ok {
			continue
		}
		for _, kv := range strings.Split(stats, ",") {
			k, v, _ := strings.Cut(kv, "=")
			if k == "calls" || k == "rejected_calls" {
				i, _ := strconv.Atoi(v)
				n += i
			}
		}
	}
	return n
}

// TestMissedDeletionIsBelieved: a deletion or key revocation a replica never
// heard of (it was published while the subscription was down; Revalidate
// stands in for the resync) is believed at the next lookup, because the
// writer set the dataset marker. A Redis that lost its data, marker
// included, or that is being replayed, is still doubted.
func TestMissedDeletionIsBelieved(t *testing.T) {
	acme, keyA, keyB := bySubject("acme"), byKey(digestA), byKey(digestB)
	tests := []struct {
		name   string
		change func(t *testing.T, srv *redistest.Server, w *Source)
		gone   []entitlement.Key // believed unknown at once
		served []entitlement.Key // still served (doubted)
	}{
		{"subject deleted", func(t *testing.T, _ *redistest.Server, w *Source) {
			if err := w.Delete(context.Background(), "acme"); err != nil {
				t.Fatal(err)
			}
		}, []entitlement.Key{acme, keyA, keyB}, nil},
		{"key revoked", func(t *testing.T, _ *redistest.Server, w *Source) {
			mustPut(t, w, rec("acme", entitlement.StatusActive, digestB))
		}, []entitlement.Key{keyA}, []entitlement.Key{acme, keyB}},
		{"redis emptied", func(t *testing.T, srv *redistest.Server, _ *Source) {
			if err := srv.Client().FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		}, nil, []entitlement.Key{acme, keyA, keyB}},
		{"redis emptied, replay under way", func(t *testing.T, srv *redistest.Server, w *Source) {
			if err := srv.Client().FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			mustPut(t, w, rec("initech", entitlement.StatusActive, digestC))
		}, nil, []entitlement.Key{acme, keyA, keyB}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			w := newSource(t, srv.Client(), Options{})
			mustPut(t, w, rec("acme", entitlement.StatusActive, digestA, digestB))
			// An earlier deletion set the marker, as in any live dataset.
			mustPut(t, w, rec("gone", entitlement.StatusActive))
			if err := w.Delete(context.Background(), "gone"); err != nil {
				t.Fatal(err)
			}
			src := newSource(t, srv.Client(), Options{Timeout: 150 * time.Millisecond})
			c := cache.New(src, cache.Options{TTL: time.Hour, NegativeTTL: time.Minute, StaleIfError: time.Hour, Timeout: time.Second})
			ctx := context.Background()
			for _, k := range []entitlement.Key{acme, keyA, keyB} {
				if _, err := c.Lookup(ctx, k); err != nil {
					t.Fatalf("warm %v: %v", k, err)
				}
			}
			tt.change(t, srv, w)
			c.Revalidate() // the resync after the missed message
			for _, k := range tt.gone {
				if e, o, err := c.Get(ctx, k); !errors.Is(err, entitlement.ErrNotFound) {
					t.Errorf("%v %s: %s %+v %v, want believed unknown", k.Kind, k.ID, o, e, err)
				}
			}
			for _, k := range tt.served {
				// Stale where a lookup timed out on a busy machine.
				if e, o, err := c.Get(ctx, k); err != nil || e.Subject != "acme" || (o != entitlement.CacheSuspectNotFound && o != entitlement.CacheStale && o != entitlement.CacheMiss) {
					t.Errorf("%v %s: %s %+v %v, want acme served", k.Kind, k.ID, o, e, err)
				}
			}
		})
	}
}
