package redissource

import (
	"context"
	"errors"
	"testing"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// BenchmarkLookup measures one lookup against a real local Redis: the hit
// path (a record) and the miss path (nothing stored), by subject and by key.
func BenchmarkLookup(b *testing.B) {
	srv := redistest.Start(b)
	s := newSource(b, srv.Client(), Options{Timeout: 150e6})
	mustPut(b, s, rec("acme", entitlement.StatusActive, digestA))
	cases := []struct {
		name string
		key  entitlement.Key
		err  error
	}{
		{"subject/hit", bySubject("acme"), nil},
		{"subject/miss", bySubject("nobody"), entitlement.ErrNotFound},
		{"key/hit", byKey(digestA), nil},
		{"key/miss", byKey(digestC), entitlement.ErrNotFound},
	}
	ctx := context.Background()
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Lookup(ctx, tc.key); !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
					b.Fatalf("lookup: got %v, want %v", err, tc.err)
				}
			}
		})
	}
}
