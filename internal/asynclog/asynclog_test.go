package asynclog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// gateSink is a sink whose writes block until the test opens the gate.
type gateSink struct {
	entered chan struct{} // receives once per Write that has started
	gate    chan struct{} // closed by the test to let writes through
	mu      sync.Mutex
	buf     bytes.Buffer
	err     error // returned by every write once set
}

func newGateSink() *gateSink {
	return &gateSink{entered: make(chan struct{}, 1000), gate: make(chan struct{})}
}

func (s *gateSink) Write(p []byte) (int, error) {
	s.entered <- struct{}{}
	<-s.gate
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, s.err
	}
	return s.buf.Write(p)
}

func (s *gateSink) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.buf.String() }

func TestWritesArriveWholeAndInOrder(t *testing.T) {
	var sink bytes.Buffer
	w := New(&sink, 0)
	var want strings.Builder
	for i := range 1000 {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		if n, err := w.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := sink.String(); got != want.String() {
		t.Errorf("sink got %d bytes, want %d in order", len(got), want.Len())
	}
	if got := w.Dropped(); got != 0 {
		t.Errorf("dropped = %d, want 0", got)
	}
}

// TestStalledSinkDropsAndCounts: with the sink blocked, writes keep
// returning at once; what does not fit the queue is dropped and counted, and
// what fits is written once the sink moves again.
func TestStalledSinkDropsAndCounts(t *testing.T) {
	sink := newGateSink()
	const lineLen = 9         // "line 000\n"
	w := New(sink, 5*lineLen) // room for five lines
	line := func(i int) []byte { return fmt.Appendf(nil, "line %03d\n", i) }

	// The first line is taken by the writer goroutine, which then blocks.
	w.Write(line(0))
	<-sink.entered
	// Five more fit the queue; the next ten are dropped.
	for i := 1; i <= 15; i++ {
		if n, err := w.Write(line(i)); n != lineLen || err != nil {
			t.Fatalf("Write %d = %d, %v; want %d, nil", i, n, err, lineLen)
		}
	}
	if got, want := w.Dropped(), int64(10); got != want {
		t.Errorf("dropped while stalled = %d, want %d", got, want)
	}
	close(sink.gate)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := 0; i <= 5; i++ {
		want.Write(line(i))
	}
	if got := sink.String(); got != want.String() {
		t.Errorf("sink got\n%s\nwant\n%s", got, want.String())
	}
}

// TestCloseIsBoundedByCtx: a sink that never returns cannot hold Close.
func TestCloseIsBoundedByCtx(t *testing.T) {
	sink := newGateSink()
	defer close(sink.gate) // let the goroutine finish after the test
	w := New(sink, 0)
	w.Write([]byte("stuck\n"))
	<-sink.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := w.Close(ctx); !errors.Is(got, context.Canceled) {
		t.Errorf("Close with a stalled sink = %v, want context.Canceled", got)
	}
	w.Write([]byte("after close\n"))
	if got, want := w.Dropped(), int64(1); got != want {
		t.Errorf("dropped after close = %d, want %d", got, want)
	}
}

// TestSinkErrorsCountAsDropped: a closed stderr (EPIPE) loses lines; they
// are counted, and the Writer carries on.
func TestSinkErrorsCountAsDropped(t *testing.T) {
	sink := newGateSink()
	sink.err = errors.New("broken pipe")
	close(sink.gate)
	w := New(sink, 0)
	w.Write([]byte("a\nb\n"))
	w.Write([]byte("c\n"))
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := w.Dropped(), int64(3); got != want {
		t.Errorf("dropped = %d, want %d", got, want)
	}
	if err := w.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestConcurrentWritersLoseNoCount: every line is either written whole or
// counted as dropped, however writers and the sink interleave.
func TestConcurrentWritersLoseNoCount(t *testing.T) {
	var sink lockedBuffer
	w := New(&sink, 256)
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				w.Write(fmt.Appendf(nil, "writer %d line %04d\n", g, i))
			}
		})
	}
	wg.Wait()
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	written := strings.Split(strings.TrimSuffix(sink.String(), "\n"), "\n")
	if sink.String() == "" {
		written = nil
	}
	for _, l := range written {
		var g, i int
		if _, err := fmt.Sscanf(l, "writer %d line %04d", &g, &i); err != nil || len(l) != len("writer 0 line 0000") {
			t.Fatalf("torn line %q", l)
		}
	}
	if got, want := int64(len(written))+w.Dropped(), int64(writers*each); got != want {
		t.Errorf("written %d + dropped %d = %d, want %d", len(written), w.Dropped(), got, want)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestSlogLinesStayWhole: slog's JSON handler writes each record once, so a
// record is never split across a drop.
func TestSlogLinesStayWhole(t *testing.T) {
	var sink lockedBuffer
	w := New(&sink, 0)
	log := slog.New(slog.NewJSONHandler(w, nil))
	log.Info("decision", "code", "invalid_credentials", "status", 401)
	w.Close(context.Background())
	if got := sink.String(); !strings.HasPrefix(got, `{"time":`) || !strings.HasSuffix(got, `"code":"invalid_credentials","status":401}`+"\n") {
		t.Errorf("got %q", got)
	}
}

// decisionAttrs is what authz logs for a denial.
var decisionAttrs = []slog.Attr{
	slog.String("request_id", "0b6c3f1e-93a4-4d5e-9b1a-2f7d8c9e0a1b"),
	slog.String("decision", "deny"),
	slog.String("code", "invalid_credentials"),
	slog.Int("status", 401),
	slog.String("method", "GET"),
	slog.String("path", "/v1/search"),
	slog.String("route", "search"),
	slog.String("subject", ""),
	slog.String("plan", ""),
	slog.Int64("latency_us", 42),
	slog.String("credential", "api_key"),
	slog.String("key_id", "9f8cfdb1"),
	slog.String("cache", "negative_hit"),
}

// drainedPipe is a pipe whose other end a goroutine reads, as a log
// collector reads a container's stderr.
func drainedPipe(b *testing.B) *os.File {
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	go io.Copy(io.Discard, r)
	b.Cleanup(func() { w.Close(); r.Close() })
	return w
}

// BenchmarkDecisionLog is the cost a denial pays for its log line: slog's
// JSON handler straight into a sink, and through the asynchronous Writer
// (a discarding sink, a pipe someone reads, and a stalled sink where every
// line is dropped).
func BenchmarkDecisionLog(b *testing.B) {
	stalled := newGateSink()
	b.Cleanup(func() { close(stalled.gate) })
	sinks := []struct {
		name string
		w    func() (io.Writer, func())
	}{
		{"sync-discard", func() (io.Writer, func()) { return io.Discard, func() {} }},
		{"async-discard", func() (io.Writer, func()) {
			w := New(io.Discard, 0)
			return w, func() { w.Close(context.Background()) }
		}},
		{"sync-pipe", func() (io.Writer, func()) { return drainedPipe(b), func() {} }},
		{"async-pipe", func() (io.Writer, func()) {
			w := New(drainedPipe(b), 0)
			return w, func() { w.Close(context.Background()) }
		}},
		{"async-stalled", func() (io.Writer, func()) {
			w := New(stalled, 0)
			return w, func() { b.ReportMetric(float64(w.Dropped())/float64(b.N), "dropped/op") }
		}},
	}
	for _, s := range sinks {
		b.Run(s.name, func(b *testing.B) {
			w, done := s.w()
			log := slog.New(slog.NewJSONHandler(w, nil))
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					log.LogAttrs(ctx, slog.LevelInfo, "decision", decisionAttrs...)
				}
			})
			b.StopTimer()
			done()
		})
	}
}

// countingSink records each Write as one batch.
type countingSink struct {
	mu      sync.Mutex
	batches []string
}

func (s *countingSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, string(p))
	return len(p), nil
}

// TestFloodIsOneWritePerLinger: after a write to the sink the writer waits
// for the linger before taking the next batch, so lines queued meanwhile
// reach the sink in one Write (one system call) rather than one each; a
// line alone is written at once, and Close ends a linger.
func TestFloodIsOneWritePerLinger(t *testing.T) {
	sink := &countingSink{}
	lingering := make(chan time.Duration)
	release := make(chan time.Time)
	w := newWriter(sink, 0, func(d time.Duration) <-chan time.Time {
		lingering <- d
		return release
	})
	w.Write([]byte("first\n"))
	select {
	case d := <-lingering:
		if d != Linger {
			t.Errorf("lingered %v, want %v", d, Linger)
		}
	case <-time.After(time.Minute):
		t.Fatal("the writer did not linger after writing a batch")
	}
	for i := range 100 {
		w.Write(fmt.Appendf(nil, "line %d\n", i))
	}
	release <- time.Time{}                                // the linger ends
	<-lingering                                           // the writer lingers after the second batch
	if err := w.Close(context.Background()); err != nil { // and Close ends that linger
		t.Fatal(err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if got, want := len(sink.batches), 2; got != want {
		t.Fatalf("%d writes to the sink, want %d: %q", got, want, sink.batches)
	}
	if got, want := sink.batches[0], "first\n"; got != want {
		t.Errorf("first batch %q, want %q", got, want)
	}
	if got, want := strings.Count(sink.batches[1], "\n"), 100; got != want {
		t.Errorf("second batch has %d lines, want %d", got, want)
	}
}
