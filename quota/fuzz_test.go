package quota

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// costOp is one spend of a fuzzed sequence: one or two items on counters
// "a" and "b", maybe the same one twice.
type costOp struct {
	keys  []string
	costs []int64
}

// decodeCostOps reads spends from data. Each spend starts with a byte whose
// low two bits choose the items (a; b; a and a; a and b); each item's cost
// is then one byte: below 0xf0 a small cost (byte % 16), else the next
// eight bytes as any int64, huge or negative.
func decodeCostOps(data []byte) []costOp {
	var ops []costOp
	cost := func() (int64, bool) {
		if len(data) == 0 {
			return 0, false
		}
		b := data[0]
		data = data[1:]
		if b < 0xf0 {
			return int64(b % 16), true
		}
		if len(data) < 8 {
			return 0, false
		}
		c := int64(binary.BigEndian.Uint64(data))
		data = data[8:]
		return c, true
	}
	for len(data) > 0 && len(ops) < 64 {
		sel := data[0] & 3
		data = data[1:]
		keys := [][]string{{"a"}, {"b"}, {"a", "a"}, {"a", "b"}}[sel]
		op := costOp{keys: keys}
		for range keys {
			c, ok := cost()
			if !ok {
				return ops
			}
			op.costs = append(op.costs, c)
		}
		ops = append(ops, op)
	}
	return ops
}

// exactModel is a counter per key that admits a spend when every key's
// summed cost fits its limit: what one replica of any store must answer.
type exactModel map[string]int64

// spend returns the index of the first item whose counter would pass limit,
// or -1 after spending.
func (m exactModel) spend(op costOp, limit int64) int {
	total := map[string]int64{}
	for i, k := range op.keys {
		total[k] = addSat(total[k], max(op.costs[i], 0))
	}
	for i, k := range op.keys {
		if !Fits(m[k], total[k], limit) {
			return i
		}
	}
	for k, c := range total {
		m[k] += c
	}
	return -1
}

// FuzzCostSequence drives sequences of spends with arbitrary costs (huge,
// negative, one counter twice in a spend) through every store: Memory,
// Leased (one replica, and two sharing Redis), and Resilient failing open
// to its local store. No counter ever admits more than its limit, and one
// replica of each store answers exactly as exactModel.
func FuzzCostSequence(f *testing.F) {
	huge := func(c int64) []byte { return binary.BigEndian.AppendUint64([]byte{0xff}, uint64(c)) }
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	// The attack of issue 11: two normal requests, then the largest cost,
	// then more normal requests.
	f.Add(int64(5), cat([]byte{0, 1, 0, 1, 0}, huge(math.MaxInt64), []byte{0, 1, 0, 1, 0, 1, 0, 1}))
	f.Add(int64(5), cat([]byte{2, 3}, huge(math.MaxInt64)))
	f.Add(int64(10), cat([]byte{3, 4}, huge(math.MaxInt64-3), []byte{0, 9, 1, 10}))
	f.Add(int64(3), cat([]byte{0}, huge(-1), []byte{0}, huge(math.MinInt64), []byte{0, 3, 0, 1}))
	f.Add(int64(0), []byte{0, 0, 0, 1, 2, 0, 0})
	f.Add(int64(-1), []byte{0, 0, 1, 1})
	f.Add(int64(1)<<53, cat([]byte{0}, huge(1<<53), []byte{0, 1}))
	f.Add(int64(math.MaxInt64), cat([]byte{0}, huge(math.MaxInt64), []byte{0, 1}))

	srv := redistest.Start(f)
	client := patientClient(f, srv)
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	now := func() time.Time { return t0 }

	f.Fuzz(func(t *testing.T, limit int64, data []byte) {
		ops := decodeCostOps(data)
		down := &fakeStore{spend: func(context.Context, string, []Item, []int64) (int, error) {
			return -1, fmt.Errorf("%w: down", ErrUnavailable)
		}}
		prefix := fmt.Sprintf("fuzz%d:", testPrefixes.Add(1))
		one := []Store{
			NewMemory(now),
			NewResilient(down, NewMemory(now), ResilientOptions{Now: now}),
		}
		var shared []Store
		// Lua numbers are doubles: Leased is exact only up to 2^53.
		if limit <= 1<<53 && limit >= -(1<<53) {
			one = append(one, NewLeased(LeasedOptions{Client: client, Prefix: prefix + "one:", LeaseSize: 4, Timeout: time.Minute, Now: now}))
			for range 2 {
				shared = append(shared, NewLeased(LeasedOptions{Client: client, Prefix: prefix + "two:", LeaseSize: 4, Timeout: time.Minute, Now: now}))
			}
		}
		models := make([]exactModel, len(one))
		for i := range models {
			models[i] = exactModel{}
		}
		admitted := make([]map[string]int64, len(one)+1) // the last: the shared pair
		for i := range admitted {
			admitted[i] = map[string]int64{}
		}
		ceiling := max(limit, 0)
		spend := func(s Store, op costOp, seen map[string]int64) int {
			items := make([]Item, len(op.keys))
			for i, k := range op.keys {
				items[i] = Item{Key: k, Cost: op.costs[i], Limit: limit, Reset: t0.Add(time.Hour), FailOpen: true}
			}
			d, err := s.Spend(context.Background(), "g", items, make([]int64, len(items)))
			if err != nil {
				t.Fatalf("%T: %v", s, err)
			}
			if d < 0 {
				for i, k := range op.keys {
					seen[k] = addSat(seen[k], max(op.costs[i], 0))
					if seen[k] > ceiling {
						t.Fatalf("%T admitted %d on %q, over the limit %d (ops %v)", s, seen[k], k, limit, ops)
					}
				}
			}
			return d
		}
		for n, op := range ops {
			for i, s := range one {
				want := models[i].spend(op, limit)
				if got := spend(s, op, admitted[i]); got != want {
					t.Fatalf("%T, spend %d %v: denied=%d, want %d (limit %d)", s, n, op, got, want, limit)
				}
			}
			if len(shared) > 0 {
				spend(shared[n%2], op, admitted[len(one)])
			}
		}
	})
}

// patientClient is RedisOptions with generous timeouts: on a busy machine
// a round trip can take far longer than production's 50 ms, and these tests
// are about answers, not speed.
func patientClient(t testing.TB, srv *redistest.Server) *redis.Client {
	o := RedisOptions(srv.Addr())
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = time.Minute, 2*time.Minute, time.Minute, time.Minute
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}
