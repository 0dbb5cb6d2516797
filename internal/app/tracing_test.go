package app

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/metadata"

	"github.com/tollgate-authz/tollgate/internal/apptest"
	"github.com/tollgate-authz/tollgate/internal/otlptest"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// tracedDemo writes the demo config with tracing to endpoint, plus extra.
func tracedDemo(t *testing.T, endpoint, extra string) string {
	t.Helper()
	path := filepath.Join(demoDir(t, "127.0.0.1:0"), "tollgate.yaml")
	editFile(t, path, "shadow: false", fmt.Sprintf("shadow: false\n\ntracing: {enabled: true, endpoint: '%s', service_name: tollgate-test%s}", endpoint, extra))
	return path
}

// checkWith sends a Check with headers and, in the call's gRPC metadata,
// md (as Envoy does with its own span's context when it traces).
func (s *server) checkWith(t *testing.T, method, path string, headers map[string]string, md ...string) *authv3.CheckResponse {
	t.Helper()
	h := map[string]string{":method": method, ":path": path, ":authority": "api.example.com"}
	for k, v := range headers {
		h[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	resp, err := authv3.NewAuthorizationClient(s.conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: "api.example.com", Headers: h,
		}},
	}})
	if err != nil {
		t.Fatalf("Check: gRPC error %v", err)
	}
	return resp
}

// flushSpans exports every span ended so far and waits for the collector.
func (s *server) flushSpans(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := s.app.tracing.queue.ForceFlush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// decisionID is the id an answer carries: upstream on an allow, to the
// client on a denial.
func decisionID(resp *authv3.CheckResponse) string {
	for _, h := range append(resp.GetOkResponse().GetHeaders(), resp.GetDeniedResponse().GetHeaders()...) {
		if k := h.GetHeader().GetKey(); k == "x-tollgate-decision-id" || k == "tollgate-decision-id" {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

// logLine is the decision log line with the given decision id.
func logLine(t *testing.T, logs *syncBuffer, id string) map[string]any {
	t.Helper()
	for _, l := range strings.Split(logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "decision" && m["decision_id"] == id {
			return m
		}
	}
	t.Fatalf("no decision line with decision_id %q in:\n%s", id, logs.String())
	return nil
}

// TestTracingServedChecks serves the demo with tracing to an in-process
// OTLP collector and checks, for each way a Check can carry trace context,
// the span of the Check: its trace, its parent, its attributes; its child
// span for the entitlement lookup; and the trace id in the decision log.
func TestTracingServedChecks(t *testing.T) {
	rcv := otlptest.StartGRPC(t)
	s := startServe(t, tracedDemo(t, rcv.Endpoint, ""))

	const (
		freeKeyDigestPrefix = "9f8cfdb17116" // sha256("demo-free-key")
		tA, pA              = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
		tB, pB              = "a3ce929d0e0e47364bf92f3577b34da6", "e457b5a2e4d86bd1"
		tC, pC              = "80f198ee56343ba864fe8b2a57d3eff7", "05e3ac9a4f6e3b90"
		tD, pD              = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331" // Envoy's, in the metadata
		tE, pE              = "5b8aa5a2d2c872e8321cf37308d69df2", "051581bf3cb55c13" // not sampled
	)
	tests := []struct {
		name                  string
		method, path, key     string
		headers               map[string]string
		md                    []string
		wantTrace, wantParent string // "" trace: a new one
		decision, code        string
		subject, plan, route  string
		wantLookup            bool // a cache miss: the lookup is a child span
	}{
		{"W3C traceparent, allow", "GET", "/v1/search", "demo-free-key",
			map[string]string{"traceparent": "00-" + tA + "-" + pA + "-01", "tracestate": "vendor=1"}, nil,
			tA, pA, "allow", "ok", "initech", "free", "search", true},
		{"B3 headers, deny", "POST", "/v1/chat", "demo-free-key",
			map[string]string{"x-b3-traceid": tB, "x-b3-spanid": pB, "x-b3-sampled": "1"}, nil,
			tB, pB, "deny", "feature_not_in_plan", "initech", "free", "chat", false},
		{"single b3 header, no credentials", "GET", "/v1/search", "",
			map[string]string{"b3": tC + "-" + pC + "-1"}, nil,
			tC, pC, "deny", "missing_credentials", "", "", "search", false},
		{"W3C wins over B3", "POST", "/v1/chat", "demo-pro-key",
			map[string]string{"traceparent": "00-" + tC + "-" + pA + "-01", "x-b3-traceid": tB, "x-b3-spanid": pB, "x-b3-sampled": "1"}, nil,
			tC, pA, "allow", "ok", "acme", "pro", "chat", true},
		{"Envoy's span in the metadata is the parent", "GET", "/v1/search", "demo-pro-key",
			map[string]string{"traceparent": "00-" + tA + "-" + pA + "-01"}, []string{"traceparent", "00-" + tD + "-" + pD + "-01"},
			tD, pD, "allow", "ok", "acme", "pro", "search", false}, // acme is cached by now
		{"no trace context: a new trace", "GET", "/v1/search", "demo-pastdue-key", nil, nil,
			"", "", "deny", "payment_failed", "globex", "pro", "search", true},
	}
	ids := map[string]string{} // case → decision id
	for _, tt := range tests {
		h := map[string]string{"x-request-id": "req-" + tt.name}
		for k, v := range tt.headers {
			h[k] = v
		}
		if tt.key != "" {
			h["x-api-key"] = tt.key
		}
		ids[tt.name] = decisionID(s.checkWith(t, tt.method, tt.path, h, tt.md...))
	}
	// Not sampled: no span, but the trace id is still logged.
	unsampled := decisionID(s.checkWith(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "traceparent": "00-" + tE + "-" + pE + "-00"}))
	s.flushSpans(t)

	spans := rcv.Spans()
	byID := map[string]otlptest.Span{}
	for _, sp := range spans {
		byID[sp.SpanID] = sp
		for k, v := range sp.Attrs {
			if strings.Contains(v, "demo-") || strings.Contains(v, freeKeyDigestPrefix) {
				t.Errorf("span %s attribute %s = %q holds a key or its digest", sp.Name, k, v)
			}
		}
		if sp.Service != "tollgate-test" {
			t.Errorf("span %s has service.name %q", sp.Name, sp.Service)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := ids[tt.name]
			checks := rcv.Find(func(sp otlptest.Span) bool {
				return sp.Name == "tollgate.check" && sp.Attrs["tollgate.decision_id"] == id
			})
			if len(checks) != 1 {
				t.Fatalf("want 1 check span with decision id %s, got:\n%s", id, otlptest.Dump(spans))
			}
			c := checks[0]
			if tt.wantTrace != "" && (c.TraceID != tt.wantTrace || c.ParentSpanID != tt.wantParent) {
				t.Errorf("trace %s parent %s, want trace %s parent %s", c.TraceID, c.ParentSpanID, tt.wantTrace, tt.wantParent)
			}
			if tt.wantTrace == "" && (c.ParentSpanID != "" || len(c.TraceID) != 32) {
				t.Errorf("trace %s parent %s, want a new trace", c.TraceID, c.ParentSpanID)
			}
			if c.Kind != tracepb.Span_SPAN_KIND_SERVER {
				t.Errorf("kind %v, want server", c.Kind)
			}
			want := map[string]string{
				"tollgate.decision": tt.decision, "tollgate.code": tt.code, "tollgate.route": tt.route,
				"tollgate.subject": tt.subject, "tollgate.plan": tt.plan, "tollgate.request_id": "req-" + tt.name,
			}
			for k, v := range want {
				if c.Attrs[k] != v {
					t.Errorf("%s = %q, want %q (all: %v)", k, c.Attrs[k], v, c.Attrs)
				}
			}
			lookups := rcv.Find(func(sp otlptest.Span) bool {
				return sp.Name == "tollgate.entitlement.lookup" && sp.ParentSpanID == c.SpanID
			})
			if got := len(lookups) == 1; got != tt.wantLookup {
				t.Errorf("lookup child spans: %d, want one: %v\n%s", len(lookups), tt.wantLookup, otlptest.Dump(spans))
			} else if got && (lookups[0].TraceID != c.TraceID || lookups[0].Attrs["tollgate.source"] != "file" || lookups[0].Attrs["tollgate.outcome"] != "ok") {
				t.Errorf("lookup span %v", lookups[0])
			}
			if got := logLine(t, s.logs, id)["trace_id"]; got != c.TraceID {
				t.Errorf("decision log trace_id = %v, want %s", got, c.TraceID)
			}
		})
	}
	if got := rcv.Find(func(sp otlptest.Span) bool { return sp.TraceID == tE }); len(got) != 0 {
		t.Errorf("an unsampled Check was exported: %v", got)
	}
	if got := logLine(t, s.logs, unsampled)["trace_id"]; got != tE {
		t.Errorf("unsampled Check logged trace_id %v, want %s", got, tE)
	}
	if got := apptest.MetricValue(t, s.admin, "tollgate_trace_spans_exported_total"); got != fmt.Sprint(len(spans)) {
		t.Errorf("tollgate_trace_spans_exported_total = %s, want %d", got, len(spans))
	}
}

// TestTracingRedisQuotaSpans: with the redis quota store, a traced Check's
// spend is a span, and the lease it takes from Redis is a Redis round trip
// below it, named by its command, never by its keys.
func TestTracingRedisQuotaSpans(t *testing.T) {
	rs := redistest.Start(t)
	rcv := otlptest.StartGRPC(t)
	path := quotaDemoDir(t, rs.Addr(), 1000, 10)
	patientQuotaTimeouts(t, path)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b := strings.Replace(string(raw), "shadow: false", fmt.Sprintf("shadow: false\n\ntracing: {enabled: true, endpoint: '%s'}", rcv.Endpoint), 1)
	writeFile(t, path, b)
	s := startServe(t, path)

	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	resp := s.checkWith(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key", "traceparent": "00-" + trace + "-" + parent + "-01"})
	if code(resp) != "ok" {
		t.Fatalf("code %s", code(resp))
	}
	s.flushSpans(t)
	spans := rcv.Find(func(sp otlptest.Span) bool { return sp.TraceID == trace })
	byName := map[string][]otlptest.Span{}
	for _, sp := range spans {
		byName[sp.Name] = append(byName[sp.Name], sp)
		for k, v := range sp.Attrs {
			if strings.Contains(v, "acme:") || strings.Contains(v, "tollgate:") {
				t.Errorf("span %s attribute %s = %q holds a Redis key", sp.Name, k, v)
			}
		}
	}
	if len(byName["tollgate.check"]) != 1 || len(byName["tollgate.quota.spend"]) != 1 {
		t.Fatalf("want one check and one spend span, got:\n%s", otlptest.Dump(spans))
	}
	check, spend := byName["tollgate.check"][0], byName["tollgate.quota.spend"][0]
	if spend.ParentSpanID != check.SpanID || spend.Attrs["tollgate.quota_store"] != "redis" || spend.Attrs["tollgate.outcome"] != "allowed" {
		t.Errorf("spend span %v, want a child of %s in the redis store, allowed", spend, check.SpanID)
	}
	var leases []otlptest.Span
	for name, ss := range byName {
		if strings.HasPrefix(name, "redis EVAL") {
			leases = append(leases, ss...)
		}
	}
	if len(leases) == 0 {
		t.Fatalf("no Redis round trip under the spend:\n%s", otlptest.Dump(spans))
	}
	for _, l := range leases {
		if l.ParentSpanID != spend.SpanID || l.Attrs["tollgate.redis"] != "quota_store.redis" || l.Kind != tracepb.Span_SPAN_KIND_CLIENT {
			t.Errorf("lease span %v, want a client span, child of the spend %s", l, spend.SpanID)
		}
	}
}

// TestTracingOverHTTP exports with protocol: http.
func TestTracingOverHTTP(t *testing.T) {
	rcv := otlptest.StartHTTP(t)
	s := startServe(t, tracedDemo(t, rcv.Endpoint, ", protocol: http"))
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	s.checkWith(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "traceparent": "00-" + trace + "-00f067aa0ba902b7-01"})
	s.flushSpans(t)
	if got := rcv.Find(func(sp otlptest.Span) bool { return sp.TraceID == trace && sp.Name == "tollgate.check" }); len(got) != 1 {
		t.Errorf("check spans over HTTP: %v", rcv.Spans())
	}
}

// TestTracingNeverStallsAChecks: with the collector not answering, Checks
// are answered all the same; spans past tracing.max_queue are dropped and
// counted, and export resumes when the collector does.
func TestTracingNeverStallsAChecks(t *testing.T) {
	rcv := otlptest.StartGRPC(t)
	rcv.Block()
	s := startServe(t, tracedDemo(t, rcv.Endpoint, ", max_queue: 2, timeout: 60s"))
	key := map[string]string{"x-api-key": "demo-free-key"}
	s.checkWith(t, "GET", "/v1/search", key) // warms the cache: later Checks make one span each

	// The exporter's goroutine is now stuck in an export that does not return.
	flushed := make(chan error, 1)
	go func() { flushed <- s.app.tracing.queue.ForceFlush(context.Background()) }()
	waitFor(t, func() bool { return rcv.Exports() >= 1 })

	const checks = 20
	for range checks {
		if c := code(s.checkWith(t, "GET", "/v1/search", key)); c != "ok" {
			t.Fatalf("code %s", c)
		}
	}
	// Two spans wait in the queue; the others were dropped.
	if got, want := apptest.MetricValue(t, s.admin, `tollgate_trace_spans_dropped_total{reason="queue_full"}`), fmt.Sprint(checks-2); got != want {
		t.Errorf("dropped (queue_full) = %s, want %s", got, want)
	}
	rcv.Release()
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	s.checkWith(t, "GET", "/v1/search", key)
	s.flushSpans(t)
	if got := len(rcv.Find(func(sp otlptest.Span) bool { return sp.Name == "tollgate.check" })); got != 1+2+1 {
		t.Errorf("exported check spans = %d, want 4 (the first, the two queued, the last)", got)
	}
}

// TestTracingReloadNeedsRestart: a reload says that a changed tracing
// block applies only after a restart, and says nothing when it did not
// change.
func TestTracingReloadNeedsRestart(t *testing.T) {
	path := filepath.Join(demoDir(t, "127.0.0.1:0"), "tollgate.yaml")
	s := startServe(t, path)
	const warning = "tracing settings take effect only after a restart"
	reloads := func() string {
		return apptest.MetricValue(t, s.admin, `tollgate_reloads_total{file="config",result="ok"}`)
	}
	// An edit that leaves tracing alone (startServe returns once the
	// watches run, so the edit is seen).
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, fmt.Sprintf("%s\n# an edit of a comment\n", raw))
	waitFor(t, func() bool { return reloads() != "" && reloads() != "0" })
	if strings.Contains(s.logs.String(), warning) {
		t.Errorf("edits of comments warned about tracing:\n%s", s.logs.String())
	}
	writeFile(t, path, string(raw)+"\ntracing: {enabled: true, sample_ratio: 0.5}\n")
	waitFor(t, func() bool { return strings.Contains(s.logs.String(), warning) })
}
