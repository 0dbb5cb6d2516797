package authz_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/quota"
)

// quotaServer builds a server from testdata/quota.yaml with a memory store
// (or the given one) and a clock the test moves.
func quotaServer(t *testing.T, store authz.Quotas, now *time.Time) *authz.Server {
	t.Helper()
	cfg, err := config.Load("testdata/quota.yaml")
	if err != nil {
		t.Fatal(err)
	}
	src, err := filesource.Open(cfg.Entitlements.File.Path, filesource.Options{Check: cfg.Policy.CheckEntitlement})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := authzconfig.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { return *now }
	if store == nil {
		store = quota.NewMemory(clock)
	}
	return authz.NewServer(rt, authz.Deps{
		Entitlements: cache.New(src, cache.Options{Now: clock}), Quotas: store, Now: clock,
	})
}

type quotaOutcome struct {
	status  int
	code    string
	headers map[string]string // reply headers (deny) or response_headers_to_add (allow)
	body    string
}

func doCheck(t *testing.T, srv *authz.Server, cr *authv3.CheckResponse) quotaOutcome {
	t.Helper()
	o := quotaOutcome{headers: map[string]string{}, code: cr.GetDynamicMetadata().GetFields()["code"].GetStringValue()}
	var hs []*corev3.HeaderValueOption
	if ok := cr.GetOkResponse(); ok != nil {
		o.status = 200
		hs = ok.GetResponseHeadersToAdd()
	} else {
		o.status = int(cr.GetDeniedResponse().GetStatus().GetCode())
		hs = cr.GetDeniedResponse().GetHeaders()
		o.body = cr.GetDeniedResponse().GetBody()
	}
	for _, h := range hs {
		o.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return o
}

func TestQuotaDecisions(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	type step struct {
		advance time.Duration
		method  string
		path    string
		headers map[string]string
		status  int
		code    string
		header  string // "name: value" expected among the headers, "" for none
		body    string // fragment of the body
	}
	free := map[string]string{"x-api-key": "demo-free-key"}
	pro := func(extra ...string) map[string]string {
		h := map[string]string{"x-api-key": "demo-pro-key"}
		for i := 0; i+1 < len(extra); i += 2 {
			h[extra[i]] = extra[i+1]
		}
		return h
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"monthly allowance", []step{
			{0, "GET", "/v1/search", free, 200, "ok", `ratelimit-policy: "burst";q=5;w=1, "requests";q=3;w=2592000`, ""},
			{0, "GET", "/v1/search", free, 200, "ok", `ratelimit: "burst";r=3;t=1, "requests";r=1;t=561600`, ""},
			{time.Second, "GET", "/v1/search", free, 200, "ok", "", ""},
			{time.Second, "GET", "/v1/search", free, 402, "quota_exhausted", "retry-after: 561598",
				`"quota":"requests","limit":3,"used":3,"cost":1,"resets_at":"2026-12-01T00:00:00Z","upgrade_url":"https://billing.example.com/upgrade","decision_id":"0123456789abcdeffedcba9876543210"}`},
			// A new month brings a new allowance.
			{7 * 24 * time.Hour, "GET", "/v1/search", free, 200, "ok", "", ""},
		}},
		{"rate limit across routes", []step{
			{0, "GET", "/v1/search", free, 200, "ok", "", ""},
			{0, "GET", "/v1/search", free, 200, "ok", "", ""},
			{0, "GET", "/v1/search", free, 200, "ok", "", ""},
			{0, "GET", "/v1/search", free, 402, "quota_exhausted", "", ""},
			// The refused request spent no burst: two more fit this second.
			{0, "POST", "/v1/chat", free, 402, "feature_not_in_plan", "", ""},
			{0, "GET", "/v1/other", free, 403, "route_not_allowed", "", ""},
		}},
		{"cost from a header", []step{
			{0, "POST", "/v1/chat", pro("x-token-estimate", "600"), 200, "ok", `ratelimit: "burst";r=99;t=1, "tokens";r=400;t=43200`, ""},
			{0, "POST", "/v1/chat", pro("x-token-estimate", "500"), 402, "quota_exhausted", "", `"quota":"tokens","limit":1000,"used":600,"cost":500`},
			{0, "POST", "/v1/chat", pro("x-token-estimate", "garbage"), 200, "ok", `ratelimit: "burst";r=98;t=1, "tokens";r=300;t=43200`, ""},
			{0, "POST", "/v1/chat", pro("x-token-estimate", "-5"), 200, "ok", `ratelimit: "burst";r=97;t=1, "tokens";r=200;t=43200`, ""},
		}},
		{"billing-aligned month", []step{
			// acme's period started on the 15th: its month resets on December 15th.
			{0, "GET", "/v1/search", pro(), 200, "ok", `ratelimit: "burst";r=99;t=1, "requests";r=999;t=1771200`, ""},
		}},
		{"credits", []step{
			{0, "POST", "/v1/render", bySubjectKey("hooli"), 200, "ok", "", ""},
			{0, "POST", "/v1/render", bySubjectKey("hooli"), 200, "ok", "", ""},
			{0, "POST", "/v1/render", bySubjectKey("hooli"), 402, "insufficient_credits", "",
				`"code":"insufficient_credits","request_id":"q","subject":"hooli","plan":"payg","credits":2,"cost":4,`},
		}},
		{"per-subject override", []step{
			{0, "GET", "/v1/search", bySubjectKey("bigco"), 200, "ok", `ratelimit-policy: "burst";q=5;w=1, "requests";q=5;w=2592000`, ""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := t0
			srv := quotaServer(t, nil, &now)
			for i, st := range tt.steps {
				now = now.Add(st.advance)
				h := map[string]string{"x-request-id": "q"}
				for k, v := range st.headers {
					h[k] = v
				}
				resp, err := srv.Check(context.Background(), req(st.method, st.path, h))
				if err != nil {
					t.Fatal(err)
				}
				got := doCheck(t, srv, resp)
				if got.status != st.status || got.code != st.code {
					t.Fatalf("step %d: %d %s, want %d %s (body %s)", i, got.status, got.code, st.status, st.code, got.body)
				}
				if st.header != "" {
					k, v, _ := strings.Cut(st.header, ": ")
					if got.headers[k] != v {
						t.Errorf("step %d: %s = %q, want %q (all: %v)", i, k, got.headers[k], v, got.headers)
					}
				}
				if !strings.Contains(got.body, st.body) {
					t.Errorf("step %d: body %s\nwant it to contain %s", i, got.body, st.body)
				}
			}
		})
	}
}

// bySubjectKey names the subject in a trusted header: the quota fixture
// gives hooli and bigco no API key.
func bySubjectKey(sub string) map[string]string { return map[string]string{"x-subject": sub} }

func TestRateLimited429(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 500_000_000, time.UTC)
	srv := quotaServer(t, nil, &now)
	var got quotaOutcome
	for range 6 {
		resp, _ := srv.Check(context.Background(), req("POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key"}))
		got = doCheck(t, srv, resp)
	}
	// free cannot chat, so the refusals above spent nothing; search is limited by burst=5 and requests=3.
	for range 3 {
		resp, _ := srv.Check(context.Background(), req("GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"}))
		got = doCheck(t, srv, resp)
	}
	if got.status != 200 {
		t.Fatalf("pro: %d %s", got.status, got.code)
	}
	for i := range 100 {
		resp, _ := srv.Check(context.Background(), req("GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"}))
		got = doCheck(t, srv, resp)
		if got.status != 200 {
			if i != 97 {
				t.Errorf("refused after %d more requests, want 97 (burst 100 per second)", i)
			}
			break
		}
	}
	if got.status != 429 || got.code != "rate_limited" || got.headers["retry-after"] != "1" {
		t.Errorf("got %d %s retry-after=%q, want 429 rate_limited 1", got.status, got.code, got.headers["retry-after"])
	}
	if !strings.Contains(got.body, `"detail":"Too many requests: the burst limit is 100 per second; retry after 1 s."`) {
		t.Errorf("body %s", got.body)
	}
}

// brokenStore is a quota store that cannot answer.
type brokenStore struct{}

func (brokenStore) Spend(context.Context, string, []quota.Item, []int64) (int, error) {
	return -1, errors.New("redis: connection refused")
}

func TestQuotaStoreDownFailsClosed(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	srv := quotaServer(t, brokenStore{}, &now)
	resp, _ := srv.Check(context.Background(), req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"}))
	got := doCheck(t, srv, resp)
	if got.status != 503 || got.code != "entitlements_unavailable" || got.headers["retry-after"] == "" {
		t.Errorf("got %+v", got)
	}
	if strings.Contains(got.body, "redis") {
		t.Errorf("the body leaks an internal error: %s", got.body)
	}
}
