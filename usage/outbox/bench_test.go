package outbox

import (
	"context"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/tollgate-authz/tollgate/internal/redistest"
	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/usage/outbox/outboxtest"
)

// benchEvents are n distinct events, made before the timer starts.
func benchEvents(n int) []usage.Event {
	out := make([]usage.Event, n)
	for i := range out {
		out[i] = outboxtest.Event(0)
		out[i].ID = usage.NewID("req-"+strconv.Itoa(i), "res-1")
	}
	return out
}

func benchFile(b *testing.B) *File {
	f := openTestFile(b, filepath.Join(b.TempDir(), "outbox.db"), FileOptions{MaxEvents: 1 << 30})
	return f
}

// One settlement at a time: each Append is a commit (fsyncs included).
func BenchmarkFileAppend(b *testing.B) {
	f := benchFile(b)
	events := benchEvents(b.N)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := f.Append(ctx, events[i:i+1]); err != nil {
			b.Fatal(err)
		}
	}
}

// A batch of 100 events per Append.
func BenchmarkFileAppendBatch(b *testing.B) {
	const batch = 100
	f := benchFile(b)
	events := benchEvents(b.N * batch)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := f.Append(ctx, events[i*batch:(i+1)*batch]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/event")
}

// Many settlements at once, one event each: queued Appends share commits.
func BenchmarkFileAppendParallel(b *testing.B) {
	f := benchFile(b)
	events := benchEvents(b.N)
	var commits, next atomic.Int64
	f.onCommit = func(int) { commits.Add(1) }
	ctx := context.Background()
	b.SetParallelism(16) // settlements are I/O-bound goroutines, not CPU-bound
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			if err := f.Append(ctx, events[i:i+1]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/float64(max(commits.Load(), 1)), "appends/commit")
}

// Pending then Ack of 100 events, the exporter's loop.
func BenchmarkFilePendingAck(b *testing.B) {
	const batch = 100
	f := benchFile(b)
	events := benchEvents(b.N * batch)
	ctx := context.Background()
	for i := 0; i < len(events); i += 10_000 {
		if err := f.Append(ctx, events[i:min(i+10_000, len(events))]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		got, err := f.Pending(ctx, batch)
		if err != nil || len(got) != batch {
			b.Fatalf("Pending = %d, %v", len(got), err)
		}
		if err := f.Ack(ctx, outboxtest.IDs(got)); err != nil {
			b.Fatal(err)
		}
	}
}

// One event per Append to a real Redis on loopback.
func BenchmarkRedisAppend(b *testing.B) {
	ob := NewRedis(redistest.Start(b).Client(), RedisOptions{MaxEvents: 1 << 30})
	events := benchEvents(b.N)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := ob.Append(ctx, events[i:i+1]); err != nil {
			b.Fatal(err)
		}
	}
}
