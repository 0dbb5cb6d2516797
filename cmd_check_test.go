package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/app"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// TestCheckPrintsWhatServeSends: for each request, the headers, status and
// body `tollgate check` prints are the ones a served Check returns to
// Envoy, in the same order.
func TestCheckPrintsWhatServeSends(t *testing.T) {
	dir := demoDir(t, "127.0.0.1:0")
	cfgPath := filepath.Join(dir, "tollgate.yaml")
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(cfg, app.Options{Version: version})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	addrs, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-served })
	client := authv3.NewAuthorizationClient(dialGRPC(t, addrs.GRPC))

	for _, tt := range []struct {
		name, method, path string
		headers            []string
	}{
		{"allowed", "GET", "/v1/search", []string{"x-api-key: demo-free-key", "x-tollgate-plan: forged"}},
		{"feature not in plan", "POST", "/v1/chat", []string{"x-api-key: demo-free-key"}},
		{"payment failed", "GET", "/v1/search", []string{"authorization: Bearer demo-pastdue-key"}},
		{"no credentials", "GET", "/v1/search", nil},
		{"grpc client refused", "POST", "/v1/chat", []string{"content-type: application/grpc", "x-api-key: demo-free-key"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"check", "--config", cfgPath, "--method", tt.method, "--path", tt.path}
			h := map[string]string{":method": tt.method, ":path": tt.path, ":authority": "localhost"}
			for _, kv := range tt.headers {
				args = append(args, "-H", kv)
				k, v, _ := strings.Cut(kv, ": ")
				h[k] = v
			}
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), args, strings.NewReader(""), &stdout, &stderr); code != 0 {
				t.Fatalf("check: exit %d: %s", code, stderr.String())
			}
			var printed checkOutput
			if err := json.Unmarshal(stdout.Bytes(), &printed); err != nil {
				t.Fatal(err)
			}
			resp, err := client.Check(context.Background(), checkRequest(tt.method, tt.path, "localhost", "", h, nil, false))
			if err != nil {
				t.Fatal(err)
			}
			var sent checkOutput
			if ok := resp.GetOkResponse(); ok != nil {
				sent.Status = 200
				sent.UpstreamHeaders = headersOf(ok.GetHeaders())
				sent.HeadersToRemove = ok.GetHeadersToRemove()
				sent.ResponseHeaders = headersOf(ok.GetResponseHeadersToAdd())
			} else {
				d := resp.GetDeniedResponse()
				sent.Status = int(d.GetStatus().GetCode())
				sent.ResponseHeaders = headersOf(d.GetHeaders())
				sent.Body = json.RawMessage(d.GetBody())
			}
			// Every decision has its own id: compare where it goes, not its value.
			for _, hs := range [][]header{printed.UpstreamHeaders, printed.ResponseHeaders, sent.UpstreamHeaders, sent.ResponseHeaders} {
				for i := range hs {
					if strings.HasSuffix(hs[i].Name, "decision-id") {
						hs[i].Value = "ID"
					}
				}
			}
			if got, want := fmt.Sprint(printed.Status, printed.UpstreamHeaders, printed.HeadersToRemove, printed.ResponseHeaders),
				fmt.Sprint(sent.Status, sent.UpstreamHeaders, sent.HeadersToRemove, sent.ResponseHeaders); got != want {
				t.Errorf("check printed %s\nserve sent    %s", got, want)
			}
			if sent.Body != nil && !bytes.Contains(stdout.Bytes(), []byte(`"title"`)) && !json.Valid(sent.Body) {
				return // a gRPC client's denial is text, printed as a JSON string
			}
			if sent.Body != nil && json.Valid(sent.Body) {
				var p, s map[string]any
				_ = json.Unmarshal(printed.Body, &p)
				_ = json.Unmarshal(sent.Body, &s)
				delete(p, "decision_id")
				delete(s, "decision_id")
				if got, want := fmt.Sprint(p), fmt.Sprint(s); got != want {
					t.Errorf("check printed body %s\nserve sent body    %s", got, want)
				}
			}
		})
	}
}

// TestCheckSaysWhyTheSourceFailed: when the entitlements cannot be read,
// check prints the decision (entitlements_unavailable, as serve answers)
// and the reason, which a served client never sees.
func TestCheckSaysWhyTheSourceFailed(t *testing.T) {
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "billing database is down", http.StatusInternalServerError)
	}))
	defer down.Close()
	dir := demoDir(t, "127.0.0.1:0")
	cfgPath := filepath.Join(dir, "tollgate.yaml")
	editFile(t, cfgPath, "  source: file\n", "  source: http\n  http: {url: "+down.URL+", timeout: 20s}\n")
	// Generous bounds: the answer, not a timeout, is what this test reads.
	editFile(t, cfgPath, "    timeout: 50ms\n", "    timeout: 30s\n")
	editFile(t, cfgPath, "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  envoy_timeout: 1m\n")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"check", "--config", cfgPath, "--path", "/v1/search", "-H", "x-api-key: demo-free-key"},
		strings.NewReader(""), &stdout, &stderr)
	var out checkOutput
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil || code != 0 {
		t.Fatalf("exit %d, %v; stdout %s, stderr %s", code, err, stdout.String(), stderr.String())
	}
	if out.Code != "entitlements_unavailable" || !strings.Contains(out.Error, "500") {
		t.Errorf("code %q, error %q; want entitlements_unavailable and the source's answer (500)", out.Code, out.Error)
	}
}

// TestValidateConnectsOnlyWhenAsked: validate builds without touching the
// network, so a config naming a Redis that is down validates; with
// --connect it is refused, naming the field.
func TestValidateConnectsOnlyWhenAsked(t *testing.T) {
	down := redistest.Start(t)
	down.Kill()
	dir := demoDir(t, "127.0.0.1:0")
	cfgPath := filepath.Join(dir, "tollgate.yaml")
	editFile(t, cfgPath, "  source: file\n", "  source: redis\n  redis: {address: \""+down.Addr()+"\"}\n")
	for _, tt := range []struct {
		args       []string
		wantCode   int
		wantOut    string
		wantStderr string
	}{
		{[]string{"validate", "--config", cfgPath}, 0, "ok (2 plans, 3 routes, entitlements: redis at " + down.Addr() + ")", ""},
		{[]string{"validate", "--config", cfgPath, "--connect", "--timeout", "2s"}, 1, "", cfgPath + ":"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
		if code != tt.wantCode || !strings.Contains(stdout.String(), tt.wantOut) || !strings.Contains(stderr.String(), tt.wantStderr) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %d, %q, %q", tt.args, code, stdout.String(), stderr.String(), tt.wantCode, tt.wantOut, tt.wantStderr)
		}
		if tt.wantCode != 0 && !strings.Contains(stderr.String(), ": entitlements.redis.address: ") {
			t.Errorf("--connect error does not name the field: %q", stderr.String())
		}
	}
}

// TestUsageCommand: `tollgate usage SUBJECT` prints what the running
// server's GET /v1/usage reports, with the admin token from the
// environment.
func TestUsageCommand(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_ADMIN_TOKEN", "test-admin-token-0123456789")
	dir := demoDir(t, "127.0.0.1:0")
	cfg, err := config.Load(filepath.Join(dir, "tollgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(cfg, app.Options{Version: version})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	addrs, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-served })
	for _, tt := range []struct {
		args       []string
		wantCode   int
		wantOut    string
		wantStderr string
	}{
		{[]string{"usage", "acme", "--admin", addrs.Admin, "--token-env", "TOLLGATE_TEST_ADMIN_TOKEN"}, 0, `"subject": "acme"`, ""},
		{[]string{"usage", "--admin", addrs.Admin, "--token-env", "TOLLGATE_TEST_ADMIN_TOKEN", "nobody"}, 1, "", "404 Not Found"},
		{[]string{"usage", "acme", "--admin", addrs.Admin, "--token-env", "TOLLGATE_TEST_NO_SUCH_VAR"}, 2, "", "$TOLLGATE_TEST_NO_SUCH_VAR is empty"},
		{[]string{"usage"}, 2, "", "give a SUBJECT"},
		{[]string{"usage", "--help"}, 0, "usage: tollgate usage SUBJECT", ""},
	} {
		var stdout, stderr bytes.Buffer
		got := run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
		if got != tt.wantCode || !strings.Contains(stdout.String(), tt.wantOut) || !strings.Contains(stderr.String(), tt.wantStderr) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %d, %q, %q", tt.args, got, stdout.String(), stderr.String(), tt.wantCode, tt.wantOut, tt.wantStderr)
		}
	}
}
