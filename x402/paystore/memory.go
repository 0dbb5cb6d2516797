package paystore

import (
	"cmp"
	"container/heap"
	"context"
	"slices"
	"sync"
	"time"
)

// Memory is a Store for a single replica: bounded, safe for concurrent use,
// one mutex per call. Records are forgotten once their Expires has passed
// (read from now). When it holds maxEntries records, Claim first drops
// expired ones, then the finished (Settled or Failed) record that expires
// soonest; it never drops a Pending or Unknown record before it expires:
// when only those are left, Claim returns ErrFull.
type Memory struct {
	now func() time.Time
	max int

	mu     sync.Mutex
	byKey  map[string]*memEntry
	byID   map[string]*memEntry
	open   expiryHeap // Pending and Unknown
	closed expiryHeap // Settled and Failed
	seq    uint64     // orders Unknown records by their last attempt (ties of the clock included)
}

type memEntry struct {
	rec   Record
	index int    // in its heap
	seq   uint64 // when it last became Unknown
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty store of at most maxEntries records (at least
// 1), reading time from now. Each record holds its payload (at most
// x402.MaxHeaderBytes), so maxEntries × about 10 KiB bounds its memory.
func NewMemory(now func() time.Time, maxEntries int) *Memory {
	return &Memory{
		now:   now,
		max:   max(maxEntries, 1),
		byKey: map[string]*memEntry{},
		byID:  map[string]*memEntry{},
	}
}

// Len is how many records the store holds, expired ones not yet dropped
// included.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byKey)
}

// Claim implements Store.
func (m *Memory) Claim(_ context.Context, rec Record) (Record, bool, error) {
	if err := checkClaim(rec); err != nil {
		return Record{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if e := m.lookup(rec.Key, now); e != nil {
		return e.rec, false, nil
	}
	if rec.PaymentID != "" {
		if e := m.byID[rec.PaymentID]; e != nil {
			if !expired(e, now) {
				return e.rec, false, nil
			}
			m.remove(e)
		}
	}
	if len(m.byKey) >= m.max && !m.makeRoom(now) {
		return Record{}, false, ErrFull
	}
	rec.State, rec.Attempts, rec.Receipt, rec.Reason, rec.LastAttempt = Pending, 0, "", "", time.Time{}
	e := &memEntry{rec: rec}
	m.byKey[rec.Key] = e
	if rec.PaymentID != "" {
		m.byID[rec.PaymentID] = e
	}
	heap.Push(&m.open, e)
	return Record{}, true, nil
}

// Get implements Store.
func (m *Memory) Get(_ context.Context, key string) (Record, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.lookup(key, m.now()); e != nil {
		return e.rec, true, nil
	}
	return Record{}, false, nil
}

// Finish implements Store.
func (m *Memory) Finish(_ context.Context, key string, state State, receipt, reason string) (Record, error) {
	if err := checkFinish(state, reason); err != nil {
		return Record{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	e := m.lookup(key, now)
	if e == nil {
		return Record{}, ErrNotFound
	}
	before := e.rec
	applies, counts := finishApplies(before.State, before.Reason, reason)
	if !applies {
		return before, nil
	}
	wasOpen := isOpen(e.rec.State)
	e.rec.State, e.rec.Receipt, e.rec.Reason, e.rec.LastAttempt = state, receipt, reason, now
	if counts {
		e.rec.Attempts++
	}
	if state == Unknown {
		m.seq++
		e.seq = m.seq
	}
	if nowOpen := isOpen(state); nowOpen != wasOpen {
		heap.Remove(m.heapOf(wasOpen), e.index)
		heap.Push(m.heapOf(nowOpen), e)
	}
	return before, nil
}

// Release implements Store.
func (m *Memory) Release(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.lookup(key, m.now())
	if e == nil {
		return nil
	}
	if e.rec.State != Pending {
		return ErrNotPending
	}
	m.remove(e)
	return nil
}

// Unknowns implements Store. It costs a pass over the Pending and Unknown
// records.
func (m *Memory) Unknowns(_ context.Context, n int) ([]Record, error) {
	n = clampN(n)
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var found []*memEntry
	for _, e := range m.open {
		if e.rec.State == Unknown && !expired(e, now) {
			found = append(found, e)
		}
	}
	slices.SortFunc(found, func(a, b *memEntry) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]Record, 0, min(n, len(found)))
	for _, e := range found[:min(n, len(found))] {
		out = append(out, e.rec)
	}
	return out, nil
}

// lookup returns the live record under key, dropping it if it expired.
func (m *Memory) lookup(key string, now time.Time) *memEntry {
	e := m.byKey[key]
	if e == nil {
		return nil
	}
	if expired(e, now) {
		m.remove(e)
		return nil
	}
	return e
}

// makeRoom drops expired records, then the finished one that expires
// soonest; false when only live Pending and Unknown records are left.
func (m *Memory) makeRoom(now time.Time) bool {
	for _, h := range []*expiryHeap{&m.open, &m.closed} {
		for h.Len() > 0 && expired((*h)[0], now) {
			m.remove((*h)[0])
		}
	}
	if len(m.byKey) < m.max {
		return true
	}
	if m.closed.Len() > 0 {
		m.remove(m.closed[0])
		return true
	}
	return false
}

func (m *Memory) remove(e *memEntry) {
	delete(m.byKey, e.rec.Key)
	if id := e.rec.PaymentID; id != "" && m.byID[id] == e {
		delete(m.byID, id)
	}
	heap.Remove(m.heapOf(isOpen(e.rec.State)), e.index)
}

func (m *Memory) heapOf(open bool) *expiryHeap {
	if open {
		return &m.open
	}
	return &m.closed
}

func isOpen(s State) bool { return s == Pending || s == Unknown }

func expired(e *memEntry, now time.Time) bool { return !now.Before(e.rec.Expires) }

// expiryHeap orders entries by Expires, soonest first (container/heap).
type expiryHeap []*memEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].rec.Expires.Before(h[j].rec.Expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*memEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}
