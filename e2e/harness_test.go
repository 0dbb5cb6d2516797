//go:build e2e

// Package e2e runs tollgate behind a real Envoy, started from the repo's own
// envoy.yaml with only ports, addresses and test-only additions changed.
//
//	go test -race -count=1 -tags e2e ./e2e/...   (make e2e)
//
// Envoy is found through $ENVOY, then .tools/bin/envoy, then PATH.
// E2E_KEEP=1 keeps the generated configs and the logs, and prints where.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

var (
	repoRoot    string // absolute path of the repository
	tollgateBin string // built once in TestMain
	workDir     string // temp dir for binaries, configs and logs

	// cleanups for the shared environment, run after all tests.
	sharedCleanups []func()
)

func TestMain(m *testing.M) {
	code, err := testMain(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		code = 1
	}
	os.Exit(code)
}

func testMain(m *testing.M) (int, error) {
	wd, err := os.Getwd()
	if err != nil {
		return 1, err
	}
	repoRoot = filepath.Dir(wd) // tests run in e2e/
	workDir, err = os.MkdirTemp("", "tollgate-e2e-")
	if err != nil {
		return 1, err
	}
	if os.Getenv("E2E_KEEP") != "" {
		fmt.Fprintln(os.Stderr, "e2e: keeping configs and logs in", workDir)
	} else {
		defer os.RemoveAll(workDir)
	}
	tollgateBin = filepath.Join(workDir, "tollgate")
	build := exec.Command("go", "build", "-tags", "vtprotobuf", "-o", tollgateBin, ".") // the shipped build
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		return 1, fmt.Errorf("go build: %v\n%s", err, out)
	}
	code := m.Run()
	for i := len(sharedCleanups) - 1; i >= 0; i-- {
		sharedCleanups[i]()
	}
	return code, nil
}

// ---------------------------------------------------------------------------
// Finding Envoy.

func envoyPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ENVOY"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		t.Fatalf("ENVOY=%s does not exist: run `make tools`", p)
	}
	if p := filepath.Join(repoRoot, ".tools", "bin", "envoy"); fileExists(p) {
		return p
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p
	}
	t.Fatal("no envoy binary: set $ENVOY, or run `make tools` to install one at .tools/bin/envoy")
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ---------------------------------------------------------------------------
// Processes. Every process is ours, started here, and stopped by its PID.

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // file with its stderr / log
	done chan struct{}
	err  error
}

func startProc(name, logPath string, bin string, args ...string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM to the process's PID, then SIGKILL after a grace period.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// tollgate.

type tollgate struct {
	*proc
	grpcAddr  string // host:port or unix:///path
	adminAddr string
	config    string
}

// tollgateConfig derives a config from examples/tollgate.yaml: free loopback
// ports, a private copy of the entitlements, and the e2e-only routes.
func tollgateConfig(dir, grpcAddr string) (string, error) {
	src, err := os.ReadFile(filepath.Join(repoRoot, "examples", "tollgate.yaml"))
	if err != nil {
		return "", err
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(src, &cfg); err != nil {
		return "", fmt.Errorf("examples/tollgate.yaml: %w", err)
	}
	ents, err := os.ReadFile(filepath.Join(repoRoot, "examples", "entitlements.yaml"))
	if err != nil {
		return "", err
	}
	entsPath := filepath.Join(dir, "entitlements.yaml")
	if err := os.WriteFile(entsPath, ents, 0o600); err != nil {
		return "", err
	}
	server := mapAt(cfg, "server")
	server["grpc_address"] = grpcAddr
	server["admin_address"] = "127.0.0.1:0"
	server["drain_timeout"] = "2s"
	mapAt(cfg, "entitlements", "file")["path"] = entsPath

	routes, _ := cfg["routes"].([]any)
	// Same path as the search route, but Envoy's route for x-tier: beta sends
	// context_extensions {tier: beta}: then chat is required. First match wins.
	beta := map[string]any{
		"name":    "search-beta",
		"match":   map[string]any{"path": map[string]any{"prefix": "/v1/search"}, "context_extensions": map[string]any{"tier": "beta"}},
		"feature": "chat",
	}
	// The gRPC "API" behind Envoy: the standard health service.
	grpcRoute := map[string]any{
		"name":    "grpc-health",
		"match":   map[string]any{"method": "POST", "path": map[string]any{"prefix": "/grpc.health.v1.Health/"}},
		"feature": "chat",
	}
	cfg["routes"] = append(append([]any{beta}, routes...), grpcRoute)

	out, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "tollgate.yaml")
	return path, os.WriteFile(path, out, 0o600)
}

var servingRE = regexp.MustCompile(`"msg":"serving"`)

// startTollgate serves a derived config on grpcAddr ("127.0.0.1:0" or
// unix:///path) and returns once it logs that it is serving.
func startTollgate(dir, grpcAddr string) (*tollgate, error) {
	cfgPath, err := tollgateConfig(dir, grpcAddr)
	if err != nil {
		return nil, err
	}
	p, err := startProc("tollgate", filepath.Join(dir, "tollgate.log"), tollgateBin, "serve", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if p.exited() {
			return nil, fmt.Errorf("tollgate exited: %v\n%s", p.err, p.tail())
		}
		f, err := os.Open(p.log)
		if err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if !servingRE.Match(sc.Bytes()) {
					continue
				}
				var line struct{ GRPC, Admin string }
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					f.Close()
					p.stop()
					return nil, fmt.Errorf("tollgate serving line %q: %v", sc.Text(), err)
				}
				f.Close()
				return &tollgate{proc: p, grpcAddr: line.GRPC, adminAddr: line.Admin, config: cfgPath}, nil
			}
			f.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stop()
	return nil, fmt.Errorf("tollgate did not log \"serving\" in time:\n%s", p.tail())
}

// checks sums tollgate_checks_total by decision from the admin /metrics.
func (tg *tollgate) checks(t testing.TB) map[string]float64 {
	t.Helper()
	body := httpGet(t, "http://"+tg.adminAddr+"/metrics")
	sums := map[string]float64{}
	re := regexp.MustCompile(`decision="([a-z_]+)"`)
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "tollgate_checks_total{") {
			continue
		}
		m := re.FindStringSubmatch(line)
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if m == nil || err != nil {
			t.Fatalf("unparsable metric line %q", line)
		}
		sums[m[1]] += v
	}
	return sums
}

// ---------------------------------------------------------------------------
// Upstreams.

// startEcho serves an upstream that answers every request with the request headers it received,
// as JSON with lower-case names, and the header x-echo: upstream.
func startEcho(cleanup func(func())) (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := map[string][]string{}
		for k, v := range r.Header {
			h[strings.ToLower(k)] = v
		}
		h[":path"] = []string{r.URL.RequestURI()}
		w.Header().Set("content-type", "application/json")
		w.Header().Set("x-echo", "upstream")
		_ = json.NewEncoder(w).Encode(h)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	cleanup(func() { _ = srv.Close() })
	return lis.Addr().String(), nil
}

// startGRPCUpstream serves the standard gRPC health service: the "API" that
// gRPC clients call through Envoy.
func startGRPCUpstream(cleanup func(func())) (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go func() { _ = gs.Serve(lis) }()
	cleanup(gs.Stop)
	return lis.Addr().String(), nil
}

// closedPort is a loopback address nothing listens on.
func closedPort() (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr, nil
}

// ---------------------------------------------------------------------------
// JWT signing for jwt_authn, with the standard library only.

type jwtSigner struct {
	key  *ecdsa.PrivateKey
	jwks string
}

const (
	jwtIssuer = "https://issuer.e2e.tollgate.test"
	jwtKID    = "e2e-key"
)

func newJWTSigner() (*jwtSigner, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	pub, err := key.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, err
	}
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []any{map[string]string{
		"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": jwtKID,
		"x": b64(pub[1:33]), "y": b64(pub[33:65]),
	}}})
	return &jwtSigner{key: key, jwks: string(jwks)}, nil
}

// sign makes an ES256 JWT with claims (iss, iat and exp are added).
func (s *jwtSigner) sign(claims map[string]any) string {
	b64 := base64.RawURLEncoding.EncodeToString
	hdr, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": "JWT", "kid": jwtKID})
	c := map[string]any{"iss": jwtIssuer, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	payload, _ := json.Marshal(c)
	signing := b64(hdr) + "." + b64(payload)
	sum := sha256.Sum256([]byte(signing))
	r, sg, err := ecdsa.Sign(rand.Reader, s.key, sum[:])
	if err != nil {
		panic(err)
	}
	sig := make([]byte, 64) // JWS ES256: r || s, 32 bytes each
	r.FillBytes(sig[:32])
	sg.FillBytes(sig[32:])
	tok := signing + "." + b64(sig)
	rememberSecret(tok)
	return tok
}

// ---------------------------------------------------------------------------
// Envoy.

// envoyOpts say how the e2e Envoy differs from the repo's envoy.yaml.
type envoyOpts struct {
	// tollgate is host:port, or unix:///path for a pipe address.
	tollgate string
	// upstream is the echo server's host:port.
	upstream string
	// grpcUpstream, when set, adds a route and cluster for gRPC clients.
	grpcUpstream string
	// jwt, when set, adds jwt_authn before ext_authz with this JWKS.
	jwt *jwtSigner
	// betaRoute adds a route (x-tier: beta) with context_extensions tier: beta.
	betaRoute bool
	// failureModeAllow sets failure_mode_allow and failure_mode_allow_header_add.
	failureModeAllow bool
	// stripTrusted adds the early header mutation from docs/envoy.md that
	// drops client-sent x-tollgate-* before any filter runs.
	stripTrusted bool
}

type envoy struct {
	*proc
	listen     string // host:port of the API listener
	admin      string // host:port of the admin listener
	statPrefix string
	accessLog  string
}

// envoyConfig renders the repo's envoy.yaml with the changes in o.
func envoyConfig(dir string, o envoyOpts) (cfg []byte, statPrefix, accessLog string, err error) {
	src, err := os.ReadFile(filepath.Join(repoRoot, "envoy.yaml"))
	if err != nil {
		return nil, "", "", err
	}
	var root map[string]any
	if err := yaml.Unmarshal(src, &root); err != nil {
		return nil, "", "", fmt.Errorf("envoy.yaml: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("envoy.yaml does not have the expected shape: %v", r)
		}
	}()

	// Ports: 0 everywhere; the admin address is written to a file and the
	// listener's port read back from the admin API.
	mapAt(root, "admin", "address", "socket_address")["port_value"] = 0
	sr := mapAt(root, "static_resources")
	listener := listAt(sr, "listeners")[0].(map[string]any)
	mapAt(listener, "address", "socket_address")["port_value"] = 0

	hcmFilter := findNamed(listAt(listAt(listener, "filter_chains")[0].(map[string]any), "filters"), "envoy.filters.network.http_connection_manager")
	hcm := mapAt(hcmFilter, "typed_config")
	statPrefix = hcm["stat_prefix"].(string)
	if o.stripTrusted {
		hcm["early_header_mutation_extensions"] = []any{map[string]any{
			"name": "envoy.http.early_header_mutation.header_mutation",
			"typed_config": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
				"mutations": []any{map[string]any{
					"remove_on_match": map[string]any{"key_matcher": map[string]any{"prefix": "x-tollgate-"}},
				}},
			},
		}}
	}

	// Access log to a file, with the shipped format.
	accessLog = filepath.Join(dir, "access.log")
	al := listAt(hcm, "access_log")[0].(map[string]any)
	alc := mapAt(al, "typed_config")
	al["name"] = "envoy.access_loggers.file"
	al["typed_config"] = map[string]any{
		"@type":      "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
		"path":       accessLog,
		"log_format": alc["log_format"],
	}

	vh := listAt(mapAt(hcm, "route_config"), "virtual_hosts")[0].(map[string]any)
	routes := listAt(vh, "routes")
	var extra []any
	if o.betaRoute {
		extra = append(extra, map[string]any{
			"match": map[string]any{"prefix": "/v1/search", "headers": []any{
				map[string]any{"name": "x-tier", "string_match": map[string]any{"exact": "beta"}},
			}},
			"route": map[string]any{"cluster": "upstream"},
			"typed_per_filter_config": map[string]any{"envoy.filters.http.ext_authz": map[string]any{
				"@type":          "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
				"check_settings": map[string]any{"context_extensions": map[string]any{"tier": "beta"}},
			}},
		})
	}
	if o.grpcUpstream != "" {
		extra = append(extra, map[string]any{
			"match": map[string]any{"prefix": "/grpc.health.v1.Health/"},
			"route": map[string]any{"cluster": "grpc_upstream"},
		})
	}
	// Before the shipped catch-all, which is last.
	if len(extra) > 0 {
		n := len(routes)
		routes = append(append(append([]any{}, routes[:n-1]...), extra...), routes[n-1])
		vh["routes"] = routes
	}

	filters := listAt(hcm, "http_filters")
	extAuthz := mapAt(findNamed(filters, "envoy.filters.http.ext_authz"), "typed_config")
	if o.failureModeAllow {
		extAuthz["failure_mode_allow"] = true
		extAuthz["failure_mode_allow_header_add"] = true
	}
	if o.jwt != nil {
		optional := func(provider string) map[string]any {
			// No JWT is fine (API keys still work); a bad one is refused.
			return map[string]any{"requires_any": map[string]any{"requirements": []any{
				map[string]any{"provider_name": provider},
				map[string]any{"allow_missing": map[string]any{}},
			}}}
		}
		provider := func(forward bool) map[string]any {
			return map[string]any{
				"issuer":              jwtIssuer,
				"local_jwks":          map[string]any{"inline_string": o.jwt.jwks},
				"payload_in_metadata": "jwt_payload",
				"forward":             forward,
			}
		}
		jwtFilter := map[string]any{
			"name": "envoy.filters.http.jwt_authn",
			"typed_config": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
				// "e2e" has jwt_authn's default forward: false, which strips
				// the Authorization header once the JWT is verified;
				// "e2e_forward" keeps it, so tollgate sees the JWT both as a
				// Bearer token and as verified claims.
				"providers": map[string]any{"e2e": provider(false), "e2e_forward": provider(true)},
				"rules": []any{
					map[string]any{
						"match":    map[string]any{"prefix": "/", "headers": []any{map[string]any{"name": "x-jwt-forward", "present_match": true}}},
						"requires": optional("e2e_forward"),
					},
					map[string]any{"match": map[string]any{"prefix": "/"}, "requires": optional("e2e")},
				},
			},
		}
		var out []any
		for _, f := range filters {
			if f.(map[string]any)["name"] == "envoy.filters.http.ext_authz" {
				out = append(out, jwtFilter)
			}
			out = append(out, f)
		}
		hcm["http_filters"] = out
	}

	clusters := listAt(sr, "clusters")
	tgCluster := findNamed(clusters, "tollgate")
	tgAddr := mapAt(listAt(listAt(mapAt(tgCluster, "load_assignment"), "endpoints")[0].(map[string]any), "lb_endpoints")[0].(map[string]any), "endpoint", "address")
	if path, ok := strings.CutPrefix(o.tollgate, "unix://"); ok {
		delete(tgAddr, "socket_address")
		tgAddr["pipe"] = map[string]any{"path": path}
	} else {
		setSocket(mapAt(tgAddr, "socket_address"), o.tollgate)
	}
	up := findNamed(clusters, "upstream")
	setSocket(mapAt(listAt(listAt(mapAt(up, "load_assignment"), "endpoints")[0].(map[string]any), "lb_endpoints")[0].(map[string]any), "endpoint", "address", "socket_address"), o.upstream)
	if o.grpcUpstream != "" {
		host, port := splitHostPort(o.grpcUpstream)
		sr["clusters"] = append(clusters, map[string]any{
			"name":                             "grpc_upstream",
			"type":                             "STATIC",
			"connect_timeout":                  "1s",
			"typed_extension_protocol_options": tgCluster["typed_extension_protocol_options"], // HTTP/2
			"load_assignment": map[string]any{"cluster_name": "grpc_upstream", "endpoints": []any{map[string]any{
				"lb_endpoints": []any{map[string]any{"endpoint": map[string]any{"address": map[string]any{
					"socket_address": map[string]any{"address": host, "port_value": port},
				}}}},
			}}},
		})
	}
	cfg, err = yaml.Marshal(root)
	return cfg, statPrefix, accessLog, err
}

func startEnvoy(t testing.TB, dir string, o envoyOpts) (*envoy, error) {
	t.Helper()
	bin := envoyPath(t)
	cfg, statPrefix, accessLog, err := envoyConfig(dir, o)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return nil, err
	}
	adminFile := filepath.Join(dir, "envoy-admin-address")
	p, err := startProc("envoy", filepath.Join(dir, "envoy.log"), bin,
		"-c", cfgPath,
		"--base-id", strconv.Itoa(10000+mrand.IntN(1<<20)),
		"--disable-hot-restart",
		"--concurrency", "1",
		"--log-level", "info",
		"--log-path", filepath.Join(dir, "envoy.log"),
		"--admin-address-path", adminFile,
		"--file-flush-interval-msec", "50", // access log lines appear promptly
	)
	if err != nil {
		return nil, err
	}
	e := &envoy{proc: p, statPrefix: statPrefix, accessLog: accessLog}
	fail := func(format string, args ...any) (*envoy, error) {
		p.stop()
		return nil, fmt.Errorf(format+"\nenvoy log (%s):\n%s", append(args, p.log, p.tail())...)
	}
	deadline := time.Now().Add(20 * time.Second)
	for e.admin == "" || !e.ready() {
		if p.exited() {
			return fail("envoy exited: %v", p.err)
		}
		if time.Now().After(deadline) {
			return fail("envoy not ready in time")
		}
		if e.admin == "" {
			if b, err := os.ReadFile(adminFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
				e.admin = strings.TrimSpace(string(b))
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	var ls struct {
		ListenerStatuses []struct {
			LocalAddress struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	body, err := get("http://" + e.admin + "/listeners?format=json")
	if err == nil {
		err = json.Unmarshal([]byte(body), &ls)
	}
	if err != nil || len(ls.ListenerStatuses) == 0 {
		return fail("envoy /listeners: %v %s", err, body)
	}
	sa := ls.ListenerStatuses[0].LocalAddress.SocketAddress
	e.listen = net.JoinHostPort(sa.Address, strconv.Itoa(sa.PortValue))
	return e, nil
}

func (e *envoy) ready() bool {
	resp, err := noProxy.Get("http://" + e.admin + "/ready")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == 200
}

func (e *envoy) url(path string) string { return "http://" + e.listen + path }

// stat reads one counter from the admin /stats.
func (e *envoy) stat(t testing.TB, name string) int64 {
	t.Helper()
	body := httpGet(t, "http://"+e.admin+"/stats?filter="+url.QueryEscape("^"+regexp.QuoteMeta(name)+"$"))
	for _, line := range strings.Split(body, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && k == name {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatalf("stat %s: %q", name, v)
			}
			return n
		}
	}
	t.Fatalf("envoy has no stat %s; its ext_authz stats are:\n%s", name,
		httpGet(t, "http://"+e.admin+"/stats?filter=ext_authz"))
	return 0
}

// ---------------------------------------------------------------------------
// The shared environment: one tollgate, one Envoy (with every e2e addition),
// the echo and gRPC upstreams. Tests that use it do not run in parallel.

type env struct {
	tg           *tollgate
	envoy        *envoy
	upstream     string
	grpcUpstream string
	jwt          *jwtSigner
	dir          string
}

var (
	sharedOnce sync.Once
	shared     *env
	sharedErr  error
)

func sharedEnv(t testing.TB) *env {
	t.Helper()
	envoyPath(t) // fail with "run make tools" before starting anything
	sharedOnce.Do(func() {
		reg := func(f func()) { sharedCleanups = append(sharedCleanups, f) }
		shared, sharedErr = newEnv(t, reg, "127.0.0.1:0", envoyOpts{betaRoute: true}, true)
	})
	if sharedErr != nil {
		t.Fatalf("shared environment: %v", sharedErr)
	}
	return shared
}

// newEnv starts upstreams, tollgate on tgAddr, and Envoy with o (o.tollgate
// and o.upstream are filled in). withExtras adds the gRPC upstream and jwt.
func newEnv(t testing.TB, cleanup func(func()), tgAddr string, o envoyOpts, withExtras bool) (*env, error) {
	dir, err := os.MkdirTemp(workDir, "env-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir}
	if e.upstream, err = startEcho(cleanup); err != nil {
		return nil, err
	}
	if withExtras {
		if e.grpcUpstream, err = startGRPCUpstream(cleanup); err != nil {
			return nil, err
		}
		if e.jwt, err = newJWTSigner(); err != nil {
			return nil, err
		}
		o.grpcUpstream, o.jwt = e.grpcUpstream, e.jwt
	}
	if tgAddr != "" {
		if e.tg, err = startTollgate(dir, tgAddr); err != nil {
			return nil, err
		}
		cleanup(e.tg.stop)
		o.tollgate = e.tg.grpcAddr
	}
	o.upstream = e.upstream
	if e.envoy, err = startEnvoy(t, dir, o); err != nil {
		return nil, err
	}
	cleanup(e.envoy.stop)
	return e, nil
}

// ---------------------------------------------------------------------------
// HTTP helpers.

// noProxy ignores any proxy settings in the environment: everything is loopback.
var noProxy = &http.Client{
	Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4},
	Timeout:   10 * time.Second,
}

type response struct {
	status   int
	header   http.Header
	body     []byte
	upstream map[string][]string // headers the echo upstream saw; nil if it was not reached
}

// do sends one request through Envoy. headers are "name: value" pairs.
func do(t testing.TB, method, url string, headers ...string) response {
	t.Helper()
	return doRaw(t, method, url, "", headers...)
}

// doRaw is do with the request target sent exactly as rawPath (no cleaning
// or re-escaping by net/url) when rawPath is not "".
func doRaw(t testing.TB, method, url, rawPath string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rawPath != "" {
		req.URL.Opaque = rawPath
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			t.Fatalf("bad header %q", h)
		}
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := noProxy.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, body: body}
	if resp.Header.Get("x-echo") == "upstream" {
		if err := json.Unmarshal(body, &r.upstream); err != nil {
			t.Fatalf("upstream body %q: %v", body, err)
		}
	}
	return r
}

// seen is the single value the upstream saw for header name ("" if absent).
func (r response) seen(name string) string {
	return strings.Join(r.upstream[name], ",")
}

func httpGet(t testing.TB, url string) string {
	t.Helper()
	b, err := get(url)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func get(url string) (string, error) {
	resp, err := noProxy.Get(url)
	if err != nil {
		return "", fmt.Errorf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: %v", url, err)
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, b)
	}
	return string(b), nil
}

// eventually retries cond until it holds or the deadline passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// YAML tree helpers. They panic on an unexpected shape; envoyConfig recovers.

func mapAt(m map[string]any, path ...string) map[string]any {
	cur := m
	for _, k := range path {
		next, ok := cur[k].(map[string]any)
		if !ok {
			if cur[k] != nil {
				panic(fmt.Sprintf("%s is %T, not a mapping", k, cur[k]))
			}
			next = map[string]any{}
			cur[k] = next
		}
		cur = next
	}
	return cur
}

func listAt(m map[string]any, key string) []any {
	l, ok := m[key].([]any)
	if !ok || len(l) == 0 {
		panic(fmt.Sprintf("%s is missing or empty", key))
	}
	return l
}

func findNamed(l []any, name string) map[string]any {
	for _, x := range l {
		if m, ok := x.(map[string]any); ok && m["name"] == name {
			return m
		}
	}
	panic(fmt.Sprintf("nothing named %s", name))
}

func setSocket(sa map[string]any, hostport string) {
	host, port := splitHostPort(hostport)
	sa["address"], sa["port_value"] = host, port
}

func splitHostPort(hp string) (string, int) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		panic(err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		panic(err)
	}
	return host, port
}
