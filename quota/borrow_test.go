package quota

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
	"unsafe"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// These tests hold the Store contract that keys and groups are borrowed:
// the Check path passes keys that alias a buffer it overwrites once the
// call returns, so a store that kept the string itself would find its
// counter renamed under it. Each test spends with borrowed strings,
// scribbles over their memory, and checks the counters under the real
// names.

// borrowed is a key, and optionally a group, in one buffer the test
// overwrites, as the Check path reuses its request's key buffer.
type borrowed struct {
	buf        []byte
	group, key string // alias buf
	realGroup  string // group's value before scribble
	realKey    string // key's value before scribble
}

// borrow builds group and Key(subject, quota, start) into one buffer with
// AppendKey and returns strings that alias it.
func borrow(group, subject, quota string, start time.Time) *borrowed {
	buf := append(make([]byte, 0, 128), group...)
	buf = AppendKey(buf, subject, quota, start)
	b := &borrowed{buf: buf, realGroup: group, realKey: Key(subject, quota, start)}
	s := unsafe.String(unsafe.SliceData(buf), len(buf))
	b.group, b.key = s[:len(group)], s[len(group):]
	if b.key != b.realKey {
		panic(fmt.Sprintf("borrowed key %q, want %q", b.key, b.realKey))
	}
	return b
}

// scribble overwrites the buffer, as the next Check does.
func (b *borrowed) scribble() {
	for i := range b.buf {
		b.buf[i] = 'X'
	}
}

// TestMemoryKeepsNoBorrowedKey: every call that makes a counter (Spend,
// Adjust, TopUp) stores a copy of its key.
func TestMemoryKeepsNoBorrowedKey(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	reset := t0.Add(time.Hour)
	ctx := context.Background()
	cases := []struct {
		name string
		// make starts the counter with the borrowed key.
		make func(m *Memory, group, key string) error
		want int64 // the counter's use after make and one more spend of 1
	}{
		{"spend", func(m *Memory, group, key string) error {
			_, err := m.Spend(ctx, group, []Item{{Key: key, Cost: 4, Limit: 100, Reset: reset}}, make([]int64, 1))
			return err
		}, 5},
		{"adjust", func(m *Memory, group, key string) error {
			_, err := m.Adjust(ctx, group, key, 7, reset)
			return err
		}, 8},
		{"top-up", func(m *Memory, group, key string) error {
			_, err := m.TopUp(ctx, group, key, 3, reset)
			return err
		}, -2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := NewMemory(func() time.Time { return t0 })
			b := borrow("acme", "acme", "requests", t0)
			if err := c.make(m, b.group, b.key); err != nil {
				t.Fatal(err)
			}
			b.scribble()
			used := make([]int64, 1)
			d, err := m.Spend(ctx, b.realGroup, []Item{{Key: b.realKey, Cost: 1, Limit: 100, Reset: reset}}, used)
			if err != nil || d >= 0 {
				t.Fatalf("spend: denied %d, err %v", d, err)
			}
			if got := used[0]; got != c.want {
				t.Errorf("use after the caller reused the key's memory = %d, want %d", got, c.want)
			}
			if got := m.Used(b.realGroup, b.realKey); got != c.want {
				t.Errorf("Used = %d, want %d", got, c.want)
			}
		})
	}
}

// TestLeasedKeepsNoBorrowedKey: a lease (made by a round trip, or adopted
// from a reply that came after its requester gave up) and a subject's
// lease group keep copies of their names.
func TestLeasedKeepsNoBorrowedKey(t *testing.T) {
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	reset := t0.Add(time.Hour)
	ctx := context.Background()
	newStore := func(timeout time.Duration) *Leased {
		return NewLeased(LeasedOptions{Client: c, Prefix: fmt.Sprintf("borrow%d:", testPrefixes.Add(1)), LeaseSize: 10,
			Timeout: timeout, LateReply: 10 * time.Minute, Now: func() time.Time { return t0 }})
	}
	spend := func(s *Leased, group, key string) (int64, error) {
		used := make([]int64, 1)
		d, err := s.Spend(ctx, group, []Item{{Key: key, Cost: 1, Limit: 100, Reset: reset}}, used)
		if err == nil && d >= 0 {
			err = errRefused
		}
		return used[0], err
	}

	cases := []struct {
		name       string
		groupToo   bool // borrow the group as well as the key
		borrowedUp bool // the spend with borrowed names is answered
	}{
		{"key", false, true},
		{"group and key", true, true},
		{"key of a late reply", false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(time.Minute)
			if !tc.borrowedUp {
				s = newStore(100 * time.Millisecond)
				// Open the pooled connection and load the script first, so
				// that the paused call is the script itself.
				if _, err := spend(s, "warm", "w"); err != nil {
					t.Fatal(err)
				}
			}
			b := borrow("acme", "acme", "requests", t0)
			group := b.realGroup
			if tc.groupToo {
				group = b.group
			}
			if tc.borrowedUp {
				// One round trip: a lease of 10, 1 spent.
				if _, err := spend(s, group, b.key); err != nil {
					t.Fatal(err)
				}
				b.scribble()
			} else {
				srv.Pause()
				_, err := spend(s, group, b.key)
				b.scribble() // before Redis answers: the reply finds the buffer reused
				srv.Resume()
				if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("spend with redis paused: %v, want ErrUnavailable", err)
				}
				waitLate(t, s)
				if got := s.Stats().Adopted; got != 10 {
					t.Fatalf("adopted %d units, want the 10 granted", got)
				}
			}
			trips := s.Stats().RoundTrips
			// The lease covers the next spend, found under the real names.
			got, err := spend(s, b.realGroup, b.realKey)
			if err != nil {
				t.Fatal(err)
			}
			want := int64(2)
			if !tc.borrowedUp {
				want = 1 // the first spend failed; the adopted lease pays this one
			}
			if got != want {
				t.Errorf("use after the caller reused the key's memory = %d, want %d", got, want)
			}
			if n := s.Stats().RoundTrips - trips; n != 0 {
				t.Errorf("%d round trips for a spend the lease covers, want 0", n)
			}
			if got, want := held(s, b.realGroup, b.realKey), int64(10-want); got != want {
				t.Errorf("held %d units, want %d", got, want)
			}
		})
	}
}

// TestResilientKeepsNoBorrowedKey: what a Resilient store owes Redis
// during an outage (local spends, adjustments in the journal, queued
// top-ups) keeps copies of its names, and lands on the right counters
// when Redis answers again.
func TestResilientKeepsNoBorrowedKey(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	clk := &testClock{t: time.Now()}
	reset := clk.Now().Add(time.Hour)
	ctx := context.Background()
	s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("borrowres%d:", testPrefixes.Add(1)),
		LeaseSize: 1, Timeout: 2 * time.Second, LateReply: 10 * time.Minute, Now: clk.Now})
	r := NewResilient(s, NewMemory(clk.Now), ResilientOptions{RetryEvery: time.Second, FailAfter: 1, Now: clk.Now})
	// Only the spend under test fails open: a probe that fell back would
	// be copied too.
	spend := func(group, key string, cost int64, failOpen bool) error {
		d, err := r.Spend(ctx, group, []Item{{Key: key, Cost: cost, Limit: 1000, Reset: reset, FailOpen: failOpen}}, make([]int64, 1))
		if err == nil && d >= 0 {
			err = errRefused
		}
		return err
	}
	if err := spend("warm", "w", 1, false); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	ops := []struct {
		name string
		do   func(group, key string) error
		want int64 // the counter in Redis once copied
	}{
		{"local spend", func(group, key string) error { return spend(group, key, 4, true) }, 4},
		{"adjustment", func(group, key string) error {
			_, err := r.Adjust(ctx, group, key, 6, reset)
			return err
		}, 6},
		{"top-up", func(group, key string) error {
			_, err := r.TopUp(ctx, group, key, 9, reset)
			return err
		}, -9},
	}
	bs := make([]*borrowed, len(ops))
	for i, op := range ops {
		bs[i] = borrow(fmt.Sprint("sub", i), fmt.Sprint("sub", i), "requests", clk.Now())
		if err := op.do(bs[i].group, bs[i].key); err != nil {
			t.Fatalf("%s with redis down: %v", op.name, err)
		}
		if i == 0 && r.Mode() != ModeDegraded {
			t.Fatalf("mode %s after a failed round trip, want %s", r.Mode(), ModeDegraded)
		}
		bs[i].scribble()
	}

	srv.Restart()
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatalf("still %s after %d tries", r.Mode(), i)
		}
		clk.Add(time.Second)
		if spend("probe", fmt.Sprint("probe", i), 1, false) == nil && r.Mode() == ModePrimary {
			break
		}
	}
	r.WaitWriteBack()
	for i, op := range ops {
		if got := redisUsed(t, c, s, bs[i].realGroup, bs[i].realKey); got != op.want {
			t.Errorf("%s: counter in redis = %d, want %d", op.name, got, op.want)
		}
	}
}
