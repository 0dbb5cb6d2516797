package authz_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/internal/asynclog"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/quota"
)

// benchSubjects is how many subjects the generated entitlements hold, as in
// the load harness (bench/).
const benchSubjects = 10000

// benchConfig is a production-shaped config: quotas on every route, a
// scope-all rate limit, and limits no benchmark reaches.
const benchConfig = `
entitlements:
  file: {path: entitlements.yaml}
log: {allow_sample_rate: 0}
identity:
  - api_key: {header: x-api-key}
billing:
  upgrade_url: https://billing.example.com/upgrade
plans:
  free:
    features: [search]
    quotas:
      requests: {limit: 1000000000000, period: month}
      burst: {limit: 1000000000000, period: second, scope: all}
  pro:
    features: [search, chat]
    quotas:
      requests: {limit: 1000000000000, period: month}
      burst: {limit: 1000000000000, period: second, scope: all}
  basic:
    features: [search]
  spent:
    features: [search]
    quotas:
      requests: {limit: 1, period: month}
routes:
  - name: docs
    match: {method: GET, path: {prefix: /v1/docs}}
    feature: search
  - name: search
    match: {method: GET, path: {prefix: /v1/search}}
    feature: search
    quota: requests
  - name: chat
    match: {method: POST, path: {prefix: /v1/chat}}
    feature: chat
    quota: requests
  - name: llm
    match: {method: POST, path: {prefix: /v1/llm}}
    feature: search
    quota: requests
    meter: {event: tokens, units_from: {header: x-usage-units}}
metering:
  key_env: TOLLGATE_BENCH_METER_KEY
  outbox: {path: usage.db}
`

// writeBenchConfig writes benchConfig and an entitlements file with n
// subjects, sub-N with API key key-N, alternately free and pro.
func writeBenchConfig(b *testing.B, n int) string {
	b.Helper()
	b.Setenv("TOLLGATE_BENCH_METER_KEY", strings.Repeat("k", 32))
	dir := b.TempDir()
	var ents strings.Builder
	ents.WriteString("subjects:\n")
	for i := range n {
		plan := "free"
		if i%2 == 1 {
			plan = "pro"
		}
		fmt.Fprintf(&ents, "  - {id: sub-%d, plan: %s, status: active, api_key_sha256: [%s]}\n", i, plan, identity.HashKey(fmt.Sprintf("key-%d", i)))
	}
	// One subject on a plan with no quota, one whose monthly quota of 1
	// the first request spends.
	for _, plan := range []string{"basic", "spent"} {
		fmt.Fprintf(&ents, "  - {id: sub-%s, plan: %s, status: active, api_key_sha256: [%s]}\n", plan, plan, identity.HashKey("key-"+plan))
	}
	if err := os.WriteFile(filepath.Join(dir, "entitlements.yaml"), []byte(ents.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "tollgate.yaml")
	if err := os.WriteFile(path, []byte(benchConfig), 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

// benchQuotaServer serves benchConfig with a memory quota store. cacheOpts
// tunes the entitlement cache.
func benchQuotaServer(b *testing.B, cacheOpts cache.Options) *authz.Server {
	return benchObservedServer(b, cacheOpts, nil)
}

// benchObservedServer is benchQuotaServer with an observer (nil: none).
func benchObservedServer(b *testing.B, cacheOpts cache.Options, obs authz.Observer) *authz.Server {
	b.Helper()
	cfg, err := config.Load(writeBenchConfig(b, benchSubjects))
	if err != nil {
		b.Fatal(err)
	}
	src, err := filesource.Open(cfg.Entitlements.File.Path, filesource.Options{Check: cfg.Policy.CheckEntitlement})
	if err != nil {
		b.Fatal(err)
	}
	rt, err := authzconfig.Rules(cfg)
	if err != nil {
		b.Fatal(err)
	}
	log, w := benchLogger(b)
	return authz.NewServer(rt, authz.Deps{
		Entitlements: cache.New(src, cacheOpts),
		Quotas:       quota.NewMemory(nil),
		Log:          log,
		DecisionLog:  w,
		Observer:     obs,
	})
}

// benchLogger is the decision log as serve builds it: slog's JSON handler
// writing into an asynclog.Writer, here in front of a discarding sink, so
// that a logged denial pays what it pays in production. serve also gives
// the server the writer (Deps.DecisionLog), as this benchmark's servers do.
func benchLogger(b *testing.B) (*slog.Logger, *asynclog.Writer) {
	w := asynclog.New(io.Discard, 0)
	b.Cleanup(func() { w.Close(context.Background()) })
	return slog.New(slog.NewJSONHandler(w, nil)), w
}

// BenchmarkCheckPath is one Check on each path a production request takes,
// on a cache hit, with the decision log on (denials are always logged), as
// serve runs it: Register's handler decodes the request's bytes with Codec,
// decides, and encodes the answer, and Codec hands the bytes over (what
// grpc-go does around it, the transport, is not counted):
//
//   - allow: plan and feature only, a route that spends no counter
//   - allow_quota: a monthly quota and a per-second limit spent
//   - deny402_quota: quota_exhausted (a monthly quota of 1, spent)
//   - deny402_feature: feature_not_in_plan (a free subject on chat)
//   - unknown401: invalid_credentials, an API key no subject holds (a
//     negative cache hit)
//
// BenchmarkCheckMiss is the cache-miss path.
func BenchmarkCheckPath(b *testing.B) {
	cases := []struct {
		name string
		cr   *authv3.CheckRequest
		code policy.Code
	}{
		{"allow", envoyReq("GET", "/v1/docs/intro", "key-basic"), policy.OK},
		{"allow_quota", envoyReq("GET", "/v1/search?q=x", "key-1"), policy.OK},
		{"deny402_quota", envoyReq("GET", "/v1/search?q=x", "key-spent"), policy.QuotaExhausted},
		{"deny402_feature", envoyReq("POST", "/v1/chat", "key-0"), policy.FeatureNotInPlan},
		{"unknown401", envoyReq("GET", "/v1/search?q=x", "key-unknown"), policy.InvalidCredentials},
	}
	var seen codeSeen
	srv := benchObservedServer(b, cache.Options{}, &seen)
	var reg registrar
	authz.Register(&reg, srv)
	handler := reg.desc.Methods[0].Handler
	ctx := context.Background()
	var c authz.Codec
	for _, tc := range cases {
		bufs := mem.BufferSlice{mem.SliceBuffer(marshal(b, tc.cr))}
		dec := func(v any) error { return c.Unmarshal(bufs, v) }
		check := func(b *testing.B) policy.Code {
			serveBytes(b, handler, reg.impl, ctx, dec, nil)
			return seen.code
		}
		b.Run(tc.name, func(b *testing.B) {
			check(b) // warm the cache (and spend key-spent's quota)
			b.ReportAllocs()
			for b.Loop() {
				if got := check(b); got != tc.code {
					b.Fatalf("code = %s, want %s", got, tc.code)
				}
			}
		})
	}
}

// serveBytes runs a registered Check handler on dec's request, has Codec
// encode its answer as grpc-go would, and frees the bytes.
func serveBytes(b *testing.B, handler grpc.MethodHandler, impl any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) {
	resp, err := handler(impl, ctx, dec, intercept)
	if err != nil {
		b.Fatal(err)
	}
	out, err := authz.Codec{}.Marshal(resp)
	if err != nil {
		b.Fatal(err)
	}
	out.Free()
}

// codeSeen is an Observer that keeps the last decision's code.
type codeSeen struct{ code policy.Code }

func (o *codeSeen) ObserveCheck(r *authz.Result) { o.code = r.Code }
func (*codeSeen) ObserveQuota(string, string)    {}

func envoyReq(method, path, key string) *authv3.CheckRequest {
	return req(method, path, map[string]string{
		"x-api-key": key, "x-request-id": "0b9c4d3e-5f7a-4b1c-9d2e-3f4a5b6c7d8e",
		"user-agent": "bench", "accept": "*/*", "x-forwarded-proto": "http",
	})
}

// BenchmarkCheckMetered is BenchmarkCheckQuota's request on a metered
// route: the difference is what metering adds to a Check (signing the
// reservation into the dynamic metadata).
func BenchmarkCheckMetered(b *testing.B) {
	srv := benchQuotaServer(b, cache.Options{})
	ctx := context.Background()
	cr := envoyReq("POST", "/v1/llm", "key-1")
	srv.Check(ctx, cr) // warm the cache
	b.ReportAllocs()
	for b.Loop() {
		if resp, res := srv.Decide(ctx, cr); res.Code != policy.OK || resp.GetDynamicMetadata().GetFields()["reservation"] == nil {
			b.Fatalf("%s, no reservation", res.Code)
		}
	}
}

// BenchmarkCheckQuota is a cache hit on a route that spends two counters
// (the route's monthly quota and a per-second limit), the common production
// shape, with the real memory store and clock.
func BenchmarkCheckQuota(b *testing.B) {
	srv := benchQuotaServer(b, cache.Options{})
	ctx := context.Background()
	cr := envoyReq("GET", "/v1/search?q=x", "key-1")
	srv.Check(ctx, cr) // warm the cache
	b.ReportAllocs()
	for b.Loop() {
		if _, res := srv.Decide(ctx, cr); res.Code != policy.OK {
			b.Fatal(res.Code)
		}
	}
}

// BenchmarkCheckMiss is a Check whose entitlement lookup misses the cache
// every time and reads the file source (10,000 subjects): the cost of the
// first request of a key, or of each request after its TTL.
func BenchmarkCheckMiss(b *testing.B) {
	var tick atomic.Int64
	t0 := time.Now()
	// Every reading of the cache's clock is a minute later: every entry
	// has expired by the next lookup.
	clock := func() time.Time { return t0.Add(time.Duration(tick.Add(1)) * time.Minute) }
	srv := benchQuotaServer(b, cache.Options{Now: clock})
	ctx := context.Background()
	reqs := make([]*authv3.CheckRequest, 64)
	for i := range reqs {
		reqs[i] = envoyReq("GET", "/v1/search?q=x", fmt.Sprintf("key-%d", i*97%benchSubjects))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_, res := srv.Decide(ctx, reqs[i%len(reqs)])
		if res.Code != policy.OK || res.Cache != entitlement.CacheMiss {
			b.Fatal(res.Code, res.Cache)
		}
		i++
	}
}

// BenchmarkCheckParallel is BenchmarkCheckQuota from every core, over many
// subjects: what contention on the cache and quota locks costs.
func BenchmarkCheckParallel(b *testing.B) {
	srv := benchQuotaServer(b, cache.Options{})
	ctx := context.Background()
	reqs := make([]*authv3.CheckRequest, 1024)
	for i := range reqs {
		reqs[i] = envoyReq("GET", "/v1/search?q=x", fmt.Sprintf("key-%d", i))
		srv.Check(ctx, reqs[i])
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)) * 131
		for pb.Next() {
			if _, res := srv.Decide(ctx, reqs[i%len(reqs)]); res.Code != policy.OK {
				b.Error(res.Code)
				return
			}
			i++
		}
	})
}

// BenchmarkServeCheck is a Check as a grpc.Server runs it, from the
// request's bytes to the response's: the registered handler decodes the
// bytes with Codec, an interceptor (serve has one) calls the decision, and
// Codec encodes the response. "message" is authv3.RegisterAuthorizationServer's
// handler (Codec leaves that message to the protobuf runtime), "view"
// Register's. The request is what the load harness sends.
func BenchmarkServeCheck(b *testing.B) {
	srv := benchQuotaServer(b, cache.Options{})
	ctx := context.Background()
	var c authz.Codec
	intercept := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(ctx, req)
	}
	for _, in := range []struct {
		name string
		cr   *authv3.CheckRequest
	}{{"headers", harnessShaped()}, {"header_map", withRaw(harnessShaped())}} {
		bufs := mem.BufferSlice{mem.SliceBuffer(marshal(b, in.cr))}
		dec := func(v any) error { return c.Unmarshal(bufs, v) }
		srv.Check(ctx, in.cr) // warm the cache
		for _, reg := range registrations {
			var r registrar
			reg.register(&r, srv)
			handler := r.desc.Methods[0].Handler
			b.Run(in.name+"/"+reg.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					serveBytes(b, handler, r.impl, ctx, dec, intercept)
				}
			})
		}
	}
}
