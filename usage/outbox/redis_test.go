package outbox

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/internal/redistest"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/usage/outbox/outboxtest"
)

// tableOpen runs the table against one Redis (or cluster), each store under
// its own prefix.
func tableOpen(client redis.UniversalClient) outboxtest.Open {
	var n atomic.Int32
	return func(t *testing.T, cfg outboxtest.Config) (usage.Outbox, func() usage.Outbox) {
		opts := RedisOptions{Prefix: fmt.Sprintf("{tbl%d}:", n.Add(1)), MaxEvents: cfg.MaxEvents, Consumer: "c1"}
		return NewRedis(client, opts), func() usage.Outbox { return NewRedis(client, opts) }
	}
}

func TestRedisTable(t *testing.T) {
	outboxtest.Run(t, tableOpen(redistest.Start(t).Client()))
}

func TestRedisClusterTable(t *testing.T) {
	outboxtest.Run(t, tableOpen(redistest.StartCluster(t, 3).Client()))
}

func ids(events []usage.Event) []string { return outboxtest.IDs(events) }

// While both are alive, two consumers never hold the same event; when one
// stops reading, the other takes its events after ClaimIdle.
func TestRedisConsumers(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	// Two replicas: two clients, two consumer names, one group.
	a := NewRedis(srv.Client(), RedisOptions{Consumer: "a", ClaimIdle: time.Hour})
	b := NewRedis(srv.Client(), RedisOptions{Consumer: "b", ClaimIdle: time.Hour})
	all := outboxtest.Events(0, 20)
	if err := a.Append(ctx, all[:10]); err != nil {
		t.Fatal(err)
	}
	if err := b.Append(ctx, all[10:]); err != nil {
		t.Fatal(err)
	}
	pending := func(ob *Redis, n int) []string {
		t.Helper()
		got, err := ob.Pending(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		return ids(got)
	}
	gotA := pending(a, 8)
	gotB := pending(b, 100)
	if !slices.Equal(gotA, ids(all[:8])) || !slices.Equal(gotB, ids(all[8:])) {
		t.Fatalf("a got %v\nb got %v\nwant the first 8 and the other 12", gotA, gotB)
	}
	// Asked again, each gets its own again, and nothing of the other's.
	for range 3 {
		if got := pending(a, 100); !slices.Equal(got, gotA) {
			t.Fatalf("a again: %v, want %v", got, gotA)
		}
		if got := pending(b, 100); !slices.Equal(got, gotB) {
			t.Fatalf("b again: %v, want %v", got, gotB)
		}
	}
	// b acknowledges some; a cannot see them anyway.
	if err := b.Ack(ctx, gotB[:2]); err != nil {
		t.Fatal(err)
	}
	gotB = gotB[2:]

	// a stops reading (dies). b, with a short ClaimIdle, takes a's events
	// once they have been idle that long, keeping its own.
	bClaims := NewRedis(srv.Client(), RedisOptions{Consumer: "b", ClaimIdle: 20 * time.Millisecond})
	want := append(slices.Clone(gotA), gotB...)
	var got []string
	waitFor(t, "b to take a's events", func() bool {
		got = pending(bClaims, 100)
		return len(got) == len(want)
	})
	if !slices.Equal(got, want) {
		t.Fatalf("b after claiming: %v\nwant (oldest first) %v", got, want)
	}
	// a, back, finds nothing of its own: its events are b's now.
	aBack := NewRedis(srv.Client(), RedisOptions{Consumer: "a", ClaimIdle: time.Hour})
	if got := pending(aBack, 100); len(got) != 0 {
		t.Fatalf("a after b claimed: %v, want none", got)
	}
	// A late Ack from a (it had exported them) still removes them.
	if err := aBack.Ack(ctx, gotA); err != nil {
		t.Fatal(err)
	}
	if got := pending(b, 100); !slices.Equal(got, gotB) {
		t.Fatalf("b after a's late Ack: %v, want %v", got, gotB)
	}
	s, err := b.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Backlog != len(gotB) {
		t.Fatalf("backlog %d, want %d", s.Backlog, len(gotB))
	}
}

// A waiting event's ID key has no TTL (it is remembered as long as the
// event waits); after Ack it lasts DedupWindow, or goes at once with none.
func TestRedisDedupKeys(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client()
	tests := []struct {
		name   string
		window time.Duration
		want   string // what the key's TTL is after Ack
	}{
		{"window", time.Hour, "in (0, 1h]"},
		{"default window", 0, "in (0, 15m]"},
		{"no window", -1, "gone"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ob := NewRedis(c, RedisOptions{Prefix: fmt.Sprintf("{dedup%d}:", i), DedupWindow: tt.window})
			e := outboxtest.Event(0)
			if err := ob.Append(ctx, []usage.Event{e}); err != nil {
				t.Fatal(err)
			}
			key := ob.idKey(e.ID)
			if ttl := c.PTTL(ctx, key).Val(); ttl != -1 {
				t.Fatalf("waiting key TTL = %v, want none (-1)", ttl)
			}
			if err := ob.Ack(ctx, []string{e.ID}); err != nil {
				t.Fatal(err)
			}
			ttl := c.PTTL(ctx, key).Val()
			window := ob.opts.DedupWindow
			got := ttl > 0 && ttl <= window
			if tt.window < 0 {
				got = ttl == -2 // no key
			}
			if !got {
				t.Fatalf("key TTL after Ack = %v, want %s", ttl, tt.want)
			}
			if n := c.XLen(ctx, ob.stream).Val(); n != 0 {
				t.Fatalf("stream length %d after Ack, want 0 (XDEL)", n)
			}
			// Re-appended: ignored within the window, stored without one.
			if err := ob.Append(ctx, []usage.Event{e}); err != nil {
				t.Fatal(err)
			}
			want := int64(0)
			if tt.window < 0 {
				want = 1
			}
			if n := c.XLen(ctx, ob.stream).Val(); n != want {
				t.Fatalf("stream length %d after re-append, want %d", n, want)
			}
		})
	}
}

// Redis restarted empty (no persistence): the group is made again and
// Pending works; an Append while Redis is down fails with an error.
func TestRedisRestart(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	ob := NewRedis(srv.Client(), RedisOptions{Consumer: "a"})
	if err := ob.Append(ctx, outboxtest.Events(0, 2)); err != nil {
		t.Fatal(err)
	}
	if got, err := ob.Pending(ctx, 10); err != nil || len(got) != 2 {
		t.Fatalf("Pending = %d events, %v; want 2", len(got), err)
	}
	srv.Kill()
	// The client retries its dials; the caller's deadline cuts that short.
	down, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := ob.Append(down, outboxtest.Events(2, 3)); err == nil {
		t.Fatal("Append with Redis down succeeded")
	}
	if _, err := ob.Pending(down, 10); err == nil {
		t.Fatal("Pending with Redis down succeeded")
	}
	srv.Restart()
	if err := ob.Append(ctx, outboxtest.Events(2, 3)); err != nil {
		t.Fatal(err)
	}
	got, err := ob.Pending(ctx, 10)
	if err != nil {
		t.Fatalf("Pending after an empty restart: %v", err)
	}
	if !slices.Equal(ids(got), ids(outboxtest.Events(2, 3))) {
		t.Fatalf("Pending after restart = %v, want event 2", ids(got))
	}
}

// An entry deleted by hand while pending (nothing to export) is dropped
// from the consumer's pending list, not handed out forever.
func TestRedisDeletedPendingEntry(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client()
	ob := NewRedis(c, RedisOptions{Consumer: "a"})
	if err := ob.Append(ctx, outboxtest.Events(0, 2)); err != nil {
		t.Fatal(err)
	}
	if got, err := ob.Pending(ctx, 10); err != nil || len(got) != 2 {
		t.Fatalf("Pending = %d events, %v; want 2", len(got), err)
	}
	first, err := c.XRangeN(ctx, ob.stream, "-", "+", 1).Result()
	if err != nil || len(first) != 1 {
		t.Fatalf("XRANGE = %v, %v", first, err)
	}
	if err := c.XDel(ctx, ob.stream, first[0].ID).Err(); err != nil {
		t.Fatal(err)
	}
	// Pending(1): the deleted entry, first in the list, does not count.
	got, err := ob.Pending(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(got), ids(outboxtest.Events(1, 2))) {
		t.Fatalf("Pending = %v, want event 1 alone", ids(got))
	}
	p, err := c.XPending(ctx, ob.stream, DefaultGroup).Result()
	if err != nil {
		t.Fatal(err)
	}
	if p.Count != 1 {
		t.Fatalf("%d entries pending in the group, want 1", p.Count)
	}
}
