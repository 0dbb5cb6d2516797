package authz_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/policy"
)

var fixedNow = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// demo builds a server exactly as `serve` does for the example config,
// with an optional edit of the config and a log buffer.
func demo(t testing.TB, edit func(*config.Config)) (*authz.Server, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	return demoTo(t, edit, &logs), &logs
}

func demoTo(t testing.TB, edit func(*config.Config), logTo io.Writer) *authz.Server {
	t.Helper()
	return serverFrom(t, "../examples/tollgate.yaml", edit, authz.Deps{Log: slog.New(slog.NewJSONHandler(logTo, nil))})
}

// serverFrom builds a server as `serve` does from the config file at path,
// with an optional edit of the config, d's observer and log, and the
// fixed clock.
func serverFrom(t testing.TB, path string, edit func(*config.Config), d authz.Deps) *authz.Server {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(cfg)
	}
	src, err := filesource.Open(cfg.Entitlements.File.Path, filesource.Options{Check: cfg.Policy.CheckEntitlement})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := authzconfig.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.Now = func() time.Time { return fixedNow }
	d.Entitlements = cache.New(src, cache.Options{Now: d.Now})
	return authz.NewServer(rt, d)
}

// req builds an Envoy-shaped CheckRequest.
func req(method, path string, headers map[string]string) *authv3.CheckRequest {
	h := map[string]string{":method": method, ":path": path, ":authority": "api.example.com"}
	for k, v := range headers {
		h[k] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Host: "api.example.com", Headers: h},
	}}}
}

// rawReq is req with headers in header_map, as with encode_raw_headers: true.
func rawReq(method, path string, headers map[string]string) *authv3.CheckRequest {
	cr := req(method, path, headers)
	http := cr.Attributes.Request.Http
	http.HeaderMap = &corev3.HeaderMap{}
	for k, v := range http.Headers {
		http.HeaderMap.Headers = append(http.HeaderMap.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	http.Headers = nil
	return cr
}

func fixture(t testing.TB, name string) *authv3.CheckRequest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var cr authv3.CheckRequest
	if err := protojson.Unmarshal(b, &cr); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &cr
}

// outcome is what a test compares about a response.
type outcome struct {
	allowed  bool
	status   int
	code     string
	headers  map[string]string // set upstream (allow) or on the reply (deny)
	removed  string            // headers_to_remove, comma-joined
	body     map[string]any
	grpcCode codes.Code
}

func summarize(t *testing.T, resp *authv3.CheckResponse) outcome {
	t.Helper()
	o := outcome{headers: map[string]string{}, grpcCode: codes.Code(resp.GetStatus().GetCode())}
	var hs []*corev3.HeaderValueOption
	if ok := resp.GetOkResponse(); ok != nil {
		o.allowed, o.status = true, 200
		hs = ok.GetHeaders()
		o.removed = strings.Join(ok.GetHeadersToRemove(), ",")
	} else {
		d := resp.GetDeniedResponse()
		if d == nil {
			t.Fatalf("response has neither ok_response nor denied_response: %v", resp)
		}
		o.status = int(d.GetStatus().GetCode())
		hs = d.GetHeaders()
		if err := json.Unmarshal([]byte(d.GetBody()), &o.body); err != nil {
			t.Fatalf("body is not JSON: %v: %q", err, d.GetBody())
		}
	}
	for _, h := range hs {
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %s: append_action = %v, want OVERWRITE_IF_EXISTS_OR_ADD", h.GetHeader().GetKey(), h.GetAppendAction())
		}
		o.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	o.code = resp.GetDynamicMetadata().GetFields()["code"].GetStringValue()
	return o
}

// TestDemoTable is the "done when" table, for plain headers,
// header_map raw headers, and a Bearer key.
func TestDemoTable(t *testing.T) {
	srv, _ := demo(t, nil)
	type row struct {
		name    string
		method  string
		path    string
		key     string // sent as x-api-key, or as Bearer
		extra   map[string]string
		allowed bool
		status  int
		code    string
		plan    string // x-tollgate-plan on allow; body "plan" on deny
		removed string
	}
	rows := []row{
		{"no key", "GET", "/v1/search", "", nil, false, 401, "missing_credentials", "", ""},
		{"unknown key", "GET", "/v1/search", "nope", nil, false, 401, "invalid_credentials", "", ""},
		{"free key searches", "GET", "/v1/search", "demo-free-key", nil, true, 200, "ok", "free", ""},
		{"free key chats", "POST", "/v1/chat", "demo-free-key", nil, false, 402, "feature_not_in_plan", "free", ""},
		{"pro key chats", "POST", "/v1/chat", "demo-pro-key", nil, true, 200, "ok", "pro", ""},
		{"past due", "GET", "/v1/search", "demo-pastdue-key", nil, false, 402, "payment_failed", "pro", ""},
		{"client x-tollgate header removed", "GET", "/v1/search", "demo-free-key", map[string]string{"x-tollgate-admin": "true"}, true, 200, "ok", "free", "x-tollgate-admin"},
		{"unmatched route", "GET", "/v1/admin", "demo-pro-key", nil, false, 403, "route_not_allowed", "", ""},
		{"public route needs no key", "GET", "/healthz", "", nil, true, 200, "ok", "", ""},
	}
	type variant struct {
		name  string
		build func(m, p string, h map[string]string) *authv3.CheckRequest
		key   func(k string) map[string]string
	}
	variants := []variant{
		{"headers", req, func(k string) map[string]string { return map[string]string{"x-api-key": k} }},
		{"header_map", rawReq, func(k string) map[string]string { return map[string]string{"x-api-key": k} }},
		{"bearer", req, func(k string) map[string]string { return map[string]string{"authorization": "Bearer " + k} }},
	}
	for _, v := range variants {
		for _, r := range rows {
			t.Run(v.name+"/"+r.name, func(t *testing.T) {
				h := map[string]string{"x-request-id": "req-1"}
				if r.key != "" {
					for k, val := range v.key(r.key) {
						h[k] = val
					}
				}
				for k, val := range r.extra {
					h[k] = val
				}
				resp, err := srv.Check(context.Background(), v.build(r.method, r.path, h))
				if err != nil {
					t.Fatalf("Check returned a gRPC error: %v", err)
				}
				got := summarize(t, resp)
				if got.allowed != r.allowed || got.status != r.status || got.code != r.code {
					t.Fatalf("got allowed=%v status=%d code=%s, want allowed=%v status=%d code=%s (body %v)",
						got.allowed, got.status, got.code, r.allowed, r.status, r.code, got.body)
				}
				if r.allowed {
					if r.plan != "" && got.headers["x-tollgate-plan"] != r.plan {
						t.Errorf("x-tollgate-plan = %q, want %q", got.headers["x-tollgate-plan"], r.plan)
					}
					if got.removed != r.removed {
						t.Errorf("headers_to_remove = %q, want %q", got.removed, r.removed)
					}
					return
				}
				if got.body["code"] != r.code || got.body["request_id"] != "req-1" || int(got.body["status"].(float64)) != r.status {
					t.Errorf("body = %v", got.body)
				}
				if r.plan != "" && got.body["plan"] != r.plan {
					t.Errorf("body plan = %v, want %s", got.body["plan"], r.plan)
				}
				if got.headers["content-type"] != "application/problem+json" || got.headers["cache-control"] != "no-store" {
					t.Errorf("denial headers = %v", got.headers)
				}
				if _, ok := got.headers["www-authenticate"]; ok != (r.status == 401) {
					t.Errorf("www-authenticate present = %v on %d", ok, r.status)
				}
			})
		}
	}
}

func TestFeatureNotInPlanBody(t *testing.T) {
	srv, _ := demo(t, nil)
	resp, _ := srv.Check(context.Background(), req("POST", "/v1/chat?stream=true&api_key=secret", map[string]string{"x-api-key": "demo-free-key", "x-request-id": "req-42"}))
	got := resp.GetDeniedResponse().GetBody()
	want := `{"type":"https://github.com/tollgate-authz/tollgate/blob/main/docs/problems.md#feature_not_in_plan",` +
		`"title":"Feature not in plan","status":402,` +
		`"detail":"The chat feature is not included in the free plan; it is available on pro.",` +
		`"instance":"/v1/chat","code":"feature_not_in_plan","request_id":"req-42",` +
		`"subject":"initech","plan":"free","feature":"chat","plans_with_feature":["pro"],` +
		`"upgrade_url":"https://billing.example.com/upgrade",` +
		`"decision_id":"0123456789abcdeffedcba9876543210"}`
	if got != want {
		t.Errorf("body\n got %s\nwant %s", got, want)
	}
	if st := resp.GetStatus(); codes.Code(st.GetCode()) != codes.PermissionDenied || !strings.Contains(st.GetMessage(), "feature_not_in_plan") {
		t.Errorf("grpc status = %v", st)
	}
}

func TestFixtures(t *testing.T) {
	srv, _ := demo(t, func(c *config.Config) {})
	tests := []struct {
		file    string
		code    string
		subject string
		removed string
	}{
		{"free_search_headers.json", "ok", "initech", "x-tollgate-admin"},
		{"free_search_header_map.json", "ok", "initech", "x-tollgate-admin"},
		{"jwt_claim.json", "ok", "acme", ""},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			resp, err := srv.Check(context.Background(), fixture(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got := summarize(t, resp)
			if got.code != tt.code || got.headers["x-tollgate-subject"] != tt.subject || got.removed != tt.removed {
				t.Errorf("code=%s subject=%q removed=%q, want %s %q %q", got.code, got.headers["x-tollgate-subject"], got.removed, tt.code, tt.subject, tt.removed)
			}
		})
	}
}

func TestSpoofedSubjectHeaderIsOverwrittenNotRemoved(t *testing.T) {
	srv, _ := demo(t, nil)
	resp, _ := srv.Check(context.Background(), fixture(t, "free_search_headers.json"))
	got := summarize(t, resp)
	// x-tollgate-subject is overwritten by the set; removing it as well would
	// depend on Envoy's order of operations.
	if got.headers["x-tollgate-subject"] != "initech" || strings.Contains(got.removed, "x-tollgate-subject") {
		t.Errorf("headers=%v removed=%q", got.headers, got.removed)
	}
}

func TestMalformedRequestsGetWellFormedDenials(t *testing.T) {
	srv, _ := demo(t, nil)
	jwtWrongType := req("POST", "/v1/chat", nil)
	jwtWrongType.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		authz.JWTNamespace: {Fields: map[string]*structpb.Value{"jwt_payload": structpb.NewStructValue(&structpb.Struct{
			Fields: map[string]*structpb.Value{"sub": structpb.NewNumberValue(42)}})}},
	}}
	tests := []struct {
		name string
		cr   *authv3.CheckRequest
		code string
	}{
		{"nil request", nil, "route_not_allowed"},
		{"empty request", &authv3.CheckRequest{}, "route_not_allowed"},
		{"no http", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}, "route_not_allowed"},
		{"no headers", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/v1/search"}}}}, "missing_credentials"},
		{"path without slash", req("GET", "v1/search", map[string]string{"x-api-key": "demo-free-key"}), "route_not_allowed"},
		{"jwt claim of the wrong type", jwtWrongType, "invalid_credentials"},
		{"invalid utf-8 path", req("GET", "/v1/\xff\xfe", map[string]string{"x-api-key": "demo-free-key"}), "route_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := srv.Check(context.Background(), tt.cr)
			if err != nil {
				t.Fatalf("gRPC error %v, want a denial", err)
			}
			got := summarize(t, resp)
			if got.code != tt.code {
				t.Errorf("code = %s, want %s", got.code, tt.code)
			}
			if !json.Valid([]byte(resp.GetDeniedResponse().GetBody())) {
				t.Errorf("body is not valid JSON: %q", resp.GetDeniedResponse().GetBody())
			}
		})
	}
}

// failingSource is an entitlement source that is down.
type failingSource struct{}

func (failingSource) Get(context.Context, entitlement.Key) (*entitlement.Entitlement, entitlement.CacheOutcome, error) {
	return nil, entitlement.CacheError, errors.New("connection refused")
}

// panickySource panics, as a buggy adapter might.
type panickySource struct{}

func (panickySource) Get(context.Context, entitlement.Key) (*entitlement.Entitlement, entitlement.CacheOutcome, error) {
	panic("adapter bug")
}

func TestSourceFailures(t *testing.T) {
	cfg, err := config.Load("../examples/tollgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := authzconfig.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ents authz.Entitlements
	}{
		{"source down", failingSource{}},
		{"source panics", panickySource{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := authz.NewServer(rt, authz.Deps{Entitlements: tt.ents})
			resp, err := srv.Check(context.Background(), req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"}))
			if err != nil {
				t.Fatalf("gRPC error: %v", err)
			}
			got := summarize(t, resp)
			if got.status != 503 || got.body["code"] != "entitlements_unavailable" || got.headers["retry-after"] != "5" || got.grpcCode != codes.Unavailable {
				t.Errorf("got %+v", got)
			}
		})
	}
}

func TestStatusOverrideAndShadow(t *testing.T) {
	tests := []struct {
		name        string
		edit        func(*config.Config)
		wantAllowed bool
		wantStatus  int
		wantMeta    string // dynamic metadata "decision"
	}{
		{"default", nil, false, 402, "deny"},
		{"status override", func(c *config.Config) { c.Statuses = map[policy.Code]int{policy.PaymentFailed: 403} }, false, 403, "deny"},
		{"shadow allows but records", func(c *config.Config) { c.Shadow = true }, true, 200, "deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, logs := demo(t, tt.edit)
			resp, _ := srv.Check(context.Background(), req("GET", "/v1/search", map[string]string{"x-api-key": "demo-pastdue-key"}))
			got := summarize(t, resp)
			if got.allowed != tt.wantAllowed || got.status != tt.wantStatus {
				t.Errorf("allowed=%v status=%d, want %v %d", got.allowed, got.status, tt.wantAllowed, tt.wantStatus)
			}
			if d := resp.GetDynamicMetadata().GetFields()["decision"].GetStringValue(); d != tt.wantMeta {
				t.Errorf("metadata decision = %q, want %q", d, tt.wantMeta)
			}
			if !strings.Contains(logs.String(), `"code":"payment_failed"`) {
				t.Errorf("decision log lacks the denial: %s", logs.String())
			}
		})
	}
}

func TestDecisionLogNeverHoldsTheKey(t *testing.T) {
	srv, logs := demo(t, func(c *config.Config) {})
	for _, k := range []string{"demo-free-key", "demo-pro-key", "demo-pastdue-key", "some-unknown-secret"} {
		srv.Check(context.Background(), req("POST", "/v1/chat?api_key="+k, map[string]string{"x-api-key": k}))
		srv.Check(context.Background(), req("GET", "/v1/search", map[string]string{"authorization": "Bearer " + k}))
	}
	out := logs.String()
	if strings.Count(out, `"msg":"decision"`) != 8 {
		t.Fatalf("want 8 decision lines (allow_sample_rate is 1 in the demo), got:\n%s", out)
	}
	for _, k := range []string{"demo-free-key", "demo-pro-key", "demo-pastdue-key", "some-unknown-secret"} {
		if strings.Contains(out, k) {
			t.Errorf("the log contains the raw key %q", k)
		}
	}
	if !strings.Contains(out, `"key_id":"9f8cfdb17116"`) {
		t.Errorf("the log lacks the key id: %s", out)
	}
}

func TestAllowSampling(t *testing.T) {
	srv, logs := demo(t, func(c *config.Config) { zero := 0.0; c.Log.AllowSampleRate = &zero })
	for range 20 {
		srv.Check(context.Background(), req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"}))
	}
	srv.Check(context.Background(), req("GET", "/v1/search", nil))
	if got := strings.Count(logs.String(), `"msg":"decision"`); got != 1 {
		t.Errorf("decision lines = %d, want 1 (denials always, allows at rate 0 never)", got)
	}
}

func benchServer(b *testing.B) *authz.Server {
	// Denials are always logged: to io.Discard, the cost of encoding stays in.
	return demoTo(b, func(c *config.Config) { zero := 0.0; c.Log.AllowSampleRate = &zero }, io.Discard)
}

// BenchmarkCheck measures the handler on a cache hit, as Envoy calls it.
func BenchmarkCheck(b *testing.B) {
	cases := []struct {
		name string
		cr   *authv3.CheckRequest
		code policy.Code
	}{
		{"allow", req("GET", "/v1/search?q=x", map[string]string{"x-api-key": "demo-free-key", "x-request-id": "r", "user-agent": "bench", "accept": "*/*"}), policy.OK},
		{"deny402", req("POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key", "x-request-id": "r", "user-agent": "bench", "accept": "*/*"}), policy.FeatureNotInPlan},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			srv := benchServer(b)
			ctx := context.Background()
			srv.Check(ctx, c.cr) // warm the cache
			b.ReportAllocs()
			for b.Loop() {
				_, res := srv.Decide(ctx, c.cr)
				if res.Code != c.code {
					b.Fatal(res.Code)
				}
			}
		})
	}
}

// TestGRPCClientDenials: Envoy takes a gRPC client's status from a
// grpc-status header in the denial (it ignores CheckResponse.status and maps
// 402 to UNKNOWN), and sends the body as grpc-message.
func TestGRPCClientDenials(t *testing.T) {
	srv, _ := demo(t, nil)
	tests := []struct {
		name       string
		path       string
		key        string
		wantStatus string // grpc-status header
		wantBody   string
	}{
		{"no key", "/v1/chat", "", "16", "missing_credentials: This API needs credentials"},
		{"feature", "/v1/chat", "demo-free-key", "7", "feature_not_in_plan: The chat feature is not included in the free plan; it is available on pro."},
		{"past due", "/v1/chat", "demo-pastdue-key", "7", "payment_failed: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"content-type": "application/grpc"}
			if tt.key != "" {
				h["x-api-key"] = tt.key
			}
			resp, _ := srv.Check(context.Background(), req("POST", tt.path, h))
			d := resp.GetDeniedResponse()
			got := map[string]string{}
			for _, hv := range d.GetHeaders() {
				got[hv.GetHeader().GetKey()] = hv.GetHeader().GetValue()
			}
			if got["grpc-status"] != tt.wantStatus || !strings.HasPrefix(d.GetBody(), tt.wantBody) {
				t.Errorf("grpc-status=%q body=%q, want %q %q", got["grpc-status"], d.GetBody(), tt.wantStatus, tt.wantBody)
			}
			if _, ok := got["content-type"]; ok {
				t.Errorf("a gRPC denial must not claim problem+json: %v", got)
			}
		})
	}
}
