package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/apptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The helpers shared with the CLI's tests.
var (
	demoDir   = apptest.DemoDir
	writeFile = apptest.WriteFile
	editFile  = apptest.EditFile
	waitFor   = apptest.WaitFor
	code      = apptest.Code
	dialGRPC  = apptest.DialGRPC
	checkKey  = apptest.CheckKey
)

type syncBuffer = apptest.SyncBuffer

const patience = apptest.Patience

func getStatus(t *testing.T, url string) int {
	t.Helper()
	st, _ := apptest.Get(t, url)
	return st
}

// server is a running App.
type server struct {
	grpc, admin string
	logs        *syncBuffer
	stop        func() int // cancels the context (as SIGTERM does), waits for Serve (0: it returned nil) and closes
	conn        *grpc.ClientConn
	app         *App
}

// startServe builds the app for the config at cfgPath as serve does, binds
// it (Listen gives the addresses) and serves until the test ends or stop.
func startServe(t *testing.T, cfgPath string, dialOpts ...grpc.DialOption) *server {
	t.Helper()
	return startServeWith(t, cfgPath, Options{}, dialOpts...)
}

// startServeWith is startServe with Options; the logger is always the
// server's logs buffer, and the version "dev".
func startServeWith(t *testing.T, cfgPath string, o Options, dialOpts ...grpc.DialOption) *server {
	t.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	o.Version = "dev"
	o.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o.LogWriter = logs // as serve does: decision lines straight into the writer
	a, err := New(cfg, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	addrs, err := a.Listen()
	if err != nil {
		a.Close()
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan error, 1)
	go func() { exit <- a.Serve(ctx) }()
	s := &server{grpc: addrs.GRPC, admin: addrs.Admin, logs: logs, app: a}
	var once sync.Once
	code := 0
	s.stop = func() int {
		once.Do(func() {
			cancel()
			if err := <-exit; err != nil {
				code = 1
			}
			a.Close()
		})
		return code
	}
	t.Cleanup(func() { s.stop() })
	// Ready once Serve has started everything, its watches included: a
	// test that edits a file right after must not race the first poll.
	waitFor(t, func() bool {
		select {
		case err := <-exit:
			exit <- err // for stop
			t.Fatalf("Serve returned %v; log:\n%s", err, logs.String())
		default:
		}
		st, _ := apptest.Get(t, "http://"+s.admin+"/readyz")
		return st == http.StatusOK
	})
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
	return apptest.Get(t, "http://"+s.admin+path)
}

func httpStatus(resp *authv3.CheckResponse) int {
	if resp.GetOkResponse() != nil {
		return 200
	}
	return int(resp.GetDeniedResponse().GetStatus().GetCode())
}

// TestServeEndToEnd runs the app as serve does and sends Envoy-shaped
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
	path := filepath.Join(dir2, "tollgate.yaml")
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, err = a.Listen()
	// FILE:LINE: field: problem
	got := fmt.Sprint(err)
	if !strings.HasPrefix(got, path+":") || !strings.Contains(got, ": server.grpc_address: listen tcp "+s.grpc) {
		t.Errorf("Listen on a taken port: %q, want %s:LINE: server.grpc_address: listen tcp %s…", got, path, s.grpc)
	}
}

// TestReloadHasItsOwnInterval: the config file is watched at
// reload.poll_interval, not at the entitlements file's poll_interval (which
// paced every watch before internal/app).
func TestReloadHasItsOwnInterval(t *testing.T) {
	dir := demoDir(t, "127.0.0.1:0")
	cfg := filepath.Join(dir, "tollgate.yaml")
	editFile(t, cfg, "poll_interval: 20ms", "poll_interval: 1h") // the entitlements file's
	s := startServe(t, cfg)
	if got := code(s.check(t, "POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key"})); got != "feature_not_in_plan" {
		t.Fatalf("before the edit: %s", got)
	}
	editFile(t, cfg, "features: [search]\n", "features: [search, chat]\n")
	waitFor(t, func() bool {
		return code(s.check(t, "POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key"})) == "ok"
	})
}
