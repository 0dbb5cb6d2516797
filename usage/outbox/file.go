package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tollgate-authz/tollgate/usage"
)

// Defaults for FileOptions and RedisOptions fields left zero.
const (
	// DefaultMaxEvents bounds the backlog: a billing outage of 55 minutes
	// at 300 settled requests a second. Set it from the rate and the
	// outage to ride out; a File takes about 450 bytes of disk an event.
	DefaultMaxEvents = 1_000_000
	// DefaultDedupWindow is how long an acknowledged ID is remembered, so
	// that a retried Append, or a second replica settling the same
	// request, does not export it again: long enough for retries, short
	// enough that Redis keeps (rate × window) small keys, not days' worth.
	DefaultDedupWindow = 15 * time.Minute
	// DefaultLockTimeout is how long OpenFile waits for another process
	// to release the file before failing.
	DefaultLockTimeout = time.Second
)

// ErrLocked is returned by OpenFile when another process holds the file.
var ErrLocked = errors.New("locked by another process")

// ErrCorrupt is returned by OpenFile when the file is not a readable
// outbox: damaged, truncated, or another kind of file.
var ErrCorrupt = errors.New("damaged outbox file")

// ErrClosed is returned by a store's methods after Close.
var ErrClosed = errors.New("usage outbox closed")

// FileOptions configure OpenFile. The zero value is usable.
type FileOptions struct {
	// MaxEvents bounds the backlog; default DefaultMaxEvents.
	MaxEvents int
	// DedupWindow is how long an acknowledged ID is remembered and not
	// stored again; default DefaultDedupWindow, negative for none.
	DedupWindow time.Duration
	// MaxAcked bounds how many acknowledged IDs are remembered (the oldest
	// are forgotten first, even inside the window); default MaxEvents.
	MaxAcked int
	// LockTimeout is how long to wait for another process to release the
	// file; default DefaultLockTimeout.
	LockTimeout time.Duration
	// Now is the clock for append and acknowledgement times; default
	// time.Now.
	Now func() time.Time
}

func (o FileOptions) withDefaults() FileOptions {
	if o.MaxEvents <= 0 {
		o.MaxEvents = DefaultMaxEvents
	}
	if o.DedupWindow == 0 {
		o.DedupWindow = DefaultDedupWindow
	}
	if o.MaxAcked <= 0 {
		o.MaxAcked = o.MaxEvents
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// queueLen is how many Appends wait for the writer before senders block.
const queueLen = 256

// maxGroup bounds the events one commit takes from queued Appends, so that
// one transaction stays a few megabytes.
const maxGroup = 10_000

// The file's buckets. events maps a sequence number (8 bytes, big endian:
// the append order) to the append time (8 bytes, Unix nanoseconds) and the
// event's JSON; ids maps a waiting event's ID to its sequence number.
// acked maps a recently acknowledged ID to its ackorder key and ack time;
// ackorder maps an ack sequence number to the ack time and ID, oldest
// first, to forget them in order. meta holds the counters.
var (
	bucketEvents   = []byte("events")
	bucketIDs      = []byte("ids")
	bucketAcked    = []byte("acked")
	bucketAckOrder = []byte("ackorder")
	bucketMeta     = []byte("meta")

	keyVersion = []byte("version")
	keyBacklog = []byte("backlog") // events waiting
	keyAckedN  = []byte("acked")   // IDs remembered in acked
)

// fileVersion is the layout above; a file with another one is refused.
const fileVersion = 1

// File is a usage.Outbox in a bbolt file on local disk. Make it with
// OpenFile.
type File struct {
	db   *bolt.DB
	path string
	opts FileOptions

	// appends queues Appends for the writer goroutine. Senders hold mu's
	// read lock, so Close (which takes the write lock, then closes the
	// channel) never closes it under a send; the writer commits every
	// queued Append before it exits.
	appends   chan *appendReq
	mu        sync.RWMutex
	closed    bool
	closeOnce sync.Once
	closeErr  error
	writer    sync.WaitGroup

	// onCommit, when not nil, is called by the writer before each commit
	// with the number of Appends in it (tests).
	onCommit func(appends int)
}

var _ usage.Outbox = (*File)(nil)

// OpenFile opens the outbox file at path, creating it (mode 0600) when it
// does not exist. It fails, with an error naming path, when another process
// holds the file (ErrLocked, after opts.LockTimeout) and when the file is
// damaged or truncated (ErrCorrupt): starting empty would lose the events
// it holds, so moving it aside is the operator's choice. The whole file is
// checked first: opening reads every page once.
func OpenFile(path string, opts FileOptions) (*File, error) {
	opts = opts.withDefaults()
	if err := verify(path, opts.LockTimeout); err != nil {
		return nil, err
	}
	db, err := openBolt(path, &bolt.Options{Timeout: opts.LockTimeout})
	if err != nil {
		return nil, err
	}
	f := &File{db: db, path: path, opts: opts, appends: make(chan *appendReq, queueLen)}
	if err := f.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	f.writer.Add(1)
	go f.write()
	return f, nil
}

// openBolt is bolt.Open with its errors named for an operator.
func openBolt(path string, o *bolt.Options) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, o)
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("usage outbox %s: %w (waited %v): is another tollgate using this file?", path, ErrLocked, o.Timeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, fmt.Errorf("usage outbox %s: %w: %w", path, ErrCorrupt, err)
	default:
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("usage outbox: %w", err) // names the path already
		}
		return nil, fmt.Errorf("usage outbox %s: %w", path, err)
	}
}

// verify checks an existing file, opened read-only (no page but the meta
// pages is read by that open): that it is as long as its meta page says,
// bbolt's consistency check, and the outbox's layout and counters. Only a
// file that passes is opened for writing: bbolt's read-write open reads the
// freelist page, and a damaged one makes it panic (leaving the file locked
// by its memory map) or, past the end of a truncated file, fault.
func verify(path string, timeout time.Duration) (err error) {
	fi, err := os.Stat(path)
	if err != nil || fi.Size() == 0 {
		return nil // a new file, or an error the real open reports
	}
	db, err := openBolt(path, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return err
	}
	defer db.Close()
	// A damaged page can make bbolt panic, or fault, as it is read here.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("usage outbox %s: %w: %v", path, ErrCorrupt, r)
		}
	}()
	err = db.View(func(tx *bolt.Tx) error {
		if fi.Size() < tx.Size() {
			return fmt.Errorf("truncated: %d bytes, its header says %d", fi.Size(), tx.Size())
		}
		var first error
		for cerr := range tx.Check() { // drain it: Check reads tx until it closes the channel
			if first == nil {
				first = cerr
			}
		}
		if first != nil {
			return first
		}
		return checkLayout(tx)
	})
	if err != nil {
		return fmt.Errorf("usage outbox %s: %w: %w", path, ErrCorrupt, err)
	}
	return nil
}

// checkLayout checks the outbox's buckets and counters: a file without
// buckets is a new one.
func checkLayout(tx *bolt.Tx) error {
	if tx.Bucket(bucketMeta) == nil {
		if tx.ForEach(func([]byte, *bolt.Bucket) error { return errNotEmpty }) != nil {
			return errors.New("not a usage outbox: it holds other buckets")
		}
		return nil
	}
	b := buckets(tx)
	if v := b.meta.Get(keyVersion); u64(v) != fileVersion {
		return fmt.Errorf("layout version %d, this tollgate reads %d", u64(v), fileVersion)
	}
	for _, c := range []struct {
		name    string
		counter uint64
		bucket  *bolt.Bucket
	}{
		{"events", b.get(keyBacklog), b.events},
		{"waiting IDs", b.get(keyBacklog), b.ids},
		{"acknowledged IDs", b.get(keyAckedN), b.ackorder},
	} {
		if c.bucket == nil {
			return fmt.Errorf("no bucket of %s", c.name)
		}
		if n := c.bucket.Stats().KeyN; uint64(n) != c.counter {
			return fmt.Errorf("%d %s stored, its counter says %d", n, c.name, c.counter)
		}
	}
	if b.acked == nil {
		return errors.New("no bucket of acknowledged IDs")
	}
	return nil
}

var errNotEmpty = errors.New("not empty")

// init creates the buckets in a new file.
func (f *File) init() error {
	err := f.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) != nil {
			return nil
		}
		if err := checkLayout(tx); err != nil {
			return err
		}
		for _, name := range [][]byte{bucketEvents, bucketIDs, bucketAcked, bucketAckOrder, bucketMeta} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		b := buckets(tx)
		if err := b.put(keyBacklog, 0); err != nil {
			return err
		}
		if err := b.put(keyAckedN, 0); err != nil {
			return err
		}
		return b.put(keyVersion, fileVersion)
	})
	return f.wrap(err)
}

// Append stores events and returns once they are committed to disk. An
// error leaves each event stored or not (after ctx ends, the commit may
// still happen): a retry is safe, since IDs are stored once.
func (f *File) Append(ctx context.Context, events []usage.Event) error {
	if len(events) == 0 {
		return nil
	}
	recs, err := encode(events)
	if err != nil {
		return err
	}
	r := &appendReq{recs: recs, done: make(chan error, 1)}
	f.mu.RLock()
	if f.closed {
		f.mu.RUnlock()
		return ErrClosed
	}
	select {
	case f.appends <- r:
		f.mu.RUnlock()
	case <-ctx.Done():
		f.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// appendReq is one Append waiting for the writer.
type appendReq struct {
	recs []record
	done chan error // buffered: the writer never waits
}

// record is an event ready to store: its ID, and its value with the first
// 8 bytes left for the append time.
type record struct {
	id  []byte
	val []byte
}

// encode marshals events, the first of each ID only.
func encode(events []usage.Event) ([]record, error) {
	recs := make([]record, 0, len(events))
	var seen map[string]bool
	if len(events) > 1 {
		seen = make(map[string]bool, len(events))
	}
	for i := range events {
		e := &events[i]
		if e.ID == "" {
			return nil, fmt.Errorf("usage outbox: event %d has no ID", i)
		}
		if seen != nil {
			if seen[e.ID] {
				continue
			}
			seen[e.ID] = true
		}
		val, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("usage outbox: event %s: %w", e.ID, err)
		}
		recs = append(recs, record{id: []byte(e.ID), val: append(make([]byte, 8, 8+len(val)), val...)})
	}
	return recs, nil
}

// write is the writer goroutine: it takes an Append, then every other one
// already queued (they arrived while the previous commit synced), and
// commits them together.
func (f *File) write() {
	defer f.writer.Done()
	var group []*appendReq
	for r := range f.appends {
		group = append(group[:0], r)
		n := len(r.recs)
	more:
		for n < maxGroup {
			select {
			case r, ok := <-f.appends:
				if !ok {
					break more
				}
				group = append(group, r)
				n += len(r.recs)
			default:
				break more
			}
		}
		if f.onCommit != nil {
			f.onCommit(len(group))
		}
		f.commit(group)
		clear(group)
	}
}

// commit stores a group of Appends in one transaction. Each Append is
// stored whole or not at all: one that would pass the bound gets ErrFull
// and the others are stored.
func (f *File) commit(group []*appendReq) {
	errs := make([]error, len(group))
	now := f.opts.Now()
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(now.UnixNano()))
	err := f.db.Update(func(tx *bolt.Tx) error {
		b := buckets(tx)
		// Keys only grow: pages filled full, not split at half.
		b.events.FillPercent = 0.95
		backlog := b.get(keyBacklog)
		for i, r := range group {
			errs[i] = nil
			fresh := 0
			for _, rec := range r.recs {
				if !b.known(rec.id, now, f.opts.DedupWindow) {
					fresh++
				}
			}
			if fresh == 0 {
				continue
			}
			if backlog+uint64(fresh) > uint64(f.opts.MaxEvents) {
				errs[i] = fmt.Errorf("%w: %d events waiting, %d more would pass the bound of %d", usage.ErrFull, backlog, fresh, f.opts.MaxEvents)
				continue
			}
			for _, rec := range r.recs {
				if b.known(rec.id, now, f.opts.DedupWindow) {
					continue
				}
				seq, err := b.events.NextSequence()
				if err != nil {
					return err
				}
				key := binary.BigEndian.AppendUint64(nil, seq)
				copy(rec.val, ts[:])
				if err := b.events.Put(key, rec.val); err != nil {
					return err
				}
				if err := b.ids.Put(rec.id, key); err != nil {
					return err
				}
				backlog++
			}
		}
		return b.put(keyBacklog, backlog)
	})
	for i, r := range group {
		if err != nil {
			r.done <- f.wrap(err)
		} else {
			r.done <- errs[i]
		}
	}
}

// Pending returns the oldest n waiting events. The file has one consumer,
// its process: calls before Ack return the same events.
func (f *File) Pending(ctx context.Context, n int) ([]usage.Event, error) {
	if n <= 0 {
		return nil, nil
	}
	var out []usage.Event
	err := f.db.View(func(tx *bolt.Tx) error {
		b := buckets(tx)
		out = make([]usage.Event, 0, min(uint64(n), b.get(keyBacklog)))
		c := b.events.Cursor()
		for k, v := c.First(); k != nil && len(out) < n; k, v = c.Next() {
			var e usage.Event
			if len(v) < 8 {
				return fmt.Errorf("%w: event %d: %d bytes", ErrCorrupt, u64(k), len(v))
			}
			if err := json.Unmarshal(v[8:], &e); err != nil {
				return fmt.Errorf("%w: event %d: %w", ErrCorrupt, u64(k), err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, f.wrap(err)
	}
	return out, nil
}

// Ack removes delivered events and remembers their IDs for DedupWindow.
func (f *File) Ack(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	now := f.opts.Now()
	window := f.opts.DedupWindow
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(now.UnixNano()))
	err := f.db.Update(func(tx *bolt.Tx) error {
		b := buckets(tx)
		backlog, ackedN := b.get(keyBacklog), b.get(keyAckedN)
		for _, id := range ids {
			idb := []byte(id)
			v := b.ids.Get(idb)
			if v == nil {
				continue
			}
			seq := bytes.Clone(v)
			if err := b.events.Delete(seq); err != nil {
				return err
			}
			if err := b.ids.Delete(idb); err != nil {
				return err
			}
			backlog--
			if window < 0 {
				continue
			}
			n, err := b.ackorder.NextSequence()
			if err != nil {
				return err
			}
			ord := binary.BigEndian.AppendUint64(nil, n)
			if err := b.ackorder.Put(ord, append(ts[:], idb...)); err != nil {
				return err
			}
			if err := b.acked.Put(idb, append(ord, ts[:]...)); err != nil {
				return err
			}
			ackedN++
		}
		// Forget the oldest acknowledged IDs: past the window, or past
		// MaxAcked.
		c := b.ackorder.Cursor()
		for k, v := c.First(); k != nil; k, v = c.First() {
			if ackedN <= uint64(f.opts.MaxAcked) && window > 0 && now.Sub(unixNano(v[:8])) < window {
				break
			}
			k, id := bytes.Clone(k), bytes.Clone(v[8:])
			if a := b.acked.Get(id); a != nil && bytes.Equal(a[:8], k) {
				if err := b.acked.Delete(id); err != nil {
					return err
				}
			}
			if err := b.ackorder.Delete(k); err != nil {
				return err
			}
			ackedN--
		}
		if err := b.put(keyAckedN, ackedN); err != nil {
			return err
		}
		return b.put(keyBacklog, backlog)
	})
	return f.wrap(err)
}

// Stats reads the backlog counter and the oldest event's append time.
func (f *File) Stats(ctx context.Context) (usage.Stats, error) {
	var s usage.Stats
	err := f.db.View(func(tx *bolt.Tx) error {
		b := buckets(tx)
		s.Backlog = int(b.get(keyBacklog))
		if _, v := b.events.Cursor().First(); len(v) >= 8 {
			s.Oldest = unixNano(v[:8])
		}
		return nil
	})
	return s, f.wrap(err)
}

// Close commits the Appends already queued, then closes the file. Later
// calls get ErrClosed.
func (f *File) Close() error {
	f.closeOnce.Do(func() {
		f.mu.Lock()
		f.closed = true
		close(f.appends)
		f.mu.Unlock()
		f.writer.Wait()
		f.closeErr = f.wrap(f.db.Close())
	})
	return f.closeErr
}

// Path is the file's path.
func (f *File) Path() string { return f.path }

func (f *File) wrap(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return ErrClosed
	default:
		return fmt.Errorf("usage outbox %s: %w", f.path, err)
	}
}

// fileBuckets are the buckets of one transaction.
type fileBuckets struct {
	events, ids, acked, ackorder, meta *bolt.Bucket
}

func buckets(tx *bolt.Tx) fileBuckets {
	return fileBuckets{
		events: tx.Bucket(bucketEvents), ids: tx.Bucket(bucketIDs),
		acked: tx.Bucket(bucketAcked), ackorder: tx.Bucket(bucketAckOrder),
		meta: tx.Bucket(bucketMeta),
	}
}

// known says whether id is waiting, or was acknowledged less than window
// before now.
func (b fileBuckets) known(id []byte, now time.Time, window time.Duration) bool {
	if b.ids.Get(id) != nil {
		return true
	}
	a := b.acked.Get(id)
	return a != nil && len(a) == 16 && window > 0 && now.Sub(unixNano(a[8:])) < window
}

func (b fileBuckets) get(key []byte) uint64 { return u64(b.meta.Get(key)) }

func (b fileBuckets) put(key []byte, n uint64) error {
	return b.meta.Put(key, binary.BigEndian.AppendUint64(nil, n))
}

// u64 decodes a big-endian counter; a missing one is 0.
func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func unixNano(b []byte) time.Time { return time.Unix(0, int64(binary.BigEndian.Uint64(b))) }
