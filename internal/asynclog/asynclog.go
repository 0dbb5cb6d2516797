// Package asynclog keeps a slow log sink off the request path. A Writer
// queues each write in a bounded buffer and returns at once; one goroutine
// hands the queued bytes to the sink. When the sink is slower than the
// writers (a full pipe, a stalled reader, a closed stderr) the queue fills and
// new lines are dropped and counted, instead of blocking the caller.
//
// It is made for slog's JSON and text handlers, which format a record in the
// caller's goroutine and write it with a single Write call ending in a
// newline: a line is kept whole or dropped whole.
//
// Costs: a Write copies p into the queue under a mutex (no allocation once
// the queue has grown to its working size) and wakes the writer goroutine.
// After each write to the sink the writer lingers (Linger, 10 ms) before
// taking the next batch, so that a flood of lines costs one write system
// call per linger rather than one per line (a line alone is written at
// once; Close does not wait for a linger). Memory is bounded by about twice MaxBytes (the queue and the batch being
// written; a buffer's capacity may round up past MaxBytes as it grows). All methods are safe for concurrent use.
package asynclog

import (
	"bytes"
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxBytes is the queue bound when New is given 0: about three
// thousand decision lines.
const DefaultMaxBytes = 1 << 20

// Linger is how long the writer waits after writing a batch before taking
// the next one. At 10 ms a queue of DefaultMaxBytes overflows only past
// about 100 MB of log a second.
const Linger = 10 * time.Millisecond

// Writer is a bounded asynchronous io.Writer. Use New; Close it to flush.
type Writer struct {
	sink io.Writer
	max  int

	mu      sync.Mutex
	pending []byte // queued bytes, whole lines
	closed  bool

	spare   []byte        // the other buffer; only run touches it
	wake    chan struct{} // capacity 1: "pending has something, or closed"
	closing chan struct{} // closed by the first Close: stop lingering
	done    chan struct{} // closed when run has returned
	dropped atomic.Int64
	// after is time.After, or a test's hand-driven clock.
	after func(time.Duration) <-chan time.Time
}

// New starts a Writer in front of sink that queues at most maxBytes
// (DefaultMaxBytes when maxBytes ≤ 0).
func New(sink io.Writer, maxBytes int) *Writer {
	return newWriter(sink, maxBytes, time.After)
}

// newWriter is New with the linger's clock.
func newWriter(sink io.Writer, maxBytes int, after func(time.Duration) <-chan time.Time) *Writer {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	w := &Writer{sink: sink, max: maxBytes, wake: make(chan struct{}, 1), closing: make(chan struct{}), done: make(chan struct{}), after: after}
	go w.run()
	return w
}

// Write queues a copy of p and returns at once. When the queue has no room
// for p, or the Writer is closed, p is dropped and counted. It never fails:
// a log line must not turn into an error for the caller.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed || len(w.pending)+len(p) > w.max {
		w.mu.Unlock()
		w.dropped.Add(lines(p))
		return len(p), nil
	}
	w.pending = append(w.pending, p...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default: // already woken
	}
	return len(p), nil
}

// Dropped is how many lines were not written: dropped because the queue was
// full or the Writer closed, or refused by the sink with an error.
func (w *Writer) Dropped() int64 { return w.dropped.Load() }

// Close stops taking lines and waits until the queue is written out or ctx
// is done, whichever comes first; it returns ctx's error in the second case,
// leaving the writer goroutine blocked in the sink (a stalled sink cannot
// hold up the exit). Closing twice is fine.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.closing)
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run writes queued bytes to the sink, one batch at a time, swapping the
// queue with a spare buffer so that writers append while the sink works, and
// lingers after each write so that lines arriving meanwhile go in one batch.
func (w *Writer) run() {
	defer close(w.done)
	for range w.wake {
		for {
			w.mu.Lock()
			batch, closed := w.pending, w.closed
			w.pending = w.spare[:0]
			w.mu.Unlock()
			if len(batch) == 0 {
				w.spare = batch
				if closed {
					return
				}
				break
			}
			n, err := w.sink.Write(batch)
			if err != nil && n < len(batch) {
				w.dropped.Add(lines(batch[max(n, 0):]))
			}
			w.spare = batch[:0]
			if !closed {
				select {
				case <-w.after(Linger):
				case <-w.closing:
				}
			}
		}
	}
}

// lines counts the lines in p; a line without its newline counts as one.
func lines(p []byte) int64 {
	n := int64(bytes.Count(p, []byte{'\n'}))
	if len(p) > 0 && p[len(p)-1] != '\n' {
		n++
	}
	return n
}
