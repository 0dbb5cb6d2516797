package authz_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

// The tests here attack the memory a Check's answer is built in: Register's
// handler builds it in blocks of its pooled Request, reused by the next
// Check that Request serves, and encodes it before the Request goes back.
// Every answer must be what Decide (new blocks every time) gives for the
// same request on a twin server, whatever the answer before it was, and
// nothing handed out may change afterwards.

// reuseConfig has every kind of answer: a plain allow, a quota allow with
// RateLimit fields, a metered allow with a reservation, a paid allow, a
// top-up, quota and credits refusals with Retry-After and an x402 offer.
// OUTBOX is replaced by a path in the test's directory.
const reuseConfig = `
server: {grpc_address: 127.0.0.1:0, admin_address: 127.0.0.1:0}
identity: [{api_key: {header: x-api-key}}]
entitlements: {source: file, file: {path: ents.yaml}}
log: {allow_sample_rate: 1}
plans:
  pro:
    features: [search, chat]
    quotas:
      requests: {limit: 1000000, period: month}
      tokens: {limit: 1000000, period: day}
      burst: {limit: 1000000, period: second, scope: all}
  tiny:
    features: [search]
    quotas:
      requests: {limit: 2, period: month}
routes:
  - {name: forecast, match: {path: {prefix: /forecast}}, feature: search, price: "0.001"}
  - {name: search, match: {path: {prefix: /v1/search}}, feature: search, quota: requests}
  - name: chat
    match: {method: POST, path: {prefix: /v1/chat}}
    feature: chat
    quota: tokens
    cost: 10
    meter: {event: llm_tokens, units_from: {header: x-usage-units}}
  - {name: plain, match: {path: {prefix: /plain}}}
  - {name: credits, match: {path: {prefix: /credits}}, quota: credits, cost: 10}
metering:
  key_env: TOLLGATE_TEST_REUSE_METER_KEY
  outbox: {path: OUTBOX}
payments:
  x402:
    network: eip155:84532
    asset: "` + payAsset + `"
    asset_name: USDC
    asset_version: "2"
    decimals: 6
    pay_to: "` + payTo + `"
    facilitator: {url: "http://127.0.0.1:1"}
  top_ups: [{credits: 100, price: "0.5"}]
`

// reuseKey is API key n of a subject: pro-3, tiny-3, boom-3 (whose
// lookup panics).
func reuseKey(kind string, n int) string { return fmt.Sprintf("%s-key-%d", kind, n) }

func keyDigest(k string) string {
	sum := sha256.Sum256([]byte(k))
	return hex.EncodeToString(sum[:])
}

// reuseEntitlements has, for each of n workers, a pro subject with 5
// credits and a tiny one whose monthly quota is 2.
func reuseEntitlements(n int) string {
	var b strings.Builder
	b.WriteString("subjects:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {id: pro-%d, plan: pro, status: active, credits: 5, api_key_sha256: [%s]}\n", i, keyDigest(reuseKey("pro", i)))
		fmt.Fprintf(&b, "  - {id: tiny-%d, plan: tiny, status: active, api_key_sha256: [%s]}\n", i, keyDigest(reuseKey("tiny", i)))
	}
	return b.String()
}

// panicking is an entitlement cache whose lookups of the boom keys panic:
// the Check answers 503 from the panic-recovery path.
type panicking struct{ authz.Entitlements }

func (p panicking) Get(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, entitlement.CacheOutcome, error) {
	if k.Kind == entitlement.ByAPIKey && boomDigests[k.ID] {
		panic("lookup bug")
	}
	return p.Entitlements.Get(ctx, k)
}

var boomDigests = func() map[string]bool {
	m := map[string]bool{}
	for i := range 64 {
		m[keyDigest(reuseKey("boom", i))] = true
	}
	return m
}()

// results is an Observer that keeps every Result by request id, its
// strings copied (a Result is valid only during the call).
type results struct {
	mu   sync.Mutex
	byID map[string]authz.Result
}

func (o *results) ObserveCheck(r *authz.Result) {
	c := *r
	c.RequestID, c.DecisionID, c.Route, c.Subject, c.Plan = strings.Clone(r.RequestID), strings.Clone(r.DecisionID), strings.Clone(r.Route), strings.Clone(r.Subject), strings.Clone(r.Plan)
	c.KeyID, c.CredFrom, c.Payer, c.Payment = strings.Clone(r.KeyID), strings.Clone(r.CredFrom), strings.Clone(r.Payer), strings.Clone(r.Payment)
	o.mu.Lock()
	o.byID[c.RequestID] = c
	o.mu.Unlock()
}

func (*results) ObserveQuota(string, string) {}

func (o *results) get(id string) (authz.Result, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.byID[id]
	return r, ok
}

// reuseServer is one server of a twin and its rules, without and with
// shadow mode (over one payment gate).
type reuseServer struct {
	*authz.Server
	rules [2]*authz.Rules // [shadow]
}

func (s *reuseServer) shadow(on bool) {
	i := 0
	if on {
		i = 1
	}
	s.Swap(s.rules[i])
}

// newReuseServer builds a server from reuseConfig for n workers, with
// obs and log.
func newReuseServer(t testing.TB, n int, obs authz.Observer, log *slog.Logger) *reuseServer {
	t.Helper()
	dir := t.TempDir()
	cfgText := strings.Replace(reuseConfig, "OUTBOX", filepath.Join(dir, "usage.db"), 1)
	for name, body := range map[string]string{"tollgate.yaml": cfgText, "shadow.yaml": "shadow: true\n" + cfgText, "ents.yaml": reuseEntitlements(n)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := func() time.Time { return fixedNow }
	fac := x402.NewLocalFacilitator(now, "eip155:84532")
	fac.Mint(payAsset, x402test.Address(1), big.NewInt(1_000_000_000_000))
	g, err := payment.New(payment.Options{
		Network: "eip155:84532", Asset: payAsset, PayTo: payTo, AssetName: "USDC", AssetVersion: "2", Decimals: 6, Currency: "USDC",
		TopUps: []payment.TopUp{{Credits: 100, Price: "0.5"}}, Facilitator: fac, Store: paystore.NewMemory(now, 1<<20), Now: now,
		Credit: func(context.Context, *entitlement.Entitlement, int64, time.Time) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	s := new(reuseServer)
	var cfg *config.Config
	for i, name := range []string{"tollgate.yaml", "shadow.yaml"} {
		if cfg, err = config.Load(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		if s.rules[i], err = authzconfig.RulesWith(cfg, g); err != nil {
			t.Fatal(err)
		}
	}
	src, err := filesource.Open(cfg.Entitlements.File.Path, filesource.Options{Check: cfg.Policy.CheckEntitlement})
	if err != nil {
		t.Fatal(err)
	}
	s.Server = authz.NewServer(s.rules[0], authz.Deps{
		Now: now, Entitlements: panicking{cache.New(src, cache.Options{Now: now})}, Observer: obs,
		Log: log,
	})
	return s
}

// reuseTwin is a server that serves Checks as Register does and its twin,
// which Decides them: built alike, told the same Checks in the same
// order, so that their caches, quotas and payments agree.
type reuseTwin struct {
	wire, twin *reuseServer
	seen       *results // the wire server's Results
}

func newReuseTwin(t testing.TB, n int) *reuseTwin {
	t.Helper()
	t.Setenv("TOLLGATE_TEST_REUSE_METER_KEY", strings.Repeat("k", 32))
	w := &reuseTwin{seen: &results{byID: map[string]authz.Result{}}}
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	w.wire = newReuseServer(t, n, w.seen, log)
	w.twin = newReuseServer(t, n, nil, log)
	return w
}

// reuseCase is one kind of Check, for worker w's subjects; k makes its
// request id (and payment) unique.
type reuseCase struct {
	name   string
	shadow bool
	build  func(t testing.TB, w, k int) *authv3.CheckRequest
}

// prefixed is a request header the client may not send upstream: allow
// lists it for removal.
func withPrefixed(h map[string]string, n int) map[string]string {
	for i := range n {
		h[fmt.Sprintf("x-tollgate-forged-%d", i)] = "1"
	}
	return h
}

func reuseCases() []reuseCase {
	id := func(name string, w, k int) string { return fmt.Sprintf("%s/%d/%d", name, w, k) }
	get := func(path string, h map[string]string) *authv3.CheckRequest { return req("GET", path, h) }
	pay := func(t testing.TB, w, k int, amount string) string {
		offer := perCallOffer()
		offer.Amount = amount
		return x402test.Header(t, x402test.Payment{Offer: offer, Now: fixedNow, Nonce: 1 + w*1_000_000 + k})
	}
	cases := []reuseCase{
		{"plain allow", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/plain", map[string]string{"x-api-key": reuseKey("pro", w), "x-request-id": id("plain", w, k)})
		}},
		{"quota allow, RateLimit fields, removals", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/v1/search", withPrefixed(map[string]string{"x-api-key": reuseKey("pro", w), "x-request-id": id("search", w, k)}, 3))
		}},
		{"allow with more removals than a block keeps", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/plain", withPrefixed(map[string]string{"x-api-key": reuseKey("pro", w), "x-request-id": id("removals", w, k)}, 40))
		}},
		{"metered allow, reservation", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return req("POST", "/v1/chat", map[string]string{"x-api-key": reuseKey("pro", w), "x-request-id": id("chat", w, k)})
		}},
		{"paid allow", false, func(t testing.TB, w, k int) *authv3.CheckRequest {
			return get("/forecast", withPrefixed(map[string]string{"payment-signature": pay(t, w, k, "1000"), "x-tollgate-payer": "forged", "x-request-id": id("paid", w, k)}, 2))
		}},
		{"paid allow with credentials", false, func(t testing.TB, w, k int) *authv3.CheckRequest {
			return get("/forecast", map[string]string{"x-api-key": reuseKey("tiny", w), "x-payment": pay(t, w, 500_000+k, "1000"), "x-request-id": id("paid-cred", w, k)})
		}},
		{"top-up, then out of credits with a receipt", false, func(t testing.TB, w, k int) *authv3.CheckRequest {
			return get("/credits", map[string]string{"x-api-key": reuseKey("pro", w), "payment-signature": pay(t, w, 900_000+k, "500000"), "x-request-id": id("topup", w, k)})
		}},
		{"payment replayed", false, func(t testing.TB, w, k int) *authv3.CheckRequest {
			return get("/forecast", map[string]string{"payment-signature": pay(t, w, 0, "1000"), "x-request-id": id("replay", w, k)})
		}},
		{"quota refusal, Retry-After", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/v1/search", map[string]string{"x-api-key": reuseKey("tiny", w), "x-request-id": id("tiny", w, k)})
		}},
		{"credits refusal with an offer", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/credits", map[string]string{"x-api-key": reuseKey("pro", w), "x-request-id": id("credits", w, k)})
		}},
		{"payment required", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/forecast", map[string]string{"x-request-id": id("402", w, k)})
		}},
		{"gRPC client refused", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/forecast", map[string]string{"content-type": "application/grpc", "x-request-id": id("grpc", w, k)})
		}},
		{"gRPC client over quota", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/v1/search", map[string]string{"content-type": "application/grpc+proto", "x-api-key": reuseKey("tiny", w), "x-request-id": id("grpc-quota", w, k)})
		}},
		{"unknown key", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/v1/search", map[string]string{"x-api-key": reuseKey("nope", w), "x-request-id": id("nope", w, k)})
		}},
		{"body over the pooled text", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/nowhere/"+strings.Repeat("a", 3000), map[string]string{"x-request-id": id("huge", w, k) + strings.Repeat("r", 1000)})
		}},
		{"panic in the lookup", false, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/v1/search", map[string]string{"x-api-key": reuseKey("boom", w), "x-request-id": id("boom", w, k)})
		}},
		{"shadow refusal", true, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return get("/v1/search", withPrefixed(map[string]string{"x-api-key": reuseKey("tiny", w), "x-request-id": id("shadow", w, k)}, 2))
		}},
		{"shadow paid request", true, func(t testing.TB, w, k int) *authv3.CheckRequest {
			return get("/forecast", map[string]string{"payment-signature": pay(t, w, 700_000+k, "1000"), "x-request-id": id("shadow-paid", w, k)})
		}},
		{"shadow allow", true, func(_ testing.TB, w, k int) *authv3.CheckRequest {
			return req("POST", "/v1/chat", map[string]string{"x-api-key": reuseKey("pro", w), "x-request-id": id("shadow-chat", w, k)})
		}},
	}
	return cases
}

// answerOf decodes what Register's handler answered.
func answerOf(t testing.TB, e *authz.Encoded) *authv3.CheckResponse {
	t.Helper()
	b := e.Bytes()
	if b == nil {
		t.Fatal("the answer was already sent")
	}
	m := new(authv3.CheckResponse)
	if err := proto.Unmarshal(b, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// sameResult fails unless got and want describe one decision (their
// errors by message: two servers' errors are other values).
func sameResult(t testing.TB, name string, got, want authz.Result) {
	t.Helper()
	gerr, werr := fmt.Sprint(got.Err), fmt.Sprint(want.Err)
	got.Err, want.Err = nil, nil
	if got != want || gerr != werr {
		t.Errorf("%s: Result served\n%+v (%s)\nDecided\n%+v (%s)", name, got, gerr, want, werr)
	}
}

// decideTwin is what the twin Decides for b, and the request.
func (w *reuseTwin) decideTwin(t testing.TB, b []byte) (*authv3.CheckResponse, authz.Result, string) {
	t.Helper()
	var cr authv3.CheckRequest
	if err := authz.LenientUnmarshal(b, &cr); err != nil {
		t.Fatal(err)
	}
	resp, res := w.twin.Decide(context.Background(), &cr)
	return resp, res, cr.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-request-id"]
}

// TestReusedRequestAnswersEveryPair serves every ordered pair of kinds of
// Check through one Request (the first leaves its answer in the blocks,
// the second must reset them), and holds each answer to Decide's on the
// twin. Every answer's bytes are read again at the end: no later Check
// may change them.
func TestReusedRequestAnswersEveryPair(t *testing.T) {
	w := newReuseTwin(t, 1)
	cases := reuseCases()
	var one authz.OneRequest
	type kept struct {
		name string
		e    *authz.Encoded
		want *authv3.CheckResponse
	}
	var all []kept
	k := 0
	serve := func(c reuseCase) {
		t.Helper()
		k++
		b := marshal(t, c.build(t, 0, k))
		w.wire.shadow(c.shadow)
		w.twin.shadow(c.shadow)
		e, err := one.Serve(context.Background(), w.wire.Server, b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want, res, reqID := w.decideTwin(t, b)
		got := answerOf(t, e)
		if got, want := sortedRemovals(got), sortedRemovals(want); !proto.Equal(got, want) {
			t.Fatalf("%s (after %s): served\n%v\nDecided\n%v", c.name, prev(all), got, want)
		}
		// A Check that panicked is not observed.
		if seen, ok := w.seen.get(reqID); ok {
			sameResult(t, c.name, seen, res)
		} else if !strings.HasPrefix(reqID, "boom/") {
			t.Fatalf("%s: no Result observed", c.name)
		}
		all = append(all, kept{c.name, e, want})
	}
	for _, a := range cases {
		for _, b := range cases {
			serve(a)
			serve(b)
		}
	}
	for i, c := range all {
		if got, want := sortedRemovals(answerOf(t, c.e)), sortedRemovals(c.want); !proto.Equal(got, want) {
			t.Fatalf("answer %d (%s) changed after later Checks:\n%v\nwas\n%v", i, c.name, got, want)
		}
	}
	// The kinds of answer this covers.
	codes := map[string]bool{}
	for _, r := range w.seen.byID {
		codes[fmt.Sprintf("%s/%v/%s", r.Code, r.Shadow, r.Payment)] = true
	}
	for _, want := range []string{"ok/false/", "ok/false/per_call", "insufficient_credits/false/top_up", "payment_invalid/false/",
		"quota_exhausted/false/", "insufficient_credits/false/", "payment_required/false/", "invalid_credentials/false/",
		"route_not_allowed/false/", "quota_exhausted/true/", "payment_required/true/"} {
		if !codes[want] {
			t.Errorf("no %s answer among %v", want, codes)
		}
	}
}

func prev[T any](s []T) any {
	if len(s) == 0 {
		return "nothing"
	}
	return s[len(s)-1]
}

// TestDecideOutlivesServedChecks: Decide's answer and Result are the
// caller's (tollgate check, dryrun, Check keep them), so no Check
// Register's handler serves afterwards, which takes the Request Decide
// put back from the same pool, may change them.
func TestDecideOutlivesServedChecks(t *testing.T) {
	authz.CountingIDs(t)
	w := newReuseTwin(t, 1)
	var reg registrar
	authz.Register(&reg, w.wire.Server)
	type kept struct {
		resp     *authv3.CheckResponse
		snapshot *authv3.CheckResponse
		id       string
		res      authz.Result
	}
	var all []kept
	for i, c := range reuseCases() {
		if c.shadow || strings.Contains(c.name, "paid") || strings.Contains(c.name, "top-up") {
			continue // the payments are the twin's test; here one server serves them all
		}
		for range 8 {
			b := marshal(t, c.build(t, 0, 100+i))
			if _, err := reg.check(context.Background(), b); err != nil { // leaves the Request's blocks in use
				t.Fatal(err)
			}
			var cr authv3.CheckRequest
			if err := proto.Unmarshal(b, &cr); err != nil {
				t.Fatal(err)
			}
			resp, res := w.wire.Decide(context.Background(), &cr)
			all = append(all, kept{resp, proto.Clone(resp).(*authv3.CheckResponse), strings.Clone(res.DecisionID), res})
			if _, err := reg.check(context.Background(), b); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, k := range all {
		if !proto.Equal(k.resp, k.snapshot) {
			t.Fatalf("a later Check changed Decide's answer:\n%v\nwas\n%v", k.resp, k.snapshot)
		}
		if k.res.DecisionID != k.id {
			t.Fatalf("a later Check changed Decide's decision id: %s, was %s", k.res.DecisionID, k.id)
		}
	}
}

// TestConcurrentChecksOverGRPC serves Checks of every kind from many
// goroutines through a real grpc.Server (Register, Codec, an interceptor),
// each goroutine with its own subjects, payments and request ids, and
// holds every answer received, and its Result, to what the twin Decides
// for the same request. Run it under -race.
func TestConcurrentChecksOverGRPC(t *testing.T) {
	intercept := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(ctx, req)
	}
	for _, tt := range []struct {
		name string
		opts []grpc.ServerOption
	}{
		{"without an interceptor", nil},
		{"through an interceptor", []grpc.ServerOption{grpc.UnaryInterceptor(intercept)}},
	} {
		t.Run(tt.name, func(t *testing.T) { concurrentChecks(t, tt.opts...) })
	}
}

func concurrentChecks(t *testing.T, opts ...grpc.ServerOption) {
	const workers, rounds = 8, 3
	w := newReuseTwin(t, workers)
	gs := grpc.NewServer(append(opts, grpc.ForceServerCodecV2(authz.Codec{}), grpc.NumStreamWorkers(4))...)
	authz.Register(gs, w.wire.Server)
	cc := dialBufconn(t, gs)

	var cases []reuseCase
	for _, c := range reuseCases() {
		if !c.shadow { // shadow mode is the rules': one for every Check at a time
			cases = append(cases, c)
		}
	}
	// Each worker's requests, made first: signing payments is slow, and
	// the Checks should overlap.
	reqs := make([][][]byte, workers)
	for wk := range workers {
		for r := range rounds {
			for i := range cases {
				c := cases[(i+wk)%len(cases)]
				reqs[wk] = append(reqs[wk], marshal(t, c.build(t, wk, r*len(cases)+i)))
			}
		}
	}
	errs := make(chan error, workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for wk := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- func() error {
				for _, b := range reqs[wk] {
					got := new(authv3.CheckResponse)
					if err := cc.Invoke(context.Background(), authv3.Authorization_Check_FullMethodName, b, got, grpc.ForceCodecV2(rawCodec{})); err != nil {
						return err
					}
					var cr authv3.CheckRequest
					if err := authz.LenientUnmarshal(b, &cr); err != nil {
						return err
					}
					want, res := w.twin.Decide(context.Background(), &cr)
					id := cr.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-request-id"]
					if got, want := sortedRemovals(got), sortedRemovals(want); !proto.Equal(got, want) {
						return fmt.Errorf("request %s: over gRPC\n%v\nDecided\n%v", id, got, want)
					}
					seen, ok := w.seen.get(id)
					if !ok && strings.HasPrefix(id, "boom/") {
						continue // a Check that panicked is not observed
					}
					if !ok {
						return fmt.Errorf("request %s: no Result observed", id)
					}
					gerr, werr := fmt.Sprint(seen.Err), fmt.Sprint(res.Err)
					seen.Err, res.Err = nil, nil
					if seen != res || gerr != werr {
						return fmt.Errorf("request %s: Result served\n%+v (%s)\nDecided\n%+v (%s)", id, seen, gerr, res, werr)
					}
				}
				return nil
			}()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got, want := len(w.seen.byID), workers*rounds*(len(cases)-1); got != want { // all but the panics
		t.Errorf("%d Results observed, want %d", got, want)
	}
}

// retainingHandler is a slog.Handler that keeps its records, as a
// buffering or exporting handler does (Record.Clone, as slog asks), and
// writes them as JSON when asked.
type retainingHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *retainingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *retainingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *retainingHandler) WithGroup(string) slog.Handler            { return h }
func (h *retainingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	return nil
}

// TestLoggedDecisionIDsStay: a decision line that goes through Log's
// handler (there is no DecisionLog) carries the decision's id. A handler
// may keep the record past the call (a buffering or exporting one does,
// cloning the Record as slog asks), and a Go string is immutable: the id
// it kept must still be the answer's after later Checks.
func TestLoggedDecisionIDsStay(t *testing.T) {
	authz.CountingIDs(t)
	t.Setenv("TOLLGATE_TEST_REUSE_METER_KEY", strings.Repeat("k", 32))
	h := &retainingHandler{}
	s := newReuseServer(t, 1, nil, slog.New(h))
	var one authz.OneRequest
	var ids []string // each answer's decision id, as sent
	for k, c := range reuseCases() {
		if c.shadow || strings.Contains(c.name, "panic") {
			continue
		}
		e, err := one.Serve(context.Background(), s.Server, marshal(t, c.build(t, 0, k)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, answerOf(t, e).GetDynamicMetadata().GetFields()["decision_id"].GetStringValue())
	}
	var logged []string
	for _, r := range h.records {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "decision_id" {
				logged = append(logged, a.Value.String())
			}
			return true
		})
	}
	if strings.Join(logged, " ") != strings.Join(ids, " ") {
		t.Errorf("decision ids the log handler kept\n%v\nthe answers'\n%v\n(logDecision must give slog a copy of the id, which shares the reused block's memory)", logged, ids)
	}
}
