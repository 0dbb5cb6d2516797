package app

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// TestRedisCluster serves two replicas from a real three-node Redis Cluster:
// entitlements from the redis source (records written as the CLI writes
// them, through redissource.Put, under a hash-tagged prefix), quota counters in the leased store, spread over the
// nodes by subject, and an invalidation published on one node reaching both
// replicas.
func TestRedisCluster(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	seed := rc.Nodes[0].Addr()
	const subjects = 24
	const prefix = "{tollgate:ent}:"
	writer, err := redissource.New(redissource.Options{Client: rc.Client(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	set := func(i int, status entitlement.Status) {
		t.Helper()
		rec := redissource.Record{
			Entitlement:   entitlement.Entitlement{Subject: fmt.Sprintf("sub-%d", i), Plan: "pro", Status: status},
			APIKeyDigests: []string{identity.HashKey(fmt.Sprintf("key-%d", i))},
		}
		if err := writer.Put(context.Background(), rec); err != nil {
			t.Fatalf("put sub-%d: %v", i, err)
		}
	}
	for i := range subjects {
		set(i, entitlement.StatusActive)
	}

	path := quotaDemoDir(t, seed, 1000, 10)
	b, _ := os.ReadFile(path)
	s := strings.Replace(string(b), "redis: {address: "+seed+",", "redis: {address: "+seed+", cluster: true,", 1)
	s = strings.Replace(s, "  source: file\n", "  source: redis\n  redis: {address: "+seed+", cluster: true, timeout: 150ms, prefix: \""+prefix+"\"}\n", 1)
	s = strings.Replace(s, "    timeout: 50ms\n", "    timeout: 150ms\n", 1) // with the source's: room for -race on a loaded machine
	if s == string(b) {
		t.Fatal("config not rewritten")
	}
	writeFile(t, path, s)
	replicas := []*server{startServe(t, path), startServe(t, path)}

	for i := range subjects {
		key := map[string]string{"x-api-key": fmt.Sprintf("key-%d", i)}
		for r, srv := range replicas {
			if got := code(srv.check(t, "GET", "/v1/search", key)); got != "ok" {
				t.Fatalf("replica %d, sub-%d: %s, want ok", r, i, got)
			}
		}
	}
	// The subjects' quota counters are hash-tagged by subject: they land
	// on every node, and the cluster client follows them there.
	ctx := context.Background()
	for _, n := range rc.Nodes {
		keys, err := n.Client().Keys(ctx, "tollgate:q:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) == 0 {
			t.Errorf("node %s holds no quota counter", n.Addr())
		}
	}
	// A payment fails: both replicas refuse at once, through pub/sub.
	for _, srv := range replicas {
		waitFor(t, func() bool { return strings.Contains(srv.logs.String(), "subscribed to entitlement invalidations") })
	}
	set(5, entitlement.StatusPastDue)
	for r, srv := range replicas {
		waitFor(t, func() bool {
			return code(srv.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "key-5"})) == "payment_failed"
		})
		if v := metricValue(t, srv, `tollgate_entitlement_invalidations_total{via="pubsub"}`); v == "" || v == "0" {
			t.Errorf("replica %d: the invalidation did not come by pub/sub", r)
		}
	}
}
