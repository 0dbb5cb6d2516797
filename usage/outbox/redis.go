package outbox

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/usage"
)

// Defaults for RedisOptions.
const (
	// DefaultPrefix starts every key; its hash tag puts them in one slot
	// of a Redis Cluster, as the scripts need.
	DefaultPrefix = "{tollgate:usage}:"
	// DefaultGroup is the consumer group the exporters share.
	DefaultGroup = "exporters"
	// DefaultClaimIdle is how long an event handed to a consumer waits for
	// its Ack before another consumer may take it.
	DefaultClaimIdle = time.Minute
)

// RedisOptions configure NewRedis. The zero value is usable.
type RedisOptions struct {
	// Prefix starts every key (Prefix+"stream", Prefix+"id:"+ID); default
	// DefaultPrefix. On a Redis Cluster it must hold a hash tag ("{...}").
	Prefix string
	// Group is the consumer group; default DefaultGroup.
	Group string
	// Consumer names this reader in the group; default hostname-pid. Two
	// live readers must not share a name. A reader restarted under the same
	// name gets its unacknowledged events back at once; under a new one
	// (a new pid), another reader claims them after ClaimIdle.
	Consumer string
	// ClaimIdle: an event another consumer has held this long without
	// Ack is taken over by Pending; default DefaultClaimIdle. A consumer
	// that calls Pending keeps its own events (each call hands them to it
	// again), so set it above the time one export takes.
	ClaimIdle time.Duration
	// MaxEvents bounds the stream's length; default DefaultMaxEvents.
	MaxEvents int
	// DedupWindow is how long an acknowledged ID is remembered (a key with
	// that TTL) and not stored again; default DefaultDedupWindow, negative
	// for none. Redis holds one small key per event acknowledged within
	// the window.
	DedupWindow time.Duration
}

func (o RedisOptions) withDefaults() RedisOptions {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Group == "" {
		o.Group = DefaultGroup
	}
	if o.Consumer == "" {
		host, _ := os.Hostname()
		o.Consumer = host + "-" + strconv.Itoa(os.Getpid())
	}
	if o.ClaimIdle <= 0 {
		o.ClaimIdle = DefaultClaimIdle
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = DefaultMaxEvents
	}
	if o.DedupWindow == 0 {
		o.DedupWindow = DefaultDedupWindow
	}
	return o
}

// Redis is a usage.Outbox in a Redis stream read by a consumer group: the
// stream holds the backlog (an Ack deletes the entry), and a key per event
// ID, Prefix+"id:"+ID, holds the entry's stream ID while it waits and
// "acked" for DedupWindow after. Redis must not evict keys (maxmemory-policy
// noeviction), or waiting events could be lost. Make it with NewRedis.
type Redis struct {
	rdb    redis.UniversalClient
	opts   RedisOptions
	stream string

	mu      sync.Mutex
	grouped bool // the group is known to exist
}

var _ usage.Outbox = (*Redis)(nil)

// NewRedis returns an outbox in the Redis that client reaches. The caller
// owns client: Close does not close it.
func NewRedis(client redis.UniversalClient, opts RedisOptions) *Redis {
	opts = opts.withDefaults()
	return &Redis{rdb: client, opts: opts, stream: opts.Prefix + "stream"}
}

func (r *Redis) idKey(id string) string { return r.opts.Prefix + "id:" + id }

// appendScript stores the events whose ID has no key yet, all or none.
// KEYS[1] is the stream, KEYS[i] (i > 1) an event's ID key; ARGV[1] the
// bound, ARGV[2i-2] and ARGV[2i-1] the event's ID and JSON. It returns how
// many it stored, or -1 when they would pass the bound.
var appendScript = redis.NewScript(`
local fresh = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then fresh[#fresh + 1] = i end
end
if #fresh == 0 then return 0 end
if redis.call('XLEN', KEYS[1]) + #fresh > tonumber(ARGV[1]) then return -1 end
for _, i in ipairs(fresh) do
  local sid = redis.call('XADD', KEYS[1], '*', 'id', ARGV[2*i-2], 'e', ARGV[2*i-1])
  redis.call('SET', KEYS[i], sid)
end
return #fresh
`)

// Append stores events in one script: de-duplicated by their ID keys,
// bounded by the stream's length. A Redis error is returned wrapped; the
// script may then have run, and a retry is safe.
func (r *Redis) Append(ctx context.Context, events []usage.Event) error {
	if len(events) == 0 {
		return nil
	}
	keys := make([]string, 1, 1+len(events))
	keys[0] = r.stream
	args := make([]any, 1, 1+2*len(events))
	args[0] = r.opts.MaxEvents
	seen := make(map[string]bool, len(events))
	for i := range events {
		e := &events[i]
		if e.ID == "" {
			return fmt.Errorf("usage outbox: event %d has no ID", i)
		}
		if seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		js, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("usage outbox: event %s: %w", e.ID, err)
		}
		keys = append(keys, r.idKey(e.ID))
		args = append(args, e.ID, js)
	}
	n, err := appendScript.Run(ctx, r.rdb, keys, args...).Int()
	if err != nil {
		return fmt.Errorf("usage outbox redis: append: %w", err)
	}
	if n < 0 {
		return fmt.Errorf("%w: %d more events would pass the bound of %d", usage.ErrFull, len(keys)-1, r.opts.MaxEvents)
	}
	return nil
}

// ackScript acknowledges and deletes the entries of the IDs whose keys
// hold a stream ID, then marks the keys acknowledged for the window.
// KEYS[1] is the stream, KEYS[i] (i > 1) an ID key; ARGV[1] the group,
// ARGV[2] the window in milliseconds (0: forget the ID now).
var ackScript = redis.NewScript(`
local n = 0
for i = 2, #KEYS do
  local sid = redis.call('GET', KEYS[i])
  if sid and sid ~= 'acked' then
    redis.pcall('XACK', KEYS[1], ARGV[1], sid)
    redis.call('XDEL', KEYS[1], sid)
    if tonumber(ARGV[2]) > 0 then
      redis.call('SET', KEYS[i], 'acked', 'PX', ARGV[2])
    else
      redis.call('DEL', KEYS[i])
    end
    n = n + 1
  end
end
return n
`)

// Ack acknowledges and deletes the events' stream entries in one script.
func (r *Redis) Ack(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	keys := make([]string, 1, 1+len(ids))
	keys[0] = r.stream
	for _, id := range ids {
		if id != "" {
			keys = append(keys, r.idKey(id))
		}
	}
	window := max(r.opts.DedupWindow.Milliseconds(), 0)
	if r.opts.DedupWindow > 0 {
		window = max(window, 1)
	}
	if err := ackScript.Run(ctx, r.rdb, keys, r.opts.Group, window).Err(); err != nil {
		return fmt.Errorf("usage outbox redis: ack: %w", err)
	}
	return nil
}

// Pending hands this consumer up to n events, oldest first: first its own
// not yet acknowledged (handed to it before, perhaps before a restart),
// then those another consumer has held for ClaimIdle, then new ones.
func (r *Redis) Pending(ctx context.Context, n int) ([]usage.Event, error) {
	if n <= 0 {
		return nil, nil
	}
	out, err := r.pending(ctx, n)
	if err != nil && isNoGroup(err) {
		// The stream or group went away (an emptied Redis): make them
		// again and read once more.
		r.mu.Lock()
		r.grouped = false
		r.mu.Unlock()
		out, err = r.pending(ctx, n)
	}
	if err != nil {
		return nil, fmt.Errorf("usage outbox redis: pending: %w", err)
	}
	return out, nil
}

func (r *Redis) pending(ctx context.Context, n int) ([]usage.Event, error) {
	if err := r.ensureGroup(ctx); err != nil {
		return nil, err
	}
	var msgs []redis.XMessage
	// An entry deleted while pending (an Ack cut short by hand) is listed
	// with no fields: nothing to export, acknowledged below.
	var gone []string
	keep := func(batch []redis.XMessage) {
		for _, m := range batch {
			if _, ok := m.Values["e"]; ok {
				msgs = append(msgs, m)
			} else {
				gone = append(gone, m.ID)
			}
		}
	}
	// Own entries, from the start of this consumer's pending list.
	start := "0"
	for range 4 {
		want := n - len(msgs)
		own, err := r.read(ctx, start, want)
		if err != nil {
			return nil, err
		}
		keep(own)
		if len(own) < want || len(msgs) >= n {
			break
		}
		start = own[len(own)-1].ID
	}
	// Entries idle in dead consumers' lists. XAUTOCLAIM scans up to ten
	// times its count per call; follow the cursor a few times at most.
	start = "0-0"
	for range 4 {
		if len(msgs) >= n {
			break
		}
		claimed, next, err := r.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: r.stream, Group: r.opts.Group, Consumer: r.opts.Consumer,
			MinIdle: r.opts.ClaimIdle, Start: start, Count: int64(n - len(msgs)),
		}).Result()
		if err != nil {
			return nil, err
		}
		keep(claimed)
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	// New entries.
	if len(msgs) < n {
		fresh, err := r.read(ctx, ">", n-len(msgs))
		if err != nil {
			return nil, err
		}
		keep(fresh)
	}
	slices.SortFunc(msgs, func(a, b redis.XMessage) int { return compareStreamIDs(a.ID, b.ID) })
	out := make([]usage.Event, 0, len(msgs))
	for _, m := range msgs {
		js, _ := m.Values["e"].(string)
		var e usage.Event
		if err := json.Unmarshal([]byte(js), &e); err != nil {
			return nil, fmt.Errorf("stream entry %s: %w", m.ID, err)
		}
		out = append(out, e)
	}
	if len(gone) > 0 {
		if err := r.rdb.XAck(ctx, r.stream, r.opts.Group, gone...).Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// read is XREADGROUP without blocking: id "0" re-reads this consumer's
// pending entries, ">" takes new ones.
func (r *Redis) read(ctx context.Context, id string, n int) ([]redis.XMessage, error) {
	res, err := r.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: r.opts.Group, Consumer: r.opts.Consumer,
		Streams: []string{r.stream, id}, Count: int64(n), Block: -1,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil || len(res) == 0 {
		return nil, err
	}
	return res[0].Messages, nil
}

// ensureGroup creates the stream and the group, reading from the start,
// once per Redis value (and again after NOGROUP).
func (r *Redis) ensureGroup(ctx context.Context) error {
	r.mu.Lock()
	done := r.grouped
	r.mu.Unlock()
	if done {
		return nil
	}
	err := r.rdb.XGroupCreateMkStream(ctx, r.stream, r.opts.Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return err
	}
	r.mu.Lock()
	r.grouped = true
	r.mu.Unlock()
	return nil
}

func isNoGroup(err error) bool { return strings.HasPrefix(err.Error(), "NOGROUP") }

// Stats reads the stream's length and its first entry, whose ID is the
// Redis server's time of its append in milliseconds.
func (r *Redis) Stats(ctx context.Context) (usage.Stats, error) {
	var xlen *redis.IntCmd
	var first *redis.XMessageSliceCmd
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		xlen = p.XLen(ctx, r.stream)
		first = p.XRangeN(ctx, r.stream, "-", "+", 1)
		return nil
	})
	if err != nil {
		return usage.Stats{}, fmt.Errorf("usage outbox redis: stats: %w", err)
	}
	s := usage.Stats{Backlog: int(xlen.Val())}
	if msgs := first.Val(); len(msgs) > 0 {
		if ms, _, ok := splitStreamID(msgs[0].ID); ok {
			s.Oldest = time.UnixMilli(ms)
		}
	}
	return s, nil
}

// Close does nothing: the caller owns the client, and the events stay in
// Redis.
func (r *Redis) Close() error { return nil }

// compareStreamIDs orders "ms-seq" stream IDs numerically.
func compareStreamIDs(a, b string) int {
	am, as, _ := splitStreamID(a)
	bm, bs, _ := splitStreamID(b)
	return cmp.Or(cmp.Compare(am, bm), cmp.Compare(as, bs))
}

func splitStreamID(id string) (ms, seq int64, ok bool) {
	m, s, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseInt(m, 10, 64)
	seq, err2 := strconv.ParseInt(s, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}
