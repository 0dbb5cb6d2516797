// Package outboxtest is the behaviour table every usage.Outbox must pass.
// A store's test supplies an Open that makes a fresh, empty store.
package outboxtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// Config is what the table asks of a fresh store.
type Config struct {
	// MaxEvents is the bound; 0 for the store's default.
	MaxEvents int
}

// Open makes a fresh, empty store. reopen closes it and opens the same
// store again, as a restarted process would.
type Open func(t *testing.T, cfg Config) (ob usage.Outbox, reopen func() usage.Outbox)

// Event is the table's event number i: every field set, distinct per i.
func Event(i int) usage.Event {
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second)
	return usage.Event{
		ID:      usage.NewID(fmt.Sprintf("req-%d", i), "res-1"),
		Subject: "acme", Customer: "cus_123", Route: "chat", Meter: "llm_tokens",
		Units: int64(100 + i), Reserved: 500, Status: 200,
		Start: start, End: start.Add(1500 * time.Millisecond),
	}
}

// Events is Event(from) .. Event(to-1).
func Events(from, to int) []usage.Event {
	out := make([]usage.Event, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, Event(i))
	}
	return out
}

// IDs are the events' IDs.
func IDs(events []usage.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}

// Run checks a store's behaviour.
func Run(t *testing.T, open Open) {
	ctx := context.Background()

	t.Run("empty", func(t *testing.T) {
		ob, _ := open(t, Config{})
		got, err := ob.Pending(ctx, 10)
		if err != nil || len(got) != 0 {
			t.Fatalf("Pending = %v, %v; want none", got, err)
		}
		wantStats(t, ob, 0, false)
		if err := ob.Ack(ctx, []string{"unknown"}); err != nil {
			t.Fatalf("Ack(unknown) = %v, want nil", err)
		}
		if err := ob.Append(ctx, nil); err != nil {
			t.Fatalf("Append(nil) = %v", err)
		}
	})

	t.Run("append, pending oldest first, ack", func(t *testing.T) {
		ob, _ := open(t, Config{})
		for _, batch := range [][]usage.Event{Events(0, 3), Events(3, 4), Events(4, 7)} {
			mustAppend(t, ob, batch)
		}
		wantPending(t, ob, 5, Events(0, 5))
		wantPending(t, ob, 100, Events(0, 7))
		// Pending again, before Ack: the same events.
		wantPending(t, ob, 100, Events(0, 7))
		wantStats(t, ob, 7, true)

		if err := ob.Ack(ctx, append(IDs(Events(0, 2)), "unknown", Event(4).ID)); err != nil {
			t.Fatal(err)
		}
		want := append(Events(2, 4), Events(5, 7)...)
		wantPending(t, ob, 100, want)
		wantStats(t, ob, 4, true)
		if err := ob.Ack(ctx, IDs(want)); err != nil {
			t.Fatal(err)
		}
		wantPending(t, ob, 100, nil)
		wantStats(t, ob, 0, false)
	})

	t.Run("an ID is stored once", func(t *testing.T) {
		ob, _ := open(t, Config{})
		mustAppend(t, ob, Events(0, 3))
		// Waiting: again in another batch, and twice in one batch.
		mustAppend(t, ob, Events(1, 4))
		mustAppend(t, ob, []usage.Event{Event(5), Event(5), Event(0)})
		wantPending(t, ob, 100, append(Events(0, 4), Event(5)))
		wantStats(t, ob, 5, true)
		// Acknowledged, within the dedup window: not stored again.
		if err := ob.Ack(ctx, IDs(Events(0, 2))); err != nil {
			t.Fatal(err)
		}
		mustAppend(t, ob, Events(0, 2))
		wantPending(t, ob, 100, append(Events(2, 4), Event(5)))
		wantStats(t, ob, 3, true)
	})

	t.Run("the same ID with other fields is still the first event", func(t *testing.T) {
		ob, _ := open(t, Config{})
		mustAppend(t, ob, []usage.Event{Event(0)})
		other := Event(0)
		other.Units = 999
		mustAppend(t, ob, []usage.Event{other})
		wantPending(t, ob, 10, []usage.Event{Event(0)})
	})

	t.Run("full: stores none of the batch", func(t *testing.T) {
		ob, _ := open(t, Config{MaxEvents: 5})
		mustAppend(t, ob, Events(0, 3))
		if err := ob.Append(ctx, Events(3, 6)); !errors.Is(err, usage.ErrFull) {
			t.Fatalf("Append(3 more, bound 5) = %v, want ErrFull", err)
		}
		wantPending(t, ob, 100, Events(0, 3))
		wantStats(t, ob, 3, true)
		// Duplicates cost nothing: 2 new and 3 waiting fit exactly.
		mustAppend(t, ob, Events(0, 5))
		wantStats(t, ob, 5, true)
		// Full: waiting IDs are still accepted, one new is not.
		mustAppend(t, ob, Events(2, 4))
		if err := ob.Append(ctx, []usage.Event{Event(0), Event(9)}); !errors.Is(err, usage.ErrFull) {
			t.Fatalf("Append(1 more, full) = %v, want ErrFull", err)
		}
		wantPending(t, ob, 100, Events(0, 5))
		// A batch larger than the bound alone.
		if err := ob.Ack(ctx, IDs(Events(0, 5))); err != nil {
			t.Fatal(err)
		}
		if err := ob.Append(ctx, Events(10, 16)); !errors.Is(err, usage.ErrFull) {
			t.Fatalf("Append(6, empty, bound 5) = %v, want ErrFull", err)
		}
		wantStats(t, ob, 0, false)
		// Room again after Ack.
		mustAppend(t, ob, Events(10, 15))
		wantPending(t, ob, 100, Events(10, 15))
	})

	t.Run("concurrent appends", func(t *testing.T) {
		ob, _ := open(t, Config{})
		const writers, each = 16, 25
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Go(func() {
				// Writer w appends its own events one by one, and
				// overlaps the next writer's first events in a batch.
				for i := range each {
					if err := ob.Append(ctx, []usage.Event{Event(w*each + i)}); err != nil {
						errs <- err
						return
					}
				}
				next := (w + 1) % writers * each
				if err := ob.Append(ctx, Events(next, next+5)); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		got, err := ob.Pending(ctx, writers*each+10)
		if err != nil {
			t.Fatal(err)
		}
		gotIDs, wantIDs := IDs(got), IDs(Events(0, writers*each))
		slices.Sort(gotIDs)
		slices.Sort(wantIDs)
		if !slices.Equal(gotIDs, wantIDs) {
			t.Fatalf("pending: %d events, want the %d appended, once each", len(gotIDs), len(wantIDs))
		}
		// Each writer's own events stay in its order.
		pos := make(map[string]int, len(got))
		for i, e := range got {
			pos[e.ID] = i
		}
		for w := range writers {
			for i := 1; i < each; i++ {
				if pos[Event(w*each+i).ID] < pos[Event(w*each+i-1).ID] {
					t.Fatalf("writer %d: event %d before event %d", w, i, i-1)
				}
			}
		}
		wantStats(t, ob, writers*each, true)
	})

	t.Run("stats: oldest is the first waiting append", func(t *testing.T) {
		ob, _ := open(t, Config{})
		// Stores may keep milliseconds (a Redis stream ID does).
		t0 := time.Now().Truncate(time.Millisecond)
		mustAppend(t, ob, Events(0, 1))
		t1 := time.Now().Truncate(time.Millisecond)
		mustAppend(t, ob, Events(1, 2))
		t2 := time.Now()
		s, err := ob.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Backlog != 2 || s.Oldest.Before(t0) || s.Oldest.After(t1.Add(time.Millisecond)) {
			t.Fatalf("Stats = %+v, want backlog 2, oldest in [%v, %v]", s, t0, t1)
		}
		if err := ob.Ack(ctx, []string{Event(0).ID}); err != nil {
			t.Fatal(err)
		}
		s, err = ob.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Backlog != 1 || s.Oldest.Before(t1) || s.Oldest.After(t2) {
			t.Fatalf("Stats after Ack = %+v, want backlog 1, oldest in [%v, %v]", s, t1, t2)
		}
	})

	t.Run("events survive reopening", func(t *testing.T) {
		ob, reopen := open(t, Config{})
		mustAppend(t, ob, Events(0, 4))
		if err := ob.Ack(ctx, []string{Event(1).ID}); err != nil {
			t.Fatal(err)
		}
		ob = reopen()
		want := []usage.Event{Event(0), Event(2), Event(3)}
		wantPending(t, ob, 10, want)
		wantStats(t, ob, 3, true)
		// Still de-duplicated, waiting or acknowledged.
		mustAppend(t, ob, Events(0, 4))
		wantPending(t, ob, 10, want)
	})
}

func mustAppend(t *testing.T, ob usage.Outbox, events []usage.Event) {
	t.Helper()
	if err := ob.Append(context.Background(), events); err != nil {
		t.Fatalf("Append(%d events) = %v", len(events), err)
	}
}

// wantPending checks Pending(n) returns want, in order, every field equal.
func wantPending(t *testing.T, ob usage.Outbox, n int, want []usage.Event) {
	t.Helper()
	got, err := ob.Pending(context.Background(), n)
	if err != nil {
		t.Fatalf("Pending(%d) = %v", n, err)
	}
	if g, w := asJSON(got), asJSON(want); g != w {
		t.Fatalf("Pending(%d):\n got  %s\n want %s", n, g, w)
	}
}

func wantStats(t *testing.T, ob usage.Outbox, backlog int, oldest bool) {
	t.Helper()
	s, err := ob.Stats(context.Background())
	if err != nil {
		t.Fatalf("Stats = %v", err)
	}
	if s.Backlog != backlog || s.Oldest.IsZero() == oldest {
		t.Fatalf("Stats = %+v, want backlog %d, oldest set %v", s, backlog, oldest)
	}
}

// asJSON is events as one line per event, to compare every field and show
// a difference readably.
func asJSON(events []usage.Event) string {
	var s string
	for _, e := range events {
		b, _ := json.Marshal(e)
		s += "\n   " + string(b)
	}
	return s
}
