package authz

import (
	"context"
	"sync/atomic"
	"testing"
)

// OneRequest serves Checks as Register's handler does (decode, serve,
// release), always through the same Request: what a pooled Request goes
// through when the pool hands it back for Check after Check, made
// certain (a sync.Pool may drop what it is given, and does at random
// under -race). Serve ends as release does, without the pool; keep it in
// step with release.
type OneRequest struct{ q Request }

// Serve decodes b into the Request and serves it.
func (o *OneRequest) Serve(ctx context.Context, s *Server, b []byte) (*Encoded, error) {
	q := &o.q
	defer func() {
		q.r.reset()
		q.res = Result{}
		q.reuse = false
	}()
	if err := q.decode(b); err != nil {
		return nil, err
	}
	return s.serve(ctx, q)
}

// CountingIDs makes every decision id until the test ends a new one
// (1, 2, 3…), so that an id read after a later Check shows whether its
// memory was reused. The package's other tests have every id alike.
func CountingIDs(t testing.TB) {
	old := idBits
	var n atomic.Uint64
	idBits = func() (uint64, uint64) { return 0, n.Add(1) }
	t.Cleanup(func() { idBits = old })
}
