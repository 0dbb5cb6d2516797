package authz_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/quota"
)

// testDecisionID is every decision's id in this package's tests (see
// decisionid_test.go).
const testDecisionID = "0123456789abcdeffedcba9876543210"

// logLines decodes the JSON lines of a decision log.
func logLines(t *testing.T, b *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

// TestDecisionIDOnEveryAnswer: the id goes to the client on a denial (a
// header and the problem's decision_id), upstream on an allow (the trusted
// prefix's decision-id), to Envoy's dynamic metadata, and into the log.
func TestDecisionIDOnEveryAnswer(t *testing.T) {
	tests := []struct {
		name       string
		cr         *authv3.CheckRequest
		allowed    bool
		wantInBody bool
	}{
		{"allow", req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"}), true, false},
		// A client cannot choose the id upstream sees: its header is overwritten.
		{"allow, spoofed id", req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "x-tollgate-decision-id": "mine"}), true, false},
		{"public route", req("GET", "/healthz", nil), true, false},
		{"deny", req("POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key"}), false, true},
		{"deny, no credentials", req("GET", "/v1/search", nil), false, true},
		{"deny, gRPC client", req("POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key", "content-type": "application/grpc"}), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, logs := demo(t, nil)
			resp, res := srv.Decide(context.Background(), tt.cr)
			if res.DecisionID != testDecisionID {
				t.Errorf("Result.DecisionID = %q, want %q", res.DecisionID, testDecisionID)
			}
			if allowed := resp.GetOkResponse() != nil; allowed != tt.allowed {
				t.Fatalf("allowed = %v, want %v", allowed, tt.allowed)
			}
			headers := map[string]string{}
			for _, h := range append(resp.GetOkResponse().GetHeaders(), resp.GetDeniedResponse().GetHeaders()...) {
				headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
			}
			header := "tollgate-decision-id"
			if tt.allowed {
				header = "x-tollgate-decision-id"
				if removed := resp.GetOkResponse().GetHeadersToRemove(); len(removed) > 0 {
					t.Errorf("removed %q: the set overwrites it, a removal would race", removed)
				}
			}
			if headers[header] != testDecisionID {
				t.Errorf("%s = %q, want %q (all: %v)", header, headers[header], testDecisionID, headers)
			}
			var body map[string]any
			_ = json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body)
			if id, ok := body["decision_id"]; tt.wantInBody && id != testDecisionID || !tt.wantInBody && ok {
				t.Errorf("body decision_id = %v (present %v), want it %v", id, ok, tt.wantInBody)
			}
			if md := resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue(); md != testDecisionID {
				t.Errorf("metadata decision_id = %q", md)
			}
			lines := logLines(t, logs)
			if len(lines) != 1 || lines[0]["decision_id"] != testDecisionID {
				t.Errorf("decision log = %v, want one line with decision_id %s", lines, testDecisionID)
			}
			if _, ok := lines[0]["trace_id"]; ok {
				t.Errorf("trace_id logged without a tracer: %v", lines[0])
			}
		})
	}
}

// fakeTracer records what the server tells a Tracer.
type fakeTracer struct {
	mu      sync.Mutex
	parents []string // the traceparent each Check had
	ended   []authz.Result
}

type spanKey struct{}

func (f *fakeTracer) StartCheck(ctx context.Context, h authz.Headers) (context.Context, string) {
	tp, _ := h.Header("traceparent")
	f.mu.Lock()
	f.parents = append(f.parents, tp)
	f.mu.Unlock()
	return context.WithValue(ctx, spanKey{}, "span-of-"+tp), "trace-" + tp
}

func (f *fakeTracer) EndCheck(ctx context.Context, res *authz.Result) {
	if ctx.Value(spanKey{}) == nil {
		panic("EndCheck without the context StartCheck returned")
	}
	f.mu.Lock()
	f.ended = append(f.ended, *res)
	f.mu.Unlock()
}

// spanSeen records the span each call was made in.
type spanSeen struct {
	mu    sync.Mutex
	spans []string
}

func (s *spanSeen) saw(ctx context.Context, what string) {
	span, _ := ctx.Value(spanKey{}).(string)
	s.mu.Lock()
	s.spans = append(s.spans, what+" in "+span)
	s.mu.Unlock()
}

type seenEntitlements struct {
	authz.Entitlements
	seen *spanSeen
}

func (e seenEntitlements) Get(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, entitlement.CacheOutcome, error) {
	e.seen.saw(ctx, "entitlements")
	return e.Entitlements.Get(ctx, k)
}

type seenQuotas struct {
	authz.Quotas
	seen *spanSeen
}

func (q seenQuotas) Spend(ctx context.Context, group string, items []quota.Item, used []int64) (int, error) {
	q.seen.saw(ctx, "quotas")
	return q.Quotas.Spend(ctx, group, items, used)
}

// TestTracerHook: the Tracer sees the request's headers, the Check is
// decided in the context it returns (the entitlements and the quota store
// get it), it is told the Result, and the trace id is in the decision log.
func TestTracerHook(t *testing.T) {
	cfg, err := config.Load("testdata/quota.yaml") // search spends a quota
	if err != nil {
		t.Fatal(err)
	}
	one := 1.0
	cfg.Log.AllowSampleRate = &one
	src, err := filesource.Open(cfg.Entitlements.File.Path, filesource.Options{Check: cfg.Policy.CheckEntitlement})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := authzconfig.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	seen := &spanSeen{}
	tr := &fakeTracer{}
	var logs bytes.Buffer
	srv := authz.NewServer(rt, authz.Deps{
		Entitlements: seenEntitlements{cache.New(src, cache.Options{}), seen},
		Quotas:       seenQuotas{quota.NewMemory(nil), seen},
		Log:          slog.New(slog.NewJSONHandler(&logs, nil)),
		Tracer:       tr,
	})
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	_, res := srv.Decide(context.Background(), req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "traceparent": tp}))
	if res.TraceID != "trace-"+tp {
		t.Errorf("Result.TraceID = %q", res.TraceID)
	}
	if got, want := strings.Join(seen.spans, "; "), "entitlements in span-of-"+tp+"; quotas in span-of-"+tp; got != want {
		t.Errorf("calls = %s, want %s", got, want)
	}
	if len(tr.parents) != 1 || tr.parents[0] != tp {
		t.Errorf("StartCheck saw traceparent %q, want %q", tr.parents, tp)
	}
	if len(tr.ended) != 1 {
		t.Fatalf("EndCheck called %d times, want 1", len(tr.ended))
	}
	e := tr.ended[0]
	if e.Code.String() != "ok" || e.Subject != "initech" || e.Plan != "free" || e.Route != "search" || e.DecisionID != testDecisionID || e.TraceID != "trace-"+tp {
		t.Errorf("EndCheck got %+v", e)
	}
	lines := logLines(t, &logs)
	if len(lines) != 1 || lines[0]["trace_id"] != "trace-"+tp || lines[0]["decision_id"] != testDecisionID {
		t.Errorf("decision log = %v, want trace_id and decision_id", lines)
	}
}

// TestTracerHookOnPanic: a Check that panics still ends its span, with the
// 503 it answered.
func TestTracerHookOnPanic(t *testing.T) {
	cfg, err := config.Load("../examples/tollgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := authzconfig.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr := &fakeTracer{}
	srv := authz.NewServer(rt, authz.Deps{Entitlements: panickySource{}, Tracer: tr})
	resp, _ := srv.Check(context.Background(), req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "traceparent": "tp"}))
	if got := summarize(t, resp); got.status != 503 {
		t.Fatalf("status %d, want 503", got.status)
	}
	if len(tr.ended) != 1 || tr.ended[0].Code.String() != "entitlements_unavailable" || tr.ended[0].TraceID != "trace-tp" {
		t.Errorf("EndCheck got %+v, want one entitlements_unavailable in trace-tp", tr.ended)
	}
}
