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
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
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
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tollgate-authz/tollgate/internal/envoytest"
	"github.com/tollgate-authz/tollgate/internal/proc"
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
	p, err := envoytest.Find(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ---------------------------------------------------------------------------
// tollgate.

// tollgate is our own process, started here and stopped by its PID.
type tollgate struct {
	*proc.Child
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
	server, _ := cfg["server"].(map[string]any)
	ent, _ := cfg["entitlements"].(map[string]any)
	file, _ := ent["file"].(map[string]any)
	if server == nil || file == nil {
		return "", fmt.Errorf("examples/tollgate.yaml has no server or entitlements.file mapping")
	}
	server["grpc_address"] = grpcAddr
	server["admin_address"] = "127.0.0.1:0"
	server["drain_timeout"] = "2s"
	file["path"] = entsPath

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
	p, err := proc.Start("tollgate", filepath.Join(dir, "tollgate.log"), exec.Command(tollgateBin, "serve", "--config", cfgPath))
	if err != nil {
		return nil, err
	}
	var l struct{ GRPC, Admin string }
	if err := p.WaitJSON(servingRE, 15*time.Second, &l); err != nil {
		p.Stop()
		return nil, err
	}
	return &tollgate{Child: p, grpcAddr: l.GRPC, adminAddr: l.Admin, config: cfgPath}, nil
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

// envoy is a test Envoy, stopped by its PID.
type envoy struct {
	*envoytest.Envoy
	statPrefix string
	accessLog  string
}

// changes say how o changes the repo's envoy.yaml, with the access log in
// dir.
func (o envoyOpts) changes(dir string) envoytest.Changes {
	c := envoytest.Changes{
		Tollgate:         o.tollgate,
		Upstream:         o.upstream,
		AccessLog:        filepath.Join(dir, "access.log"),
		FailureModeAllow: o.failureModeAllow,
		StripTrusted:     o.stripTrusted,
	}
	if o.betaRoute {
		c.Routes = append(c.Routes, map[string]any{
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
		c.Routes = append(c.Routes, map[string]any{
			"match": map[string]any{"prefix": "/grpc.health.v1.Health/"},
			"route": map[string]any{"cluster": "grpc_upstream"},
		})
		c.GRPCClusters = map[string]string{"grpc_upstream": o.grpcUpstream}
	}
	if o.jwt != nil {
		c.FiltersBeforeAuthz = []any{o.jwt.filter()}
	}
	return c
}

// filter is jwt_authn with s's key.
func (s *jwtSigner) filter() map[string]any {
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
			"local_jwks":          map[string]any{"inline_string": s.jwks},
			"payload_in_metadata": "jwt_payload",
			"forward":             forward,
		}
	}
	return map[string]any{
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
}

// startEnvoy runs Envoy from the repo's envoy.yaml with the changes in o.
func startEnvoy(t testing.TB, dir string, o envoyOpts) (*envoy, error) {
	t.Helper()
	bin := envoyPath(t)
	src, err := os.ReadFile(filepath.Join(repoRoot, "envoy.yaml"))
	if err != nil {
		return nil, err
	}
	c := o.changes(dir)
	cfg, statPrefix, err := envoytest.Derive(src, c)
	if err != nil {
		return nil, err
	}
	e, err := envoytest.Start(envoytest.Options{
		Bin: bin, Config: cfg, Dir: dir, Name: "envoy",
		BaseID: 10000, LogLevel: "info", Ready: 20 * time.Second,
		Args: []string{
			"--log-path", filepath.Join(dir, "envoy.log"),
			"--file-flush-interval-msec", "50", // access log lines appear promptly
		},
	})
	if err != nil {
		return nil, err
	}
	return &envoy{Envoy: e, statPrefix: statPrefix, accessLog: c.AccessLog}, nil
}

func (e *envoy) url(path string) string { return "http://" + e.Listen + path }

// stat reads one counter from the admin /stats.
func (e *envoy) stat(t testing.TB, name string) int64 {
	t.Helper()
	body := httpGet(t, "http://"+e.Admin+"/stats?filter="+url.QueryEscape("^"+regexp.QuoteMeta(name)+"$"))
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
		httpGet(t, "http://"+e.Admin+"/stats?filter=ext_authz"))
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
		cleanup(e.tg.Stop)
		o.tollgate = e.tg.grpcAddr
	}
	o.upstream = e.upstream
	if e.envoy, err = startEnvoy(t, dir, o); err != nil {
		return nil, err
	}
	cleanup(e.envoy.Stop)
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
