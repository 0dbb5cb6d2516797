//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	yaml "go.yaml.in/yaml/v3"

	"github.com/tollgate-authz/tollgate/internal/envoytest"
	"github.com/tollgate-authz/tollgate/internal/otlptest"
	"github.com/tollgate-authz/tollgate/internal/proc"
)

// TestTracingThroughEnvoy runs Envoy with its OpenTelemetry tracer and
// tollgate with tracing on, both exporting to one in-process OTLP
// collector. A request that arrives with a W3C traceparent is one trace:
// Envoy's span continues the client's, its ext_authz call is a span below
// it, and tollgate's span of the Check is below that, with the decision on
// it; the decision log and the answer carry what support needs to find it.
func TestTracingThroughEnvoy(t *testing.T) {
	envoyPath(t)
	rcv := otlptest.StartGRPC(t)
	dir, err := os.MkdirTemp(workDir, "tracing-")
	if err != nil {
		t.Fatal(err)
	}
	upstream, err := startEcho(t.Cleanup)
	if err != nil {
		t.Fatal(err)
	}
	tg := startTracedTollgate(t, dir, rcv.Endpoint)
	e := startTracedEnvoy(t, dir, tg.grpcAddr, upstream, rcv.Addr)

	tests := []struct {
		name                       string
		method, path, key          string
		status                     int
		decision, code, subj, plan string
	}{
		{"allow", "GET", "/v1/search", "demo-free-key", 200, "allow", "ok", "initech", "free"},
		{"deny", "POST", "/v1/chat", "demo-free-key", 402, "deny", "feature_not_in_plan", "initech", "free"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			trace := fmt.Sprintf("4bf92f3577b34da6a3ce929d0e0e47%02d", i)
			const clientSpan = "00f067aa0ba902b7"
			rememberSecret(tt.key)
			r := do(t, tt.method, e.url(tt.path), "x-api-key: "+tt.key, "traceparent: 00-"+trace+"-"+clientSpan+"-01")
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			// The decision id: upstream sees it on an allow, the client on a denial.
			id := r.seen("x-tollgate-decision-id")
			if tt.status != 200 {
				id = r.header.Get("tollgate-decision-id")
				var body struct {
					DecisionID string `json:"decision_id"`
				}
				if err := json.Unmarshal(r.body, &body); err != nil || body.DecisionID != id {
					t.Errorf("body decision_id %q (%v), header %q", body.DecisionID, err, id)
				}
			}
			if len(id) != 32 {
				t.Fatalf("decision id %q", id)
			}

			// Envoy flushes its spans on its own timer, tollgate every second.
			inTrace := func(s otlptest.Span) bool { return s.TraceID == trace }
			checks := rcv.Wait(t, 60*time.Second, 1, func(s otlptest.Span) bool { return inTrace(s) && s.Name == "tollgate.check" })
			check := checks[0]
			envoySpans := rcv.Wait(t, 60*time.Second, 2, func(s otlptest.Span) bool { return inTrace(s) && s.Service == "envoy" })
			byID := map[string]otlptest.Span{}
			for _, s := range envoySpans {
				byID[s.SpanID] = s
			}
			// tollgate's span is a child of Envoy's ext_authz call, itself
			// within the span Envoy started for the client's request.
			authzCall, ok := byID[check.ParentSpanID]
			if !ok {
				t.Fatalf("tollgate's span's parent %s is none of Envoy's spans:\n%s", check.ParentSpanID, otlptest.Dump(rcv.Find(inTrace)))
			}
			ingress, ok := byID[authzCall.ParentSpanID]
			if !ok || ingress.ParentSpanID != clientSpan || ingress.Kind != tracepb.Span_SPAN_KIND_SERVER {
				t.Errorf("Envoy's ext_authz span %v is not below its server span for the client's %s:\n%s", authzCall, clientSpan, otlptest.Dump(rcv.Find(inTrace)))
			}
			want := map[string]string{
				"tollgate.decision": tt.decision, "tollgate.code": tt.code, "tollgate.route": strings.TrimPrefix(tt.path, "/v1/"),
				"tollgate.subject": tt.subj, "tollgate.plan": tt.plan, "tollgate.decision_id": id,
			}
			for k, v := range want {
				if check.Attrs[k] != v {
					t.Errorf("%s = %q, want %q (all %v)", k, check.Attrs[k], v, check.Attrs)
				}
			}
			if check.Service != "tollgate" || check.Kind != tracepb.Span_SPAN_KIND_SERVER {
				t.Errorf("tollgate's span: service %q kind %v", check.Service, check.Kind)
			}
			// The decision log line: found by the decision id, it names the trace.
			line := tg.decisionLine(t, id)
			if line["trace_id"] != trace || line["code"] != tt.code {
				t.Errorf("decision log line %v, want trace_id %s and code %s", line, trace, tt.code)
			}
			// Envoy's access log line carries it too.
			if !eventually(10*time.Second, func() bool {
				b, _ := os.ReadFile(e.accessLog)
				for _, l := range strings.Split(string(b), "\n") {
					var m map[string]any
					if json.Unmarshal([]byte(l), &m) == nil && m["authz_decision_id"] == id {
						return m["authz_code"] == tt.code
					}
				}
				return false
			}) {
				b, _ := os.ReadFile(e.accessLog)
				t.Errorf("no access log line with authz_decision_id %s and code %s:\n%s", id, tt.code, b)
			}
		})
	}
	for _, s := range rcv.Spans() {
		for k, v := range s.Attrs {
			if strings.Contains(v, "demo-free-key") || strings.Contains(v, "9f8cfdb17116") {
				t.Errorf("span %s attribute %s = %q holds the key or its digest", s.Name, k, v)
			}
		}
	}
}

// startTracedTollgate serves the e2e config with tracing to endpoint.
func startTracedTollgate(t *testing.T, dir, endpoint string) *tollgate {
	t.Helper()
	path, err := tollgateConfig(dir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(src, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["tracing"] = map[string]any{"enabled": true, "endpoint": endpoint}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := proc.Start("tollgate", filepath.Join(dir, "tollgate.log"), exec.Command(tollgateBin, "serve", "--config", path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	var l struct{ GRPC, Admin string }
	if err := p.WaitJSON(servingRE, 15*time.Second, &l); err != nil {
		t.Fatal(err)
	}
	return &tollgate{Child: p, grpcAddr: l.GRPC, adminAddr: l.Admin, config: path}
}

// decisionLine is tollgate's decision log line with the given decision id.
func (tg *tollgate) decisionLine(t *testing.T, id string) map[string]any {
	t.Helper()
	var found map[string]any
	ok := eventually(10*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(tg.config), "tollgate.log"))
		if err != nil {
			return false
		}
		for _, l := range strings.Split(string(b), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "decision" && m["decision_id"] == id {
				found = m
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no decision log line with decision_id %s", id)
	}
	return found
}

// startTracedEnvoy runs Envoy from the repo's envoy.yaml with its
// OpenTelemetry tracer on, sampling every request and exporting to the
// collector at otlpAddr (host:port) over gRPC.
func startTracedEnvoy(t *testing.T, dir, tollgateAddr, upstream, otlpAddr string) *envoy {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot, "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c := envoyOpts{tollgate: tollgateAddr, upstream: upstream}.changes(dir)
	derived, statPrefix, err := envoytest.Derive(src, c)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := withEnvoyTracing(derived, otlpAddr)
	if err != nil {
		t.Fatal(err)
	}
	e, err := envoytest.Start(envoytest.Options{
		Bin: envoyPath(t), Config: cfg, Dir: dir, Name: "envoy",
		BaseID: 30000, LogLevel: "info", Ready: 20 * time.Second,
		Args: []string{"--log-path", filepath.Join(dir, "envoy.log"), "--file-flush-interval-msec", "50"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return &envoy{Envoy: e, statPrefix: statPrefix, accessLog: c.AccessLog}
}

// withEnvoyTracing adds to a derived Envoy config: the HTTP connection
// manager's OpenTelemetry tracer as docs/tracing.md shows it (but sampling
// every request), the otel_collector cluster it exports to, and runtime
// keys that make it flush each span at once rather than every five seconds.
func withEnvoyTracing(cfg []byte, otlpAddr string) ([]byte, error) {
	host, portStr, err := net.SplitHostPort(otlpAddr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, err
	}
	var root map[string]any
	if err := yaml.Unmarshal(cfg, &root); err != nil {
		return nil, err
	}
	sr := root["static_resources"].(map[string]any)
	listener := sr["listeners"].([]any)[0].(map[string]any)
	chain := listener["filter_chains"].([]any)[0].(map[string]any)
	var hcm map[string]any
	for _, f := range chain["filters"].([]any) {
		if f := f.(map[string]any); f["name"] == "envoy.filters.network.http_connection_manager" {
			hcm = f["typed_config"].(map[string]any)
		}
	}
	if hcm == nil {
		return nil, fmt.Errorf("no http_connection_manager in the derived config")
	}
	// The tracing block docs/tracing.md shows, sampling every request.
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "tracing.md"))
	if err != nil {
		return nil, err
	}
	_, block, _ := strings.Cut(string(doc), "# in the http_connection_manager's typed_config\n")
	block, _, _ = strings.Cut(block, "```")
	var shown struct {
		Tracing map[string]any `yaml:"tracing"`
	}
	if err := yaml.Unmarshal([]byte(block), &shown); err != nil || shown.Tracing == nil {
		return nil, fmt.Errorf("docs/tracing.md: no Envoy tracing block (%v)", err)
	}
	shown.Tracing["random_sampling"] = map[string]any{"value": 100}
	hcm["tracing"] = shown.Tracing
	sr["clusters"] = append(sr["clusters"].([]any), map[string]any{
		"name": "otel_collector", "type": "STATIC", "connect_timeout": "1s",
		"typed_extension_protocol_options": map[string]any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": map[string]any{
				"@type":                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
				"explicit_http_config": map[string]any{"http2_protocol_options": map[string]any{}},
			},
		},
		"load_assignment": map[string]any{"cluster_name": "otel_collector", "endpoints": []any{map[string]any{"lb_endpoints": []any{
			map[string]any{"endpoint": map[string]any{"address": map[string]any{"socket_address": map[string]any{"address": host, "port_value": port}}}},
		}}}},
	})
	root["layered_runtime"] = map[string]any{"layers": []any{map[string]any{
		"name": "tracing_flush",
		"static_layer": map[string]any{
			"tracing.opentelemetry.min_flush_spans":   1,
			"tracing.opentelemetry.flush_interval_ms": 200,
		},
	}}}
	return yaml.Marshal(root)
}
