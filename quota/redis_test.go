package quota

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// fastClient fails within about DefaultTimeout, as production should.
func fastClient(t testing.TB, srv *redistest.Server) *redis.Client {
	c := redis.NewClient(RedisOptions(srv.Addr()))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var testPrefixes atomic.Int64

// newTestLeased returns a Leased store on its own key prefix.
func newTestLeased(c redis.UniversalClient, leaseSize int64, now func() time.Time) *Leased {
	return NewLeased(LeasedOptions{
		Client:    c,
		Prefix:    fmt.Sprintf("test%d:", testPrefixes.Add(1)),
		LeaseSize: leaseSize,
		Timeout:   time.Second,
		Now:       now,
	})
}

func TestLeasedStore(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	for _, size := range []int64{1, 10} {
		t.Run(fmt.Sprintf("lease=%d", size), func(t *testing.T) {
			testStoreBehaviour(t, func(t *testing.T, now func() time.Time) Store {
				return newTestLeased(c, size, now)
			})
		})
	}
}

// scriptCalls is how many scripts the server has run, from INFO commandstats.
func scriptCalls(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	var n int64
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "cmdstat_eval:") && !strings.HasPrefix(line, "cmdstat_evalsha:") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(line[strings.IndexByte(line, ':')+1:], "calls="), ",")
		v, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		n += v
	}
	return n
}

// held is how many units s holds unspent for group's key.
func held(s *Leased, group, key string) int64 {
	g := s.shards[maphash.String(s.seed, group)%leaseShards].acquire(group, s.now())
	defer g.refs.Add(-1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if l := g.leases[key]; l != nil {
		return l.avail
	}
	return 0
}

// redisUsed is the counter's u in Redis.
func redisUsed(t *testing.T, c *redis.Client, s *Leased, group, key string) int64 {
	t.Helper()
	v, err := c.HGet(context.Background(), s.redisKey(group, key), "u").Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatalf("HGET: %v", err)
	}
	return v
}

func TestLeasedExhaustedCachedLocally(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	s := newTestLeased(c, 10, clk.Now)
	ctx := context.Background()
	item := func(reset time.Duration) []Item {
		return []Item{{Key: "acme/requests", Cost: 1, Limit: 5, Reset: clk.Now().Truncate(time.Minute).Add(reset)}}
	}
	used := make([]int64, 1)
	redisNow := func() time.Time {
		t.Helper()
		now, err := c.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		return now
	}
	before := redisNow()
	for i := range 5 {
		if d, err := s.Spend(ctx, "acme", item(time.Minute), used); d != -1 || err != nil {
			t.Fatalf("spend %d: denied=%d err=%v", i, d, err)
		}
	}
	after := redisNow()

	calls0, st0 := scriptCalls(t, c), s.Stats()
	for i := range 100 {
		d, err := s.Spend(ctx, "acme", item(time.Minute), used)
		if d != 0 || err != nil || used[0] != 5 {
			t.Fatalf("spend %d after exhaustion: denied=%d used=%v err=%v, want denied=0 used=[5]", i, d, used, err)
		}
	}
	if got := scriptCalls(t, c) - calls0; got != 0 {
		t.Errorf("redis ran %d scripts while the counter was known spent, want 0", got)
	}
	st := s.Stats()
	if got := st.CachedRefusals - st0.CachedRefusals; got != 100 {
		t.Errorf("cached refusals = %d, want 100", got)
	}
	if st.RoundTrips != st0.RoundTrips {
		t.Errorf("round trips went from %d to %d while exhausted", st0.RoundTrips, st.RoundTrips)
	}

	// The counter lives in Redis until its window ends, plus the slack: its
	// expiry was set, by Redis's clock, between before and after.
	exp, err := c.PExpireTime(ctx, s.redisKey("acme", "acme/requests")).Result()
	ttl := time.Minute + defaultSlack
	lo, hi := before.Add(ttl).Truncate(time.Millisecond), after.Add(ttl+time.Millisecond-1).Truncate(time.Millisecond)
	if at := time.UnixMilli(int64(exp / time.Millisecond)); err != nil || at.Before(lo) || at.After(hi) {
		t.Errorf("PEXPIRETIME = %v (err %v), want %v after a time between %v and %v", at, err, ttl, before, after)
	}

	clk.Add(time.Minute) // the window ends
	d, err := s.Spend(ctx, "acme", item(time.Minute), used)
	if d != -1 || err != nil || used[0] != 1 {
		t.Fatalf("spend after reset: denied=%d used=%v err=%v, want allowed with used=[1]", d, used, err)
	}
	if got := scriptCalls(t, c) - calls0; got != 1 {
		t.Errorf("redis ran %d scripts after the reset, want 1 (a new lease)", got)
	}
}

// TestLeasedMultiReplica checks the documented admission bound with three
// replicas racing on one counter.
func TestLeasedMultiReplica(t *testing.T) {
	const (
		replicas  = 3
		workers   = 8
		perWorker = 200
		limit     = 1000
		leaseSize = 10
		// Admitted ≥ N − (c−1) − (R−1)(L−1), with c = 1.
		floor = limit - (replicas-1)*(leaseSize-1)
	)
	srv := redistest.Start(t)
	clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	items := []Item{{Key: "acme/requests", Cost: 1, Limit: limit, Reset: clk.Now().Add(time.Hour)}}
	prefix := fmt.Sprintf("multi%d:", testPrefixes.Add(1))
	stores := make([]*Leased, replicas)
	for i := range stores {
		// Timeouts far past any round trip: a busy machine must not turn
		// into errors here (TestLeasedMultiReplicaSlowRedis is about those).
		stores[i] = NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: prefix, LeaseSize: leaseSize, Timeout: time.Minute, Now: clk.Now})
	}

	var admitted [replicas]atomic.Int64
	var wg sync.WaitGroup
	for r, s := range stores {
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				used := make([]int64, 1)
				for range perWorker {
					d, err := s.Spend(context.Background(), "acme", items, used)
					if err != nil {
						t.Error(err)
						return
					}
					if d < 0 {
						admitted[r].Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()

	var total, unspent int64
	var st LeasedStats
	for r, s := range stores {
		total += admitted[r].Load()
		unspent += held(s, "acme", items[0].Key)
		x := s.Stats()
		st.RoundTrips += x.RoundTrips
		st.Local += x.Local
		st.CachedRefusals += x.CachedRefusals
		t.Logf("replica %d: admitted %d, holds %d, %+v", r, admitted[r].Load(), held(s, "acme", items[0].Key), x)
	}
	if total > limit || total < floor {
		t.Errorf("admitted %d, want within [%d, %d]", total, floor, limit)
	}
	// Every unit Redis handed out was either spent or is still held.
	if got := redisUsed(t, srv.Client(), stores[0], "acme", items[0].Key); got != total+unspent {
		t.Errorf("redis counter %d, want admitted %d + held %d", got, total, unspent)
	}
	spends := uint64(replicas * workers * perWorker)
	if st.RoundTrips+st.Local != spends {
		t.Errorf("round trips %d + local %d != spends %d", st.RoundTrips, st.Local, spends)
	}
	if st.Local < spends*9/10 {
		t.Errorf("only %d of %d spends avoided redis, want ≥ 90%%", st.Local, spends)
	}
}

func TestLeasedRelease(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	a := newTestLeased(c, 10, clk.Now)
	b := NewLeased(LeasedOptions{Client: c, Prefix: a.prefix, LeaseSize: 10, Timeout: time.Second, Now: clk.Now})
	items := []Item{{Key: "k", Cost: 1, Limit: 10, Reset: clk.Now().Add(time.Hour)}}
	used := make([]int64, 1)
	ctx := context.Background()

	if d, err := a.Spend(ctx, "g", items, used); d != -1 || err != nil {
		t.Fatalf("a: denied=%d err=%v", d, err)
	}
	if got := redisUsed(t, c, a, "g", "k"); got != 10 {
		t.Fatalf("redis counter after a's lease = %d, want 10", got)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := redisUsed(t, c, a, "g", "k"); got != 1 {
		t.Errorf("redis counter after release = %d, want 1", got)
	}
	for i := range 9 {
		if d, err := b.Spend(ctx, "g", items, used); d != -1 || err != nil {
			t.Fatalf("b spend %d: denied=%d err=%v", i, d, err)
		}
	}
	if d, _ := b.Spend(ctx, "g", items, used); d != 0 {
		t.Errorf("b's 10th spend: denied=%d, want 0 (limit reached)", d)
	}
	// a gave its units back and knows nothing is left for it.
	if d, err := a.Spend(ctx, "g", items, used); d != 0 || err != nil {
		t.Errorf("a after release: denied=%d err=%v, want refused", d, err)
	}
}

// TestLeasedFailsFast: a Redis that stops answering costs a spend no more
// than the Timeout it was given, and stalls nobody else. Nothing here is
// timed: a spend that waited for Redis could only return after Resume.
func TestLeasedFailsFast(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	reset := time.Now().Add(time.Hour)
	items := func(key string) []Item { return []Item{{Key: key, Cost: 1, Limit: 1000, Reset: reset}} }
	// done runs spend in a goroutine and reports when it returned.
	type result struct {
		d   int
		err error
	}
	start := func(s *Leased, group, key string) chan result {
		ch := make(chan result, 1)
		go func() {
			d, err := s.Spend(ctx, group, items(key), make([]int64, 1))
			ch <- result{d, err}
		}()
		return ch
	}
	// await fails the test if r does not come within a minute: far past
	// any timeout in play, so only a spend stuck on Redis trips it.
	await := func(what string, ch chan result) result {
		t.Helper()
		select {
		case r := <-ch:
			return r
		case <-time.After(time.Minute):
			t.Fatalf("%s: still waiting after a minute", what)
			return result{}
		}
	}

	t.Run("a spend gives up at its timeout while redis is paused", func(t *testing.T) {
		s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("fast%d:", testPrefixes.Add(1)), LeaseSize: 1, Timeout: 200 * time.Millisecond})
		if _, err := s.Spend(ctx, "g", items("k"), make([]int64, 1)); err != nil {
			t.Fatalf("warm-up: %v", err)
		}
		srv.Pause()
		defer srv.Resume()
		var chs []chan result
		for range 20 {
			chs = append(chs, start(s, "g", "k"))
		}
		for i, ch := range chs {
			// Redis is still paused: every spend returned on its own.
			if r := await(fmt.Sprint("spend ", i), ch); !errors.Is(r.err, ErrUnavailable) {
				t.Errorf("spend %d with redis paused: err=%v, want ErrUnavailable", i, r.err)
			}
		}
		t.Logf("%+v", s.Stats())
	})

	t.Run("a stalled round trip holds up no other subject", func(t *testing.T) {
		// A timeout far longer than the test: the stalled spend returns
		// only when Redis answers.
		s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("fast%d:", testPrefixes.Add(1)), LeaseSize: 10, Timeout: 10 * time.Minute})
		if d, err := s.Spend(ctx, "leased", items("k"), make([]int64, 1)); d != -1 || err != nil {
			t.Fatalf("warm-up: denied=%d err=%v", d, err)
		}
		srv.Pause()
		stalled := start(s, "stalled", "k")
		// Nine units are leased: they serve while the other subject waits.
		for i := range 9 {
			if r := await("leased spend", start(s, "leased", "k")); r.d != -1 || r.err != nil {
				t.Fatalf("leased spend %d while another subject waits on redis: denied=%d err=%v", i, r.d, r.err)
			}
		}
		select {
		case r := <-stalled:
			t.Fatalf("the stalled spend returned while redis was paused: %+v", r)
		default:
		}
		srv.Resume()
		if r := await("stalled spend", stalled); r.d != -1 || r.err != nil {
			t.Errorf("stalled spend after resume: denied=%d err=%v", r.d, r.err)
		}
	})

	t.Run("a dead redis fails the spend", func(t *testing.T) {
		s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("fast%d:", testPrefixes.Add(1)), LeaseSize: 1})
		srv.Kill()
		if r := await("spend", start(s, "g", "k")); !errors.Is(r.err, ErrUnavailable) {
			t.Errorf("spend with redis dead: err=%v, want ErrUnavailable", r.err)
		}
	})
}

// TestLeasedKeepsLateGrants: when Redis answers a lease after the requester
// gave up, the replica keeps the units Redis granted as a lease instead of
// stranding them for the rest of the window.
func TestLeasedKeepsLateGrants(t *testing.T) {
	srv := redistest.Start(t)
	c := patientClient(t, srv)
	clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	s := NewLeased(LeasedOptions{Client: c, Prefix: fmt.Sprintf("late%d:", testPrefixes.Add(1)), LeaseSize: 10,
		Timeout: 100 * time.Millisecond, LateReply: 10 * time.Minute, Now: clk.Now})
	ctx := context.Background()
	items := []Item{{Key: "k", Cost: 1, Limit: 100, Reset: clk.Now().Add(time.Hour)}}
	used := make([]int64, 1)
	// Open the pooled connection first: a new one would wait for its
	// handshake, not send the script.
	if _, err := s.Spend(ctx, "warm", []Item{{Key: "w", Cost: 1, Limit: 100, Reset: items[0].Reset}}, used); err != nil {
		t.Fatal(err)
	}

	srv.Pause()
	_, err := s.Spend(ctx, "g", items, used)
	srv.Resume()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("spend with redis paused: err=%v, want ErrUnavailable", err)
	}
	waitLate(t, s)
	st := s.Stats()
	if st.Abandoned != 1 || st.Adopted != 10 || st.Unanswered != 0 {
		t.Errorf("stats %+v, want 1 abandoned round trip whose 10 units were adopted", st)
	}
	if got := redisUsed(t, c, s, "g", "k"); got != 10 {
		t.Errorf("redis counter after the late reply = %d, want 10", got)
	}
	if got := held(s, "g", "k"); got != 10 {
		t.Errorf("replica holds %d units after the late reply, want the 10 granted", got)
	}
	// The counter still serves its whole limit, the first ten from the
	// adopted lease with no round trip.
	trips := s.Stats().RoundTrips
	admitted := 0
	for i := range 150 {
		if d, err := s.Spend(ctx, "g", items, used); err != nil {
			t.Fatal(err)
		} else if d < 0 {
			admitted++
		}
		if i == 9 && s.Stats().RoundTrips != trips {
			t.Errorf("%d round trips for spends the adopted lease covers", s.Stats().RoundTrips-trips)
		}
	}
	if admitted != 100 {
		t.Errorf("admitted %d after the late reply, want the whole limit 100", admitted)
	}
}

// waitLate waits until no abandoned round trip of s is still running.
func waitLate(t *testing.T, s *Leased) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for s.late.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d late round trips still running after a minute", s.late.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLeasedMultiReplicaSlowRedis: three replicas spend on one counter
// while Redis keeps stalling (SIGSTOP) for longer than their timeout, so
// that many round trips are given up while Redis still runs them. Every
// unit Redis granted ends up spent or held, none stranded; and once the
// replicas spend until refused, exactly the limit was admitted.
func TestLeasedMultiReplicaSlowRedis(t *testing.T) {
	const (
		replicas  = 3
		workers   = 4
		limit     = 20000
		leaseSize = 10
	)
	srv := redistest.Start(t)
	clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	items := []Item{{Key: "acme/requests", Cost: 1, Limit: limit, Reset: clk.Now().Add(time.Hour)}}
	prefix := fmt.Sprintf("slow%d:", testPrefixes.Add(1))
	stores := make([]*Leased, replicas)
	for i := range stores {
		stores[i] = NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: prefix, LeaseSize: leaseSize,
			Timeout: 20 * time.Millisecond, LateReply: 10 * time.Minute, Now: clk.Now})
	}
	var admitted atomic.Int64
	ctx := context.Background()
	spend := func(s *Leased) (int, error) {
		d, err := s.Spend(ctx, "acme", items, make([]int64, 1))
		if err == nil && d < 0 {
			admitted.Add(1)
		}
		return d, err
	}

	// Phase 1: spend while Redis stalls for 60 ms out of every 90.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range stores {
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if d, err := spend(s); err == nil && d >= 0 {
						t.Error("refused before the limit could be reached")
						return
					}
					// Leave most of the limit to the final passes.
					time.Sleep(500 * time.Microsecond)
				}
			}()
		}
	}
	for range 6 {
		srv.Pause()
		time.Sleep(60 * time.Millisecond)
		srv.Resume()
		time.Sleep(30 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	var abandoned, unanswered uint64
	var holding int64
	for _, s := range stores {
		waitLate(t, s)
		st := s.Stats()
		abandoned += st.Abandoned
		unanswered += st.Unanswered
		holding += held(s, "acme", items[0].Key)
		t.Logf("%+v", st)
	}
	if abandoned == 0 {
		t.Fatal("no round trip was given up: the test did not stall redis")
	}
	if unanswered != 0 {
		t.Fatalf("%d round trips got no reply from a redis that was only paused", unanswered)
	}
	t.Logf("%d round trips given up while redis ran them", abandoned)
	// Every unit Redis handed out is spent or held.
	if got, want := redisUsed(t, srv.Client(), stores[0], "acme", items[0].Key), admitted.Load()+holding; got != want {
		t.Errorf("redis counter %d, want admitted %d + held %d = %d: units stranded", got, admitted.Load(), holding, want)
	}

	// Phase 2: each replica in turn spends until refused, until a whole
	// pass is refused with Redis healthy and no round trip in flight.
	for clean := false; !clean; {
		clean = true
		for _, s := range stores {
			for {
				d, err := spend(s)
				if err != nil {
					clean = false
					continue
				}
				if d >= 0 {
					break
				}
			}
			// A spend that failed above may have left a late reply
			// whose units land now: then another pass spends them.
			waitLate(t, s)
		}
		if !clean {
			t.Log("a round trip failed in the final pass; another pass")
		}
	}
	if got := admitted.Load(); got != limit {
		t.Errorf("admitted %d, want exactly the limit %d once every replica is refused", got, limit)
	}
}

// TestLeasedCanceledIsNotAnOutage: a caller that gives up is not Redis failing.
func TestLeasedCanceledIsNotAnOutage(t *testing.T) {
	srv := redistest.Start(t)
	s := NewLeased(LeasedOptions{Client: fastClient(t, srv), Prefix: fmt.Sprintf("cancel%d:", testPrefixes.Add(1))})
	r := NewResilient(s, NewMemory(nil), ResilientOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	items := []Item{{Key: "k", Cost: 1, Limit: 10, Reset: time.Now().Add(time.Hour)}}
	_, err := r.Spend(ctx, "g", items, make([]int64, 1))
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Errorf("err = %v, want context.Canceled and not ErrUnavailable", err)
	}
	if r.Mode() != ModePrimary {
		t.Errorf("mode = %s after a canceled request, want primary", r.Mode())
	}
	if d, err := r.Spend(context.Background(), "g", items, make([]int64, 1)); d != -1 || err != nil {
		t.Errorf("next spend: denied=%d err=%v", d, err)
	}
}

func TestLeasedSweepsExpired(t *testing.T) {
	srv := redistest.Start(t)
	clk := &testClock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	s := newTestLeased(srv.Client(), 10, clk.Now)
	used := make([]int64, 1)
	for i := range 200 {
		g := fmt.Sprint("subject", i)
		if _, err := s.Spend(context.Background(), g, []Item{{Key: "k", Cost: 1, Limit: 5, Reset: clk.Now().Add(time.Second)}}, used); err != nil {
			t.Fatal(err)
		}
	}
	clk.Add(2 * time.Second)
	total := 0
	for i := range s.shards {
		// Every shard sweeps on its next use.
		s.shards[i].acquire("", clk.Now()).refs.Add(-1)
		for _, g := range s.shards[i].groups {
			total += len(g.leases)
		}
	}
	if total != 0 {
		t.Errorf("leases held after their windows ended = %d, want 0", total)
	}
}

// BenchmarkLeasedSpend is the hot path: the lease covers the spend, so no
// round trip. Compare with BenchmarkMemorySpend, e.g.
//
//	go test -run xxx -bench 'Spend$' -count 10 ./quota/ | benchstat -col /.name -
//
// Measured on a 2-core AMD EPYC: Leased 100 ns/op, Memory 85 ns/op, both 0
// allocs/op. Leased takes two locks (the shard's, to find the subject, then
// the subject's) where Memory takes one; neither touches the network here.
func BenchmarkLeasedSpend(b *testing.B) {
	srv := redistest.Start(b)
	s := NewLeased(LeasedOptions{Client: srv.Client(), LeaseSize: 1 << 40})
	items := []Item{{Key: Key("acme", "requests", time.Now()), Cost: 1, Limit: 1 << 62, Reset: time.Now().Add(time.Hour)}}
	used := make([]int64, 1)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Spend(ctx, "acme", items, used); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeasedSpendLease10 amortises one round trip over ten spends, the
// default lease: what a subject spending steadily costs on average.
func BenchmarkLeasedSpendLease10(b *testing.B) {
	srv := redistest.Start(b)
	s := NewLeased(LeasedOptions{Client: srv.Client()})
	items := []Item{{Key: Key("acme", "requests", time.Now()), Cost: 1, Limit: 1 << 62, Reset: time.Now().Add(time.Hour)}}
	used := make([]int64, 1)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Spend(ctx, "acme", items, used); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeasedSpendParallel spreads spends over many subjects and cores.
func BenchmarkLeasedSpendParallel(b *testing.B) {
	srv := redistest.Start(b)
	s := NewLeased(LeasedOptions{Client: srv.Client(), LeaseSize: 1 << 40})
	var next atomic.Int64
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		subject := fmt.Sprint("acme", next.Add(1))
		items := []Item{{Key: Key(subject, "requests", time.Now()), Cost: 1, Limit: 1 << 62, Reset: time.Now().Add(time.Hour)}}
		used := make([]int64, 1)
		for pb.Next() {
			if _, err := s.Spend(ctx, subject, items, used); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestLeasedPeek(t *testing.T) {
	rs := redistest.Start(t)
	clk := &testClock{t: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
	s := NewLeased(LeasedOptions{Client: rs.Client(), LeaseSize: 1, Now: clk.Now})
	it := Item{Key: "peek", Cost: 3, Limit: 10, Reset: clk.Now().Add(time.Minute)}
	ctx := context.Background()
	if got, err := s.Peek(ctx, "g", it); err != nil || got != 0 {
		t.Fatalf("before any spend: %d, %v", got, err)
	}
	used := make([]int64, 1)
	if d, err := s.Spend(ctx, "g", []Item{it}, used); d != -1 || err != nil {
		t.Fatalf("spend: %d %v", d, err)
	}
	if got, err := s.Peek(ctx, "g", it); err != nil || got != 3 {
		t.Errorf("after spending 3: %d, %v, want 3", got, err)
	}
	clk.Add(time.Minute)
	if got, _ := s.Peek(ctx, "g", it); got != 0 {
		t.Errorf("after the window: %d, want 0", got)
	}
}

// TestLeasedTimeoutFailsOnlyItsOwnRequest: one round trip that times out
// fails its own request, not a request of another subject that was already
// under way (it waited for its subject's lock while the round trip failed):
// that one makes its own round trip, and Redis, healthy again, answers it.
// The test holds the other subject's lock itself, so the order is certain.
func TestLeasedTimeoutFailsOnlyItsOwnRequest(t *testing.T) {
	srv := redistest.Start(t)
	s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("own%d:", testPrefixes.Add(1)),
		LeaseSize: 1, Timeout: 200 * time.Millisecond, LateReply: 10 * time.Minute})
	ctx := context.Background()
	reset := time.Now().Add(time.Hour)
	items := func(key string) []Item { return []Item{{Key: key, Cost: 1, Limit: 100, Reset: reset}} }
	for _, g := range []string{"slow", "queued"} {
		if d, err := s.Spend(ctx, g, items("k"), make([]int64, 1)); d != -1 || err != nil {
			t.Fatalf("warm-up %s: denied=%d err=%v", g, d, err)
		}
	}
	// Hold "queued"'s lock, as a spend whose round trip is in progress
	// would (with a reference, so that no sweep waits for the lock).
	sh := &s.shards[maphash.String(s.seed, "queued")%leaseShards]
	g := sh.acquire("queued", time.Now())
	g.mu.Lock()
	type result struct {
		d   int
		err error
	}
	queued := make(chan result, 1)
	go func() {
		d, err := s.Spend(ctx, "queued", items("k"), make([]int64, 1))
		queued <- result{d, err}
	}()
	// The queued spend has started (it holds a reference to its group)
	// and is waiting for the lock.
	for deadline := time.Now().Add(time.Minute); g.refs.Load() != 2; {
		if time.Now().After(deadline) {
			t.Fatal("the queued spend never reached its subject's lock")
		}
		time.Sleep(time.Millisecond)
	}

	srv.Pause()
	_, err := s.Spend(ctx, "slow", items("k"), make([]int64, 1))
	srv.Resume()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("spend with redis paused: err=%v, want ErrUnavailable", err)
	}
	g.mu.Unlock()
	g.refs.Add(-1)
	select {
	case r := <-queued:
		if r.d != -1 || r.err != nil {
			t.Errorf("queued spend of another subject after one round trip timed out: denied=%d err=%v, want spent", r.d, r.err)
		}
	case <-time.After(time.Minute):
		t.Fatal("queued spend still waiting after a minute")
	}
	// A later spend of the subject whose round trip failed makes its own.
	if d, err := s.Spend(ctx, "slow", items("k"), make([]int64, 1)); d != -1 || err != nil {
		t.Errorf("next spend of the failed subject: denied=%d err=%v, want spent", d, err)
	}
	waitLate(t, s)
	if st := s.Stats(); st.Errors != 1 {
		t.Errorf("stats %+v, want 1 error: the round trip that timed out", st)
	}
}

// TestLeasedCallerDeadlineIsNotAnOutage: a wait cut short by the caller's
// own deadline, nearer than Timeout, is the caller running out of time: the
// request fails, but the mode does not move. A wait that ran its whole
// Timeout does move it.
func TestLeasedCallerDeadlineIsNotAnOutage(t *testing.T) {
	srv := redistest.Start(t)
	cases := []struct {
		name     string
		timeout  time.Duration // the store's
		deadline time.Duration // the caller's; 0: none
		wantMode string
		wantErrs uint64
	}{
		{"caller's deadline nearer than timeout", 10 * time.Minute, 100 * time.Millisecond, ModePrimary, 0},
		{"timeout nearer than the caller's deadline", 100 * time.Millisecond, 10 * time.Minute, ModeDegraded, 1},
		{"timeout and no deadline", 100 * time.Millisecond, 0, ModeDegraded, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewLeased(LeasedOptions{Client: patientClient(t, srv), Prefix: fmt.Sprintf("dl%d:", testPrefixes.Add(1)),
				LeaseSize: 1, Timeout: c.timeout, LateReply: 10 * time.Minute})
			r := NewResilient(s, NewMemory(nil), ResilientOptions{FailAfter: 1})
			items := []Item{{Key: "k", Cost: 1, Limit: 100, Reset: time.Now().Add(time.Hour)}}
			if d, err := r.Spend(context.Background(), "warm", items, make([]int64, 1)); d != -1 || err != nil {
				t.Fatalf("warm-up: denied=%d err=%v", d, err)
			}
			ctx := context.Background()
			if c.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, c.deadline)
				defer cancel()
			}
			srv.Pause()
			_, err := r.Spend(ctx, "g", items, make([]int64, 1))
			srv.Resume()
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("fail-closed spend with redis paused: err=%v, want ErrUnavailable", err)
			}
			if got := r.Mode(); got != c.wantMode {
				t.Errorf("mode = %s, want %s", got, c.wantMode)
			}
			waitLate(t, s)
			if got := s.Stats().Errors; got != c.wantErrs {
				t.Errorf("Errors = %d, want %d", got, c.wantErrs)
			}
		})
	}
}
