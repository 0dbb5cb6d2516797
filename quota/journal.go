package quota

import (
	"crypto/rand"
	"encoding/hex"
	"math"
	"strings"
	"sync"
	"time"
)

// Delta is a change to one counter that a replica copies into a shared
// store: spends counted locally while the store was down, and adjustments.
type Delta struct {
	Group, Key string
	// N is the change: negative for a release.
	N     int64
	Reset time.Time
	// Writer and Seq make the copy idempotent: the store applies a delta
	// only if Seq is above the last Seq of Writer applied to the counter.
	// An empty Writer applies it unconditionally.
	Writer string
	Seq    uint64
}

// journal holds the changes a replica owes the shared store, per counter,
// and hands them out so that each reaches the store exactly once.
//
// Per counter it keeps at most one batch under a sequence number (out,
// seq), which is sent, perhaps more than once, until the store acknowledges
// it, and the changes that came after it (pending), which become the next
// batch, under a higher number, only then. Because a counter's batches are
// applied in order and the store remembers the last number it applied, a
// batch sent again after a lost reply is skipped if it was applied.
type journal struct {
	now    func() time.Time
	writer string

	mu      sync.Mutex
	seq     uint64
	entries map[journalKey]*journalEntry
}

type journalKey struct {
	group, key string
	reset      int64 // unix ns
}

type journalEntry struct {
	reset   time.Time
	pending int64  // changes not yet in a batch
	out     int64  // the batch under seq
	seq     uint64 // 0: no batch
	busy    bool   // a sender holds the batch
}

func newJournal(now func() time.Time) *journal {
	var id [8]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	return &journal{now: now, writer: hex.EncodeToString(id[:]), entries: map[journalKey]*journalEntry{}}
}

// add records n more on a counter.
func (j *journal) add(group, key string, reset time.Time, n int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	k := journalKey{group, key, reset.UnixNano()}
	j.addLocked(&k, reset, n)
}

// addLocked records n more on counter *k. A new entry keeps copies of k's
// group and key, and *k is set to them.
func (j *journal) addLocked(k *journalKey, reset time.Time, n int64) *journalEntry {
	e := j.entries[*k]
	if e == nil {
		if n == 0 {
			return nil
		}
		e = &journalEntry{reset: reset}
		// The entry outlives the call: copies of the caller's group and
		// key, which it may reuse (see Store). The background copy
		// (take) sends these.
		k.group, k.key = strings.Clone(k.group), strings.Clone(k.key)
		j.entries[*k] = e
	}
	e.pending = addSigned(e.pending, n)
	if e.seq == 0 && e.pending == 0 {
		delete(j.entries, *k) // netted to nothing
		return nil
	}
	return e
}

// addTake records n more on a counter and takes its batch to send, unless
// another sender holds one (which then sends this change after its own).
func (j *journal) addTake(group, key string, reset time.Time, n int64) (Delta, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	k := journalKey{group, key, reset.UnixNano()}
	e := j.addLocked(&k, reset, n)
	if e == nil {
		return Delta{}, false
	}
	return j.takeLocked(k, e)
}

func (j *journal) takeLocked(k journalKey, e *journalEntry) (Delta, bool) {
	if e.busy {
		return Delta{}, false
	}
	if e.seq == 0 {
		if e.pending == 0 {
			return Delta{}, false
		}
		j.seq++
		e.seq, e.out, e.pending = j.seq, e.pending, 0
	}
	e.busy = true
	return Delta{Group: k.group, Key: k.key, N: e.out, Reset: e.reset, Writer: j.writer, Seq: e.seq}, true
}

// take takes up to limit batches to send, of counters no other sender
// holds, and drops what it owes for windows that have ended.
func (j *journal) take(limit int) []Delta {
	now := j.now()
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Delta
	for k, e := range j.entries {
		if len(out) == limit {
			break
		}
		if e.busy {
			continue
		}
		if !now.Before(e.reset) {
			delete(j.entries, k) // the window is over: nothing to copy into
			continue
		}
		if d, ok := j.takeLocked(k, e); ok {
			out = append(out, d)
		}
	}
	return out
}

// done hands back batches taken to send; ok: the store applied (or had
// applied) them. It reports whether any of their counters still owes
// something: a batch that failed, or changes that came meanwhile.
func (j *journal) done(ds []Delta, ok bool) (more bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, d := range ds {
		k := journalKey{d.Group, d.Key, d.Reset.UnixNano()}
		e := j.entries[k]
		if e == nil || e.seq != d.Seq {
			continue
		}
		e.busy = false
		if !ok {
			more = true
			continue
		}
		e.seq, e.out = 0, 0
		if e.pending == 0 {
			delete(j.entries, k)
		} else {
			more = true
		}
	}
	return more
}

// owed is what the journal still owes a counter's window: batches not
// acknowledged and changes not yet in one.
func (j *journal) owed(group, key string, reset time.Time) int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if e := j.entries[journalKey{group, key, reset.UnixNano()}]; e != nil {
		return addSigned(e.out, e.pending)
	}
	return 0
}

// units is how many units ds move, counted by size whatever the sign.
func units(ds []Delta) int64 {
	var n int64
	for _, d := range ds {
		a := d.N
		if a < 0 {
			a = -a
			if a < 0 { // math.MinInt64
				a = math.MaxInt64
			}
		}
		n = addSat(n, a)
	}
	return n
}
