package paystore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func memRecord(n int, expires time.Time) Record {
	return Record{Key: fmt.Sprintf("asset/from/%d", n), Payload: "p", Digest: DigestOf("p"), Expires: expires}
}

// TestMemoryBounded: a full store drops expired records first, then the
// finished one expiring soonest, and refuses with ErrFull rather than drop
// a live Pending or Unknown record.
func TestMemoryBounded(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		// fill puts two records into a store of two; the third Claim follows.
		fill        func(t *testing.T, m *Memory, c *fakeClock)
		wantErr     error
		wantDropped string // key gone after the third Claim
		wantKept    []string
	}{
		{
			name: "pending and unknown are never dropped",
			fill: func(t *testing.T, m *Memory, c *fakeClock) {
				mustClaim(t, m, memRecord(1, c.t.Add(time.Hour)))
				mustClaim(t, m, memRecord(2, c.t.Add(time.Minute)))
				mustFinish(t, m, memRecord(2, time.Time{}).Key, Unknown, "", "timeout")
			},
			wantErr:  ErrFull,
			wantKept: []string{"asset/from/1", "asset/from/2"},
		},
		{
			name: "an expired pending record goes first",
			fill: func(t *testing.T, m *Memory, c *fakeClock) {
				mustClaim(t, m, memRecord(1, c.t.Add(time.Minute)))
				mustClaim(t, m, memRecord(2, c.t.Add(time.Hour)))
				mustFinish(t, m, memRecord(2, time.Time{}).Key, Settled, "r", "")
				c.advance(time.Minute)
			},
			wantDropped: "asset/from/1",
			wantKept:    []string{"asset/from/2"},
		},
		{
			name: "then the finished record expiring soonest",
			fill: func(t *testing.T, m *Memory, c *fakeClock) {
				mustClaim(t, m, memRecord(1, c.t.Add(2*time.Hour)))
				mustClaim(t, m, memRecord(2, c.t.Add(time.Minute)))
				mustFinish(t, m, memRecord(1, time.Time{}).Key, Failed, "", "insufficient_funds")
			},
			wantDropped: "asset/from/1",
			wantKept:    []string{"asset/from/2"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &fakeClock{t: testNow}
			m := NewMemory(c.now, 2)
			tc.fill(t, m, c)
			_, claimed, err := m.Claim(ctx, memRecord(3, c.t.Add(time.Hour)))
			if !errors.Is(err, tc.wantErr) || claimed != (tc.wantErr == nil) {
				t.Fatalf("third Claim: claimed=%v err=%v, want err %v", claimed, err, tc.wantErr)
			}
			if tc.wantDropped != "" {
				if _, found, _ := m.Get(ctx, tc.wantDropped); found {
					t.Errorf("%s still there", tc.wantDropped)
				}
			}
			for _, k := range tc.wantKept {
				mustGet(t, m, k)
			}
			if got := m.Len(); got > 2 {
				t.Errorf("Len = %d, over the bound 2", got)
			}
		})
	}
}

// TestMemoryExpiry: a record is forgotten when the clock reaches Expires,
// and an Unknown one leaves the Unknowns list with it.
func TestMemoryExpiry(t *testing.T) {
	ctx := context.Background()
	c := &fakeClock{t: testNow}
	m := NewMemory(c.now, 10)
	rec := memRecord(1, testNow.Add(time.Minute))
	rec.PaymentID = "pay-1"
	mustClaim(t, m, rec)
	mustFinish(t, m, rec.Key, Unknown, "", "timeout")
	c.advance(time.Minute - time.Nanosecond)
	if got := unknownKeys(t, m, 10); len(got) != 1 {
		t.Fatalf("before expiry: Unknowns = %v, want the record", got)
	}
	c.advance(time.Nanosecond)
	if got := unknownKeys(t, m, 10); len(got) != 0 {
		t.Errorf("at expiry: Unknowns = %v, want none", got)
	}
	if _, found, _ := m.Get(ctx, rec.Key); found {
		t.Error("at expiry: Get found it")
	}
	other := memRecord(2, c.t.Add(time.Hour))
	other.PaymentID = "pay-1"
	mustClaim(t, m, other)
	if got, want := m.Len(), 1; got != want {
		t.Errorf("Len = %d, want %d", got, want)
	}
}

func BenchmarkMemoryClaim(b *testing.B) {
	ctx := context.Background()
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = KeyOf("0x036cbd53842c5426634e7929541ec2318f3dcf7e", "0x857b06519e91e3a54538791bdbb0e22373e36b66", fmt.Sprintf("0x%064x", i))
	}
	rec := Record{PaymentID: "", Digest: DigestOf("p"), Payload: "p", Route: "paid", Expires: testNow.Add(time.Hour)}
	b.Run("new", func(b *testing.B) {
		m := NewMemory(func() time.Time { return testNow }, len(keys))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			rec.Key = keys[i%len(keys)]
			if _, claimed, err := m.Claim(ctx, rec); err != nil || !claimed {
				b.Fatal(claimed, err)
			}
			if err := m.Release(ctx, rec.Key); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("replay", func(b *testing.B) {
		m := NewMemory(func() time.Time { return testNow }, len(keys))
		for _, k := range keys {
			rec.Key = k
			mustClaimB(b, m, rec)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			rec.Key = keys[i%len(keys)]
			if _, claimed, err := m.Claim(ctx, rec); err != nil || claimed {
				b.Fatal(claimed, err)
			}
			i++
		}
	})
	b.Run("full-evicting", func(b *testing.B) {
		// Every claim finds the store full of settled records and drops one.
		m := NewMemory(func() time.Time { return testNow }, 1024)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			rec.Key = fmt.Sprint(i)
			rec.Expires = testNow.Add(time.Hour + time.Duration(i))
			mustClaimB(b, m, rec)
			if _, err := m.Finish(ctx, rec.Key, Settled, "r", ""); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

func mustClaimB(b *testing.B, s Store, rec Record) {
	if _, claimed, err := s.Claim(context.Background(), rec); err != nil || !claimed {
		b.Fatal(claimed, err)
	}
}
