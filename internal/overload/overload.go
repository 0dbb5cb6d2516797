// Package overload sheds work instead of queueing it. When more calls are
// in flight than the limit allows, a new call is answered at once by a shed
// function (for tollgate: a 503 with Retry-After) rather than waiting behind
// the others until Envoy's timeout fires and the caller gets nothing useful.
package overload

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
)

// Limiter bounds calls in flight. The zero value is not usable; use New.
type Limiter struct {
	max      int64
	inflight atomic.Int64
	shed     atomic.Int64
}

// New returns a limiter for max calls in flight; max ≤ 0 means no limit.
func New(max int) *Limiter { return &Limiter{max: int64(max)} }

// Acquire takes a slot, or reports false when none is free.
func (l *Limiter) Acquire() bool {
	if l.max <= 0 {
		return true
	}
	if l.inflight.Add(1) > l.max {
		l.inflight.Add(-1)
		l.shed.Add(1)
		return false
	}
	return true
}

// Release gives a slot back.
func (l *Limiter) Release() {
	if l.max > 0 {
		l.inflight.Add(-1)
	}
}

// InFlight is the number of calls holding a slot.
func (l *Limiter) InFlight() int64 { return l.inflight.Load() }

// Shed is the number of calls refused so far.
func (l *Limiter) Shed() int64 { return l.shed.Load() }

// UnaryInterceptor applies the limit to the gRPC methods for which shed
// returns an answer: those calls are answered by shed when the limit is
// reached; other methods (health checks) are never limited.
func (l *Limiter) UnaryInterceptor(shed func(ctx context.Context, method string, req any) (any, bool)) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !l.Acquire() {
			if resp, ok := shed(ctx, info.FullMethod, req); ok {
				return resp, nil
			}
			return handler(ctx, req) // not a limited method
		}
		defer l.Release()
		return handler(ctx, req)
	}
}
