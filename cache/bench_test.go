package cache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/identity"
)

// fileSource opens a file source of n subjects, sub-N with API key key-N.
func fileSource(b *testing.B, n int) *filesource.Source {
	b.Helper()
	var doc strings.Builder
	doc.WriteString("subjects:\n")
	for i := range n {
		fmt.Fprintf(&doc, "  - {id: sub-%d, plan: free, status: active, api_key_sha256: [%s]}\n", i, identity.HashKey(fmt.Sprintf("key-%d", i)))
	}
	path := filepath.Join(b.TempDir(), "entitlements.yaml")
	if err := os.WriteFile(path, []byte(doc.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	src, err := filesource.Open(path, filesource.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return src
}

// BenchmarkGetMissFile is a lookup that misses the cache and reads the file
// source (10,000 subjects): single flight, the source call under its
// timeout, and storing the answer.
func BenchmarkGetMissFile(b *testing.B) {
	src := fileSource(b, 10000)
	var tick atomic.Int64
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Each reading of the clock is a minute later, so every entry has
	// expired by the next lookup.
	c := New(src, Options{Now: func() time.Time { return t0.Add(time.Duration(tick.Add(1)) * time.Minute) }})
	keys := make([]entitlement.Key, 64)
	for i := range keys {
		keys[i] = entitlement.Key{Kind: entitlement.ByAPIKey, ID: identity.HashKey(fmt.Sprintf("key-%d", i*97))}
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, o, err := c.Get(ctx, keys[i%len(keys)]); o != entitlement.CacheMiss || err != nil {
			b.Fatal(o, err)
		}
		i++
	}
}

// BenchmarkGetHitFile is a hit among 10,000 cached API-key digests.
func BenchmarkGetHitFile(b *testing.B) {
	src := fileSource(b, 10000)
	c := New(src, Options{})
	keys := make([]entitlement.Key, 10000)
	ctx := context.Background()
	for i := range keys {
		keys[i] = entitlement.Key{Kind: entitlement.ByAPIKey, ID: identity.HashKey(fmt.Sprintf("key-%d", i))}
		c.Get(ctx, keys[i])
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, o, _ := c.Get(ctx, keys[i%len(keys)]); o != entitlement.CacheHit {
			b.Fatal(o)
		}
		i += 7
	}
}
