package app

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// These tests hold promises of the docs through the served app, each one
// written so that a plausible code change breaks it.

// editDemo starts from the demo config in a temp dir and applies each
// old→new replacement to tollgate.yaml; it fails if a replacement misses.
func editDemo(t *testing.T, edits ...string) (dir, cfg string) {
	t.Helper()
	dir = demoDir(t, "127.0.0.1:0")
	cfg = filepath.Join(dir, "tollgate.yaml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(edits); i += 2 {
		if !strings.Contains(s, edits[i]) {
			t.Fatalf("demo config has no %q to replace", edits[i])
		}
		s = strings.Replace(s, edits[i], edits[i+1], 1)
	}
	writeFile(t, cfg, s)
	return dir, cfg
}

// decisionLines returns the decision log's lines as maps.
func decisionLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "decision" {
			out = append(out, m)
		}
	}
	return out
}

// TestStatusOverridesFromYAML: responses.status in the config file changes
// the HTTP status of a code, and only of that code.
func TestStatusOverridesFromYAML(t *testing.T) {
	_, cfg := editDemo(t,
		"  # status:                        # override the HTTP status per code\n  #   payment_failed: 403\n",
		"  status: {payment_failed: 403, route_not_allowed: 404}\n")
	s := startServe(t, cfg)
	tests := []struct {
		name       string
		method     string
		path       string
		key        string
		wantCode   string
		wantStatus int
	}{
		{"overridden payment_failed", "GET", "/v1/search", "demo-pastdue-key", "payment_failed", 403},
		{"overridden route_not_allowed", "GET", "/nowhere", "demo-pro-key", "route_not_allowed", 404},
		{"not overridden feature_not_in_plan", "POST", "/v1/chat", "demo-free-key", "feature_not_in_plan", 402},
		{"not overridden invalid_credentials", "GET", "/v1/search", "no-such-key", "invalid_credentials", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := s.check(t, tt.method, tt.path, map[string]string{"x-api-key": tt.key})
			if got := code(resp); got != tt.wantCode {
				t.Fatalf("code = %q, want %q", got, tt.wantCode)
			}
			if got := httpStatus(resp); got != tt.wantStatus {
				t.Errorf("status = %d, want %d", got, tt.wantStatus)
			}
			var body struct{ Status int }
			if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body); err != nil || body.Status != tt.wantStatus {
				t.Errorf("problem+json status = %d (%v), want %d", body.Status, err, tt.wantStatus)
			}
		})
	}
}

// TestShadowModeMarks: in shadow mode a would-be denial is let through but
// marked as such in dynamic metadata, the decision log and the metrics;
// a real allow is not marked.
func TestShadowModeMarks(t *testing.T) {
	_, cfg := editDemo(t, "shadow: false", "shadow: true")
	s := startServe(t, cfg)

	denied := s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pastdue-key"})
	if denied.GetOkResponse() == nil {
		t.Fatalf("shadow mode refused a request: %v", denied)
	}
	md := denied.GetDynamicMetadata().GetFields()
	if got, want := md["decision"].GetStringValue(), "deny"; got != want {
		t.Errorf("metadata decision = %q, want %q", got, want)
	}
	if got := md["shadow"].GetBoolValue(); !got {
		t.Errorf("metadata shadow = %v, want true", md["shadow"])
	}
	if got, want := md["code"].GetStringValue(), "payment_failed"; got != want {
		t.Errorf("metadata code = %q, want %q", got, want)
	}

	allowed := s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"})
	if _, ok := allowed.GetDynamicMetadata().GetFields()["shadow"]; ok {
		t.Errorf("a real allow is marked shadow: %v", allowed.GetDynamicMetadata())
	}

	waitFor(t, func() bool { return len(decisionLines(t, s.logs.String())) >= 2 })
	var shadowLines, plainLines int
	for _, l := range decisionLines(t, s.logs.String()) {
		switch {
		case l["code"] == "payment_failed" && l["shadow"] == true && l["decision"] == "deny":
			shadowLines++
		case l["code"] == "ok" && l["shadow"] == nil:
			plainLines++
		}
	}
	if shadowLines != 1 || plainLines != 1 {
		t.Errorf("decision log: %d shadow denials and %d plain allows, want 1 and 1:\n%s", shadowLines, plainLines, s.logs.String())
	}

	if got := metricValue(t, s, `tollgate_checks_total{code="payment_failed",decision="shadow_deny"}`); got != "1" {
		t.Errorf("shadow_deny counter = %q, want 1", got)
	}
	if got := metricValue(t, s, `tollgate_checks_total{code="payment_failed",decision="deny"}`); got != "0" {
		t.Errorf("deny counter = %q, want 0 in shadow mode", got)
	}
}

// TestPrincipalIdentityThroughServer: the mTLS peer principal that Envoy
// puts in attributes.source.principal identifies the subject, through the
// server's own decoding of the Check.
func TestPrincipalIdentityThroughServer(t *testing.T) {
	const spiffe = "spiffe://example.org/ns/billing/sa/reporter"
	dir, cfg := editDemo(t,
		"  - api_key: {header: x-api-key}\n", "  - principal\n  - api_key: {header: x-api-key}\n")
	ents := filepath.Join(dir, "entitlements.yaml")
	b, _ := os.ReadFile(ents)
	writeFile(t, ents, string(b)+"  - id: "+spiffe+"\n    plan: pro\n    status: active\n")
	s := startServe(t, cfg)

	check := func(principal string) *authv3.CheckResponse {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h := map[string]string{":method": "POST", ":path": "/v1/chat", ":authority": "api.example.com"}
		resp, err := authv3.NewAuthorizationClient(s.conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: principal},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: "/v1/chat", Host: "api.example.com", Headers: h,
			}},
		}})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp
	}
	tests := []struct {
		name, principal, wantCode, wantSubject string
	}{
		{"known principal", spiffe, "ok", spiffe},
		{"unknown principal", "spiffe://example.org/ns/x/sa/nobody", "invalid_credentials", ""},
		{"no principal", "", "missing_credentials", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := check(tt.principal)
			if got := code(resp); got != tt.wantCode {
				t.Fatalf("code = %q, want %q", got, tt.wantCode)
			}
			var subject string
			for _, h := range resp.GetOkResponse().GetHeaders() {
				if h.GetHeader().GetKey() == "x-tollgate-subject" {
					subject = h.GetHeader().GetValue()
				}
			}
			if subject != tt.wantSubject {
				t.Errorf("x-tollgate-subject = %q, want %q", subject, tt.wantSubject)
			}
		})
	}
}

// TestCreditsNewBalanceStartsFreshCount: credits are reserved against the
// balance billing wrote; when billing writes a new balance, the count
// starts again from it (docs/quotas.md: Credits).
func TestCreditsNewBalanceStartsFreshCount(t *testing.T) {
	dir, cfg := editDemo(t,
		"default: deny", `  - name: render
    match: {method: POST, path: {prefix: /v1/render}}
    quota: credits
    cost: 2
default: deny`)
	ents := filepath.Join(dir, "entitlements.yaml")
	orig, _ := os.ReadFile(ents)
	withCredits := func(n string) string {
		return strings.Replace(string(orig), "  - id: acme\n    plan: pro\n    status: active\n",
			"  - id: acme\n    plan: pro\n    status: active\n    credits: "+n+"\n", 1)
	}
	writeFile(t, ents, withCredits("5"))
	s := startServe(t, cfg)
	pro := map[string]string{"x-api-key": "demo-pro-key"}
	render := func() string { return code(s.check(t, "POST", "/v1/render", pro)) }

	// 5 credits at 2 each: two requests, then the third is refused.
	var got []string
	for range 3 {
		got = append(got, render())
	}
	if want := []string{"ok", "ok", "insufficient_credits"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("with 5 credits: %v, want %v", got, want)
	}
	resp := s.check(t, "POST", "/v1/render", pro)
	var body struct{ Credits, Cost int64 }
	if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body); err != nil || body.Credits != 1 || body.Cost != 2 {
		t.Errorf("refusal body credits=%d cost=%d (%v), want 1 and 2", body.Credits, body.Cost, err)
	}

	// Billing debits what was used and tops up: the new balance is 4.
	writeFile(t, ents, withCredits("4"))
	waitFor(t, func() bool { return render() == "ok" })
	if got := render(); got != "ok" {
		t.Errorf("second request on the new balance of 4: %s, want ok", got)
	}
	if got := render(); got != "insufficient_credits" {
		t.Errorf("third request on the new balance of 4: %s, want insufficient_credits", got)
	}
}
