package main

import (
	"context"
	"math"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/redis/go-redis/v9"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

func TestHistogramQuantiles(t *testing.T) {
	h := NewHistogram()
	for i := 1; i <= 100000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		got := float64(h.Quantile(q)) / float64(time.Microsecond)
		want := q * 100000
		if math.Abs(got-want)/want > 0.016 {
			t.Errorf("q%v = %.0f µs, want %.0f µs within 1.6%%", q, got, want)
		}
	}
	for ns := int64(0); ns < 1<<20; ns += 7 {
		if b := bucket(ns); lower(b) > ns || lower(b+1) <= ns {
			t.Fatalf("%d ns in bucket %d = [%d, %d)", ns, b, lower(b), lower(b+1))
		}
	}
}

func TestParseDecision(t *testing.T) {
	for _, tt := range []struct {
		resp *authv3.CheckResponse
		kind Kind
	}{
		{&authv3.CheckResponse{Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, KindAllow},
		{&authv3.CheckResponse{Status: &rpcstatus.Status{Code: 7, Message: "feature_not_in_plan: …"}, HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: "{}"}}}, KindDeny402},
		{&authv3.CheckResponse{Status: &rpcstatus.Status{Code: 16}, HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{}}}, KindUnknown},
	} {
		b, err := proto.Marshal(tt.resp)
		if err != nil {
			t.Fatal(err)
		}
		var m rawMsg
		if err := m.parse(b); err != nil {
			t.Fatal(err)
		}
		for k := KindAllow; k < numKinds; k++ {
			if got := decisionFits(k, &m); got != (k == tt.kind) {
				t.Errorf("%v: fits %v = %v", tt.resp, k, got)
			}
		}
	}
}

// TestMix: the generated requests follow the mix and only use subjects
// that exist, with the decision each kind is made for.
func TestMix(t *testing.T) {
	reqs := genRequests(20000, 1000, Mix{Deny: 0.1, Unknown: 0.05}, 1)
	n := map[Kind]int{}
	for _, r := range reqs {
		n[r.Kind]++
	}
	for k, want := range map[Kind]float64{KindAllow: 0.85, KindDeny402: 0.1, KindUnknown: 0.05} {
		if got := float64(n[k]) / float64(len(reqs)); math.Abs(got-want) > 0.01 {
			t.Errorf("%v: %.3f of requests, want %.2f", k, got, want)
		}
	}
}

// TestFixtureDecisions decides every kind of generated request with the
// generated config, as `tollgate serve` would, so that a change to the
// config format or the policy shows here rather than as a failed bench run.
func TestFixtureDecisions(t *testing.T) {
	path, err := writeFixture(t.TempDir(), 200, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	src, err := filesource.Open(cfg.Entitlements.File.Path, filesource.Options{Check: cfg.Policy.CheckEntitlement})
	if err != nil {
		t.Fatal(err)
	}
	checkFixtureDecisions(t, cfg, src)
}

// TestRedisFixtureDecisions is TestFixtureDecisions with the records
// loadRedis writes into a real Redis and the config writeRedisFixture
// writes, read through the redis source: -scale-sources redis measures
// the decisions the file source gets.
func TestRedisFixtureDecisions(t *testing.T) {
	rd := redistest.Start(t)
	ctx := context.Background()
	if err := loadRedis(ctx, rd.Addr(), 200); err != nil {
		t.Fatal(err)
	}
	path, err := writeRedisFixture(t.TempDir(), rd.Addr(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Entitlements.Source, "redis"; got != want {
		t.Fatalf("source = %q, want %q", got, want)
	}
	client := redis.NewClient(&redis.Options{Addr: cfg.Entitlements.Redis.Address})
	t.Cleanup(func() { client.Close() })
	src, err := redissource.New(redissource.Options{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	checkFixtureDecisions(t, cfg, src)
}

// checkFixtureDecisions decides every kind of generated request with cfg's
// rules over src, as serve would, and fails unless each answer fits the
// kind of request it was generated as.
func checkFixtureDecisions(t *testing.T, cfg *config.Config, src entitlement.Source) {
	t.Helper()
	rt, err := authzconfig.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := authz.NewServer(rt, authz.Deps{Entitlements: cache.New(src, cache.Options{})})
	reqs := genRequests(2000, 200, Mix{Deny: 0.2, Unknown: 0.1}, 3)
	enc, err := encodeRequests(reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range enc {
		var cr authv3.CheckRequest
		if err := proto.Unmarshal(e.b, &cr); err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Check(context.Background(), &cr)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := proto.Marshal(resp)
		var m rawMsg
		if err := m.parse(b); err != nil {
			t.Fatal(err)
		}
		if !decisionFits(e.kind, &m) {
			t.Fatalf("%+v: got %v", reqs[i], resp)
		}
	}
}
