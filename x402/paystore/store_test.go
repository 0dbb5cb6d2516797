package paystore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// harness is one store under the contract test.
type harness struct {
	store Store
	// replica is another handle on the same records (a second client for
	// Redis: another replica; the same Memory).
	replica func() Store
	future  time.Time // an Expires hours away for this store's clock
	past    time.Time // an Expires already passed
}

// testNow is the fake clock's time; Memory reads nothing else.
var testNow = time.Unix(1_800_000_000, 0)

const testAsset = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"

var prefixes atomic.Int64

// stores runs test against a Memory, a Redis and a Redis Cluster (one
// server each); fresh gives a harness on records of its own.
func stores(t *testing.T, test func(t *testing.T, fresh func() harness)) {
	t.Run("memory", func(t *testing.T) {
		test(t, func() harness {
			m := NewMemory(func() time.Time { return testNow }, 100)
			return harness{store: m, replica: func() Store { return m }, future: testNow.Add(time.Hour), past: testNow.Add(-time.Second)}
		})
	})
	redisHarness := func(newStore func(prefix string) Store) func() harness {
		return func() harness {
			prefix := fmt.Sprintf("t%d:", prefixes.Add(1))
			now := time.Now().Truncate(time.Millisecond)
			return harness{store: newStore(prefix), replica: func() Store { return newStore(prefix) },
				future: now.Add(time.Hour), past: now.Add(-time.Hour)}
		}
	}
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		test(t, redisHarness(func(prefix string) Store { return NewRedis(srv.Client(), prefix) }))
	})
	t.Run("redis-cluster", func(t *testing.T) {
		c := redistest.StartCluster(t, 3)
		test(t, redisHarness(func(prefix string) Store { return NewRedis(c.Client(), prefix) }))
	})
}

// record is a Pending record for nonce n, with payment id pid.
func record(h harness, n int, pid string) Record {
	payload := fmt.Sprintf("payload-%d", n)
	return Record{
		Key: KeyOf(testAsset, "0x857b06519E91e3A54538791bDbb0E22373e36b66", fmt.Sprintf("0x%064x", n)), PaymentID: pid,
		Digest: DigestOf(payload), State: Pending, Route: "paid", Subject: "agent", Payload: payload, Expires: h.future,
	}
}

// diff describes how got differs from want ("" when equal). LastAttempt
// is the store's clock (Redis: the server's), compared by the tests of it.
func diff(got, want Record) string {
	gotE, wantE := got.Expires, want.Expires
	got.Expires, want.Expires = time.Time{}, time.Time{}
	got.LastAttempt, want.LastAttempt = time.Time{}, time.Time{}
	switch {
	case got != want:
		return fmt.Sprintf("got  %+v\nwant %+v", got, want)
	case !gotE.Equal(wantE):
		return fmt.Sprintf("Expires: got %v, want %v", gotE, wantE)
	}
	return ""
}

func mustClaim(t *testing.T, s Store, rec Record) {
	t.Helper()
	if got, claimed, err := s.Claim(context.Background(), rec); err != nil || !claimed {
		t.Fatalf("Claim(%s) = %+v, %v, %v; want claimed", rec.Key, got, claimed, err)
	}
}

func mustGet(t *testing.T, s Store, key string) Record {
	t.Helper()
	got, found, err := s.Get(context.Background(), key)
	if err != nil || !found {
		t.Fatalf("Get(%s) = %v, %v; want a record", key, found, err)
	}
	return got
}

func mustFinish(t *testing.T, s Store, key string, st State, receipt, reason string) {
	t.Helper()
	if _, err := s.Finish(context.Background(), key, st, receipt, reason); err != nil {
		t.Fatalf("Finish(%s, %v) = %v", key, st, err)
	}
}

func unknownKeys(t *testing.T, s Store, n int) []string {
	t.Helper()
	recs, err := s.Unknowns(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, r := range recs {
		if r.State != Unknown {
			t.Errorf("Unknowns returned %s in state %v", r.Key, r.State)
		}
		keys = append(keys, r.Key)
	}
	return keys
}

func equalKeys(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStoreContract(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		run  func(t *testing.T, h harness)
	}{
		{"claim stores a pending record whatever state it is given", func(t *testing.T, h harness) {
			rec := record(h, 1, "pay-1")
			in := rec
			in.State, in.Attempts, in.Receipt, in.Reason = Settled, 7, "r", "x"
			mustClaim(t, h.store, in)
			if d := diff(mustGet(t, h.store, rec.Key), rec); d != "" {
				t.Error(d)
			}
		}},
		{"a second claim of the key returns the first record", func(t *testing.T, h harness) {
			first := record(h, 1, "")
			mustClaim(t, h.store, first)
			again := first
			again.Payload, again.Digest = "other", DigestOf("other")
			got, claimed, err := h.store.Claim(ctx, again)
			if err != nil || claimed {
				t.Fatalf("second Claim: claimed=%v err=%v; want the existing record", claimed, err)
			}
			if d := diff(got, first); d != "" {
				t.Error(d)
			}
		}},
		{"a payment id reused with another payload returns the first record", func(t *testing.T, h harness) {
			first := record(h, 1, "pay-1")
			mustClaim(t, h.store, first)
			other := record(h, 2, "pay-1")
			got, claimed, err := h.store.Claim(ctx, other)
			if err != nil || claimed {
				t.Fatalf("Claim with a used payment id: claimed=%v err=%v", claimed, err)
			}
			if d := diff(got, first); d != "" {
				t.Error(d)
			}
			if got.Digest == other.Digest {
				t.Error("the digests match: the caller could not tell the payloads apart")
			}
			if _, found, _ := h.store.Get(ctx, other.Key); found {
				t.Error("the refused record was stored")
			}
		}},
		{"records without a payment id do not collide", func(t *testing.T, h harness) {
			mustClaim(t, h.store, record(h, 1, ""))
			mustClaim(t, h.store, record(h, 2, ""))
		}},
		{"finish settled keeps the receipt and counts the attempt", func(t *testing.T, h harness) {
			rec := record(h, 1, "pay-1")
			mustClaim(t, h.store, rec)
			mustFinish(t, h.store, rec.Key, Settled, "receipt-1", "")
			want := rec
			want.State, want.Receipt, want.Attempts = Settled, "receipt-1", 1
			if d := diff(mustGet(t, h.store, rec.Key), want); d != "" {
				t.Error(d)
			}
			// A retry with the payment id gets the settled record.
			got, claimed, err := h.store.Claim(ctx, record(h, 9, "pay-1"))
			if err != nil || claimed || got.Receipt != "receipt-1" {
				t.Errorf("retry by payment id: %+v claimed=%v err=%v; want the settled record", got, claimed, err)
			}
		}},
		{"settled is final", func(t *testing.T, h harness) {
			rec := record(h, 1, "")
			mustClaim(t, h.store, rec)
			mustFinish(t, h.store, rec.Key, Settled, "receipt-1", "")
			mustFinish(t, h.store, rec.Key, Failed, "", "late refusal")
			mustFinish(t, h.store, rec.Key, Settled, "receipt-2", "")
			got := mustGet(t, h.store, rec.Key)
			if got.State != Settled || got.Receipt != "receipt-1" || got.Attempts != 1 {
				t.Errorf("got %v %q attempts %d; want settled receipt-1 attempts 1", got.State, got.Receipt, got.Attempts)
			}
		}},
		{"unknown, then settled, leaves the unknown list", func(t *testing.T, h harness) {
			rec := record(h, 1, "")
			mustClaim(t, h.store, rec)
			mustFinish(t, h.store, rec.Key, Unknown, "", "settlement_outcome_unknown")
			if got, want := unknownKeys(t, h.store, 10), []string{rec.Key}; !equalKeys(got, want) {
				t.Errorf("Unknowns = %v, want %v", got, want)
			}
			got := mustGet(t, h.store, rec.Key)
			if got.State != Unknown || got.Reason != "settlement_outcome_unknown" || got.Attempts != 1 {
				t.Errorf("got %+v", got)
			}
			mustFinish(t, h.store, rec.Key, Settled, "receipt", "")
			if got := unknownKeys(t, h.store, 10); len(got) != 0 {
				t.Errorf("Unknowns after settling = %v, want none", got)
			}
		}},
		{"unknowns come oldest attempt first, at most n", func(t *testing.T, h harness) {
			var keys []string
			for i := range 4 {
				rec := record(h, i, "")
				keys = append(keys, rec.Key)
				mustClaim(t, h.store, rec)
			}
			mustClaim(t, h.store, record(h, 10, "")) // pending: never listed
			for _, k := range keys[:3] {
				mustFinish(t, h.store, k, Unknown, "", "timeout")
			}
			mustFinish(t, h.store, keys[3], Failed, "", "insufficient_funds")
			if got, want := unknownKeys(t, h.store, 10), keys[:3]; !equalKeys(got, want) {
				t.Errorf("Unknowns = %v, want %v", got, want)
			}
			// Another inconclusive attempt sends the first to the back.
			mustFinish(t, h.store, keys[0], Unknown, "", "timeout")
			if got, want := unknownKeys(t, h.store, 2), []string{keys[1], keys[2]}; !equalKeys(got, want) {
				t.Errorf("Unknowns(2) = %v, want %v", got, want)
			}
			if got, want := unknownKeys(t, h.store, 10), []string{keys[1], keys[2], keys[0]}; !equalKeys(got, want) {
				t.Errorf("Unknowns(10) = %v, want %v", got, want)
			}
			if got := unknownKeys(t, h.store, 0); len(got) != 0 {
				t.Errorf("Unknowns(0) = %v", got)
			}
		}},
		{"finish of a missing record is ErrNotFound", func(t *testing.T, h harness) {
			if _, err := h.store.Finish(ctx, record(h, 1, "").Key, Settled, "r", ""); !errors.Is(err, ErrNotFound) {
				t.Errorf("Finish = %v, want ErrNotFound", err)
			}
		}},
		{"finish to pending is refused", func(t *testing.T, h harness) {
			rec := record(h, 1, "")
			mustClaim(t, h.store, rec)
			if _, err := h.store.Finish(ctx, rec.Key, Pending, "", ""); err == nil {
				t.Error("Finish(Pending) succeeded")
			}
		}},
		{"release forgets a pending claim and its payment id", func(t *testing.T, h harness) {
			rec := record(h, 1, "pay-1")
			mustClaim(t, h.store, rec)
			if err := h.store.Release(ctx, rec.Key); err != nil {
				t.Fatal(err)
			}
			if _, found, _ := h.store.Get(ctx, rec.Key); found {
				t.Fatal("released record still there")
			}
			mustClaim(t, h.store, record(h, 2, "pay-1")) // the id is free
			mustClaim(t, h.store, record(h, 1, ""))      // the key is free
			if err := h.store.Release(ctx, record(h, 3, "").Key); err != nil {
				t.Errorf("Release of a missing record = %v, want nil", err)
			}
		}},
		{"a released payment id does not lead to a later record under the key", func(t *testing.T, h harness) {
			rec := record(h, 1, "pay-1")
			mustClaim(t, h.store, rec)
			if err := h.store.Release(ctx, rec.Key); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, h.store, record(h, 1, "pay-2")) // the same authorization, presented again with another id
			mustClaim(t, h.store, record(h, 2, "pay-1")) // the released id is free
		}},
		{"release keeps settled, unknown and failed records", func(t *testing.T, h harness) {
			for i, st := range []State{Settled, Unknown, Failed} {
				rec := record(h, i, fmt.Sprintf("pay-%d", i))
				mustClaim(t, h.store, rec)
				mustFinish(t, h.store, rec.Key, st, "", "")
				if err := h.store.Release(ctx, rec.Key); !errors.Is(err, ErrNotPending) {
					t.Errorf("Release(%v) = %v, want ErrNotPending", st, err)
				}
				if got := mustGet(t, h.store, rec.Key); got.State != st {
					t.Errorf("after Release: state %v, want %v", got.State, st)
				}
				if _, claimed, _ := h.store.Claim(ctx, record(h, 100+i, rec.PaymentID)); claimed {
					t.Errorf("payment id of a %v record was claimed again", st)
				}
			}
		}},
		{"a record past its expiry is forgotten", func(t *testing.T, h harness) {
			rec := record(h, 1, "pay-1")
			rec.Expires = h.past
			mustClaim(t, h.store, rec)
			if _, found, _ := h.store.Get(ctx, rec.Key); found {
				t.Error("expired record found")
			}
			mustClaim(t, h.store, record(h, 2, "pay-1"))
			mustClaim(t, h.store, record(h, 1, ""))
		}},
		{"claims without a key or an expiry are refused", func(t *testing.T, h harness) {
			noKey := record(h, 1, "")
			noKey.Key = ""
			noExpiry := record(h, 2, "")
			noExpiry.Expires = time.Time{}
			for _, rec := range []Record{noKey, noExpiry} {
				if _, claimed, err := h.store.Claim(ctx, rec); err == nil || claimed {
					t.Errorf("Claim(%+v) = %v, %v; want an error", rec, claimed, err)
				}
			}
		}},
	}
	stores(t, func(t *testing.T, fresh func() harness) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) { tc.run(t, fresh()) })
		}
	})
}

// TestClaimConcurrent: many callers (replicas, for Redis) claim the same
// authorization, or the same payment id under different keys, at once:
// exactly one claims it, and every other sees the winner's record.
func TestClaimConcurrent(t *testing.T) {
	const callers, rounds = 16, 20
	cases := []struct {
		name string
		rec  func(h harness, round, i int) Record
	}{
		{"same key", func(h harness, round, i int) Record {
			r := record(h, round, "")
			r.Payload, r.Digest = fmt.Sprint("caller-", i), DigestOf(fmt.Sprint("caller-", i))
			return r
		}},
		{"same payment id", func(h harness, round, i int) Record {
			return record(h, round*callers+i, fmt.Sprint("pay-", round))
		}},
	}
	stores(t, func(t *testing.T, fresh func() harness) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				h := fresh()
				replicas := make([]Store, callers)
				for i := range replicas {
					replicas[i] = h.replica()
				}
				for round := range rounds {
					claimRace(t, callers, func(i int) (Store, Record) { return replicas[i], tc.rec(h, round, i) })
				}
			})
		}
	})
}

// claimRace has callers claim at once; exactly one must win, and the others
// see its record.
func claimRace(t *testing.T, callers int, claim func(i int) (Store, Record)) {
	t.Helper()
	var (
		wg       sync.WaitGroup
		start    = make(chan struct{})
		mu       sync.Mutex
		winners  []string
		existing = map[string]int{}
	)
	for i := range callers {
		s, rec := claim(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got, claimed, err := s.Claim(context.Background(), rec)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Errorf("caller %d: %v", i, err)
			case claimed:
				winners = append(winners, rec.Digest)
			default:
				existing[got.Digest]++
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d callers claimed it, want exactly 1", len(winners))
	}
	if got, want := existing[winners[0]], callers-1; got != want {
		t.Errorf("%d callers saw the winner's record, want %d (saw %v)", got, want, existing)
	}
}
