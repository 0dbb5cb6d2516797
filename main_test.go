package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// syncBuffer is a log sink that tests read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// demoDir copies the example config and entitlements to a temp dir, with
// the listeners on free ports.
func demoDir(t *testing.T, grpcAddr string) string {
	t.Helper()
	dir := t.TempDir()
	cfg, err := os.ReadFile("examples/tollgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(cfg), "grpc_address: 127.0.0.1:9191", "grpc_address: "+grpcAddr, 1)
	s = strings.Replace(s, "admin_address: 127.0.0.1:9090", "admin_address: 127.0.0.1:0", 1)
	s = strings.Replace(s, "poll_interval: 1s", "poll_interval: 20ms", 1)
	s += "\nadmin: {token_env: TOLLGATE_TEST_ADMIN_TOKEN}\n"
	writeFile(t, filepath.Join(dir, "tollgate.yaml"), s)
	ents, err := os.ReadFile("examples/entitlements.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "entitlements.yaml"), string(ents))
	return dir
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// server is a running `tollgate serve`.
type server struct {
	grpc, admin string
	logs        *syncBuffer
	stop        func() int // cancels the context (as SIGTERM does) and waits for the exit status
	conn        *grpc.ClientConn
}

// startServe runs the real serve command in-process and waits for its
// "serving" log line to learn the bound addresses.
func startServe(t *testing.T, cfgPath string, dialOpts ...grpc.DialOption) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	exit := make(chan int, 1)
	go func() { exit <- run(ctx, []string{"serve", "--config", cfgPath}, nil, io.Discard, logs) }()
	s := &server{logs: logs}
	var once sync.Once
	code := 0
	s.stop = func() int {
		once.Do(func() { cancel(); code = <-exit })
		return code
	}
	t.Cleanup(func() { s.stop() })
	deadline := time.Now().Add(10 * time.Second)
	for s.grpc == "" {
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start; log:\n%s", logs.String())
		}
		select {
		case c := <-exit:
			exit <- c // for stop, which the cleanup calls
			t.Fatalf("serve exited with %d; log:\n%s", c, logs.String())
		case <-time.After(5 * time.Millisecond):
		}
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		for sc.Scan() {
			var line struct{ Msg, GRPC, Admin string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
				s.grpc, s.admin = line.GRPC, line.Admin
			}
		}
	}
	target := s.grpc
	if strings.HasPrefix(target, "unix://") {
		target = "unix:" + strings.TrimPrefix(target, "unix://")
	}
	if len(dialOpts) == 0 {
		dialOpts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s.conn = conn
	return s
}

func (s *server) check(t *testing.T, method, path string, headers map[string]string) *authv3.CheckResponse {
	t.Helper()
	h := map[string]string{":method": method, ":path": path, ":authority": "api.example.com", "x-request-id": "e2e-1"}
	for k, v := range headers {
		h[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
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

func (s *server) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func httpStatus(resp *authv3.CheckResponse) int {
	if resp.GetOkResponse() != nil {
		return 200
	}
	return int(resp.GetDeniedResponse().GetStatus().GetCode())
}

func code(resp *authv3.CheckResponse) string {
	return resp.GetDynamicMetadata().GetFields()["code"].GetStringValue()
}

// TestServeEndToEnd runs the real serve command and sends Envoy-shaped
// Checks over gRPC for every row of the code table that applies so far.
func TestServeEndToEnd(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_ADMIN_TOKEN", "test-admin-token-0123456789")
	dir := demoDir(t, "127.0.0.1:0")
	s := startServe(t, filepath.Join(dir, "tollgate.yaml"))

	tests := []struct {
		name    string
		method  string
		path    string
		headers map[string]string
		status  int
		code    string
	}{
		{"missing_credentials", "GET", "/v1/search", nil, 401, "missing_credentials"},
		{"invalid_credentials", "GET", "/v1/search", map[string]string{"x-api-key": "wrong"}, 401, "invalid_credentials"},
		{"allowed", "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"}, 200, "ok"},
		{"feature_not_in_plan", "POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key"}, 402, "feature_not_in_plan"},
		{"pro chats", "POST", "/v1/chat", map[string]string{"authorization": "Bearer demo-pro-key"}, 200, "ok"},
		{"payment_failed", "GET", "/v1/search", map[string]string{"x-api-key": "demo-pastdue-key"}, 402, "payment_failed"},
		{"route_not_allowed", "DELETE", "/v1/everything", map[string]string{"x-api-key": "demo-pro-key"}, 403, "route_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := s.check(t, tt.method, tt.path, tt.headers)
			if got, want := fmt.Sprint(httpStatus(resp), " ", code(resp)), fmt.Sprint(tt.status, " ", tt.code); got != want {
				t.Errorf("got %s, want %s", got, want)
			}
		})
	}

	t.Run("health service", func(t *testing.T) {
		hr, err := healthpb.NewHealthClient(s.conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health = %v, %v", hr, err)
		}
	})
	t.Run("admin", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz"} {
			if st, body := s.get(t, p); st != 200 {
				t.Errorf("%s = %d %s", p, st, body)
			}
		}
		_, metrics := s.get(t, "/metrics")
		for _, want := range []string{
			`tollgate_checks_total{code="ok",decision="allow"} 2`,
			`tollgate_checks_total{code="feature_not_in_plan",decision="deny"} 1`,
			`tollgate_checks_total{code="missing_credentials",decision="deny"} 1`,
			`tollgate_entitlement_cache_total{outcome="miss"} 4`,
			`tollgate_check_duration_seconds_count 7`,
			`tollgate_build_info{version="dev"} 1`,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	})

	t.Run("entitlements reload", func(t *testing.T) {
		ents := filepath.Join(dir, "entitlements.yaml")
		orig, _ := os.ReadFile(ents)
		// A bad edit keeps the last good data and logs file, line and field.
		writeFile(t, ents, strings.Replace(string(orig), "status: past_due", "status: overdue", 1))
		waitFor(t, func() bool { return strings.Contains(s.logs.String(), "entitlements.yaml:16: subjects[2].status") })
		if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pastdue-key"})); got != "payment_failed" {
			t.Errorf("after a bad edit: %s, want payment_failed from the last good data", got)
		}
		// globex pays: a good edit takes effect without waiting for the cache TTL.
		writeFile(t, ents, strings.Replace(string(orig), "status: past_due", "status: active", 1))
		waitFor(t, func() bool {
			return code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pastdue-key"})) == "ok"
		})
		_, metrics := s.get(t, "/metrics")
		if !strings.Contains(metrics, `tollgate_reloads_total{file="entitlements",result="error"} 1`) {
			t.Errorf("reload error not counted")
		}
	})

	t.Run("config reload", func(t *testing.T) {
		cfg := filepath.Join(dir, "tollgate.yaml")
		orig, _ := os.ReadFile(cfg)
		writeFile(t, cfg, strings.Replace(string(orig), "feature: chat\n", "feature: chta\n", 1))
		waitFor(t, func() bool { return strings.Contains(s.logs.String(), `config reload failed`) })
		if !strings.Contains(s.logs.String(), `routes[2].feature: \"chta\" is not a feature of any plan`) {
			t.Errorf("the log does not name the field: %s", s.logs.String())
		}
		// Free gets chat: the policy changes live.
		writeFile(t, cfg, strings.Replace(string(orig), "features: [search]\n", "features: [search, chat]\n", 1))
		waitFor(t, func() bool {
			return code(s.check(t, "POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key"})) == "ok"
		})
	})

	t.Run("invalidate", func(t *testing.T) {
		body := strings.NewReader(`{"subject":"initech"}`)
		r, _ := http.NewRequest("POST", "http://"+s.admin+"/v1/invalidate", body)
		r.Header.Set("Authorization", "Bearer test-admin-token-0123456789")
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"invalidated":`) {
			t.Errorf("invalidate: %d %s", resp.StatusCode, b)
		}
		// The next check for initech is a cache miss again.
		s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})
		_, metrics := s.get(t, "/metrics")
		if !strings.Contains(metrics, `tollgate_entitlement_invalidations_total{via="admin"} 1`) {
			t.Errorf("invalidation not counted")
		}
	})

	t.Run("drain", func(t *testing.T) {
		if got := s.stop(); got != 0 {
			t.Errorf("exit status = %d, want 0", got)
		}
		for _, want := range []string{`"msg":"draining"`, `"msg":"stopped"`} {
			if !strings.Contains(s.logs.String(), want) {
				t.Errorf("log lacks %s", want)
			}
		}
	})
}

func TestServeUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "tg.sock")
	// A stale socket file from a crashed run must not block start-up.
	writeFile(t, sock, "")
	os.Remove(sock)
	dir := demoDir(t, "unix://"+sock)
	s := startServe(t, filepath.Join(dir, "tollgate.yaml"))
	if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})); got != "ok" {
		t.Errorf("over a unix socket: %s, want ok", got)
	}
	s.stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file left behind after stop: %v", err)
	}
}

func TestServeFailsClearlyOnTakenPort(t *testing.T) {
	dir := demoDir(t, "127.0.0.1:0")
	s := startServe(t, filepath.Join(dir, "tollgate.yaml"))
	dir2 := demoDir(t, s.grpc)
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"serve", "--config", filepath.Join(dir2, "tollgate.yaml")}, nil, io.Discard, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "tollgate: grpc listener: listen tcp "+s.grpc) {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCLI(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, bad, "entitlements: {file: {path: e.yaml}}\nroutes:\n  - feature: nope\n")
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"no command", nil, "", 2, "", "usage: tollgate"},
		{"unknown command", []string{"frobnicate"}, "", 2, "", `tollgate: unknown command "frobnicate"`},
		{"version", []string{"version"}, "", 0, "tollgate dev", ""},
		{"hash-key", []string{"hash-key", "demo-free-key"}, "", 0, "9f8cfdb17116bf0e2a44e071454f25594cb9b8737bf331e6a2f0b30550572f29\n", ""},
		{"hash-key stdin", []string{"hash-key", "-"}, "demo-free-key\n", 0, "9f8cfdb17116bf0e2a44e071454f25594cb9b8737bf331e6a2f0b30550572f29\n", ""},
		{"hash-key nothing", []string{"hash-key"}, "", 2, "", "tollgate: hash-key: give exactly one KEY"},
		{"validate ok", []string{"validate", "--config", "examples/tollgate.yaml"}, "", 0, "examples/tollgate.yaml: ok (2 plans, 3 routes, entitlements: 3 subjects", ""},
		{"validate needs config", []string{"validate"}, "", 2, "", "tollgate: validate: --config FILE is required"},
		{"bad flag", []string{"serve", "--cofnig", "x"}, "", 2, "", "tollgate: serve: flag provided but not defined: -cofnig"},
		{"missing file", []string{"validate", "--config", "/nonexistent.yaml"}, "", 1, "", "tollgate: open /nonexistent.yaml: no such file or directory"},
		{"bad config", []string{"validate", "--config", bad}, "", 1, "", `bad.yaml:3: routes[0].feature: "nope" is not a feature of any plan`},
		{"bad config on serve", []string{"serve", "--config", bad}, "", 1, "", `routes[0].feature: "nope"`},
		{"check bad header", []string{"check", "--config", "examples/tollgate.yaml", "-H", "novalue"}, "", 2, "", `tollgate: check: -H "novalue" is not 'name: value'`},
		{"check allow", []string{"check", "--config", "examples/tollgate.yaml", "--path", "/v1/search", "-H", "x-api-key: demo-free-key"}, "", 0, `"x-tollgate-plan": "free"`, ""},
		{"check deny", []string{"check", "--config", "examples/tollgate.yaml", "--method", "post", "--path", "/v1/chat", "-H", "X-Api-Key: demo-free-key"}, "", 0, `"plans_with_feature": [`, ""},
		{"check grpc client", []string{"check", "--config", "examples/tollgate.yaml", "--method", "POST", "--path", "/v1/chat", "-H", "content-type: application/grpc", "-H", "x-api-key: demo-free-key"}, "", 0, `"body": "feature_not_in_plan: The chat feature`, ""},
		{"check shows quota state", []string{"check", "--config", "authz/testdata/quota.yaml", "--path", "/v1/search", "-H", "x-api-key: demo-free-key"}, "", 0, `"counter": "initech/requests/`, ""},
		{"check raw headers", []string{"check", "--config", "examples/tollgate.yaml", "--raw-headers", "--path", "/v1/search", "-H", "x-api-key: demo-pastdue-key"}, "", 0, `"code": "payment_failed"`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			got := run(context.Background(), tt.args, strings.NewReader(tt.stdin), &stdout, &stderr)
			if got != tt.wantCode {
				t.Errorf("exit = %d, want %d (stderr %q)", got, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}
