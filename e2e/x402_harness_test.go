//go:build e2e

package e2e

// The x402 environment: tollgate served from examples/tollgate-x402.yaml,
// Envoy from examples/envoy-x402.yaml, a paid API behind it, a facilitator
// that can be taken down or made slow, and the real x402 client SDK.

import (
	"github.com/tollgate-authz/tollgate/internal/sdktest"

	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	yaml "go.yaml.in/yaml/v3"

	"github.com/tollgate-authz/tollgate/internal/envoytest"
	"github.com/tollgate-authz/tollgate/internal/proc"
	"github.com/tollgate-authz/tollgate/x402"
)

const (
	// sdkKey signs the SDK's payments (a viem local account); goKey the
	// payments this file signs itself. Each has its own balance.
	sdkKeyHex = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
	goKeyHex  = "0x8da4ef21b864d2cc526dbdb2a120bd2874c36c9d0a1fb7f8c63d7f7a8b41de8f"
	// creditsKey is the API key of the subject with prepaid credits.
	creditsKey     = "demo-credits-key"
	creditsSubject = "hooli"
	creditsBalance = 2
	minted         = 10_000_000 // atomic units each payer starts with
	// The admin token, for GET /v1/usage.
	x402AdminEnv   = "TOLLGATE_E2E_X402_ADMIN_TOKEN"
	x402AdminToken = "e2e-x402-admin-token-5b1f0c"
)

// facMode is how the test facilitator answers.
type facMode int32

const (
	facUp   facMode = iota
	facDown         // every request's connection is closed unanswered
	facHold         // /verify waits until released or its client leaves
)

// facilitator is x402.LocalFacilitator over HTTP (x402.FacilitatorHandler),
// behind a switch the test turns: up, down, or holding /verify.
type facilitator struct {
	local *x402.LocalFacilitator
	h     http.Handler
	url   string

	mode    atomic.Int32
	mu      sync.Mutex
	release chan struct{}
	held    atomic.Int64 // /verify requests held so far
	verify  atomic.Int64 // /verify requests seen
	settle  atomic.Int64 // /settle requests seen
}

func startFacilitator(t testing.TB, network string, cleanup func(func())) *facilitator {
	t.Helper()
	f := &facilitator{local: x402.NewLocalFacilitator(time.Now, network), release: make(chan struct{})}
	f.h = x402.FacilitatorHandler(f.local)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	cleanup(func() { f.setMode(facUp); _ = srv.Close() })
	f.url = "http://" + lis.Addr().String()
	return f
}

// setMode changes how the facilitator answers from the next request on;
// leaving facHold releases the requests it holds.
func (f *facilitator) setMode(m facMode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if facMode(f.mode.Load()) == facHold && m != facHold {
		close(f.release)
		f.release = make(chan struct{})
	}
	f.mode.Store(int32(m))
}

func (f *facilitator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/verify":
		f.verify.Add(1)
	case "/settle":
		f.settle.Add(1)
	}
	switch facMode(f.mode.Load()) {
	case facDown:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
		http.Error(w, "down", http.StatusBadGateway)
		return
	case facHold:
		if r.URL.Path == "/verify" {
			f.mu.Lock()
			rel := f.release
			f.mu.Unlock()
			f.held.Add(1)
			select {
			case <-rel:
			case <-r.Context().Done():
				return
			}
		}
	}
	f.h.ServeHTTP(w, r)
}

// paidAPI is the upstream: it answers {"answer":42,"path":...} with the
// status the request asks for in x-test-status (default 200), and counts
// the requests that reached it by path.
type paidAPI struct {
	mu     sync.Mutex
	served map[string]int
}

func startPaidAPI(t testing.TB, cleanup func(func())) (*paidAPI, string) {
	t.Helper()
	a := &paidAPI{served: map[string]int{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.served[r.URL.Path]++
		a.mu.Unlock()
		status := 200
		if s, err := strconv.Atoi(r.Header.Get("x-test-status")); err == nil {
			status = s
		}
		w.Header().Set("content-type", "application/json")
		w.Header().Set("x-echo", "paid-api")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"answer":42,"path":%q,"payer":%q}`, r.URL.Path, r.Header.Get("x-tollgate-payer"))
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	cleanup(func() { _ = srv.Close() })
	return a, lis.Addr().String()
}

func (a *paidAPI) count(path string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.served[path]
}

// x402Env is one tollgate, one Envoy, the API and the facilitator, shared
// by the x402 tests (which do not run in parallel).
type x402Env struct {
	tg      *tollgate
	envoy   *envoy
	api     *paidAPI
	fac     *facilitator
	offer   x402.PaymentRequirements // the pay-per-call offer, as configured
	sdkAddr string
	goKey   *secp256k1.PrivateKey
	goAddr  string
}

var (
	x402Once   sync.Once
	x402Shared *x402Env
	x402Err    error
)

func x402Environment(t *testing.T) *x402Env {
	t.Helper()
	envoyPath(t)
	x402Once.Do(func() {
		reg := func(f func()) { sharedCleanups = append(sharedCleanups, f) }
		x402Shared, x402Err = newX402Env(t, reg)
	})
	if x402Err != nil {
		t.Fatalf("x402 environment: %v", x402Err)
	}
	return x402Shared
}

func newX402Env(t *testing.T, cleanup func(func())) (*x402Env, error) {
	dir, err := os.MkdirTemp(workDir, "x402-")
	if err != nil {
		return nil, err
	}
	e := &x402Env{}
	var upstream string
	e.api, upstream = startPaidAPI(t, cleanup)

	cfgPath, cfg, err := x402TollgateConfig(dir)
	if err != nil {
		return nil, err
	}
	pay := cfg["payments"].(map[string]any)["x402"].(map[string]any)
	e.offer = x402.PaymentRequirements{
		Scheme: x402.SchemeExact, Network: pay["network"].(string), Asset: pay["asset"].(string),
		PayTo: pay["pay_to"].(string), Amount: "1000", MaxTimeoutSeconds: int64(pay["max_timeout_seconds"].(int)),
		Extra: x402.Extra{Name: pay["asset_name"].(string), Version: pay["asset_version"].(string)},
	}
	e.fac = startFacilitator(t, e.offer.Network, cleanup)
	pay["facilitator"].(map[string]any)["url"] = e.fac.url
	if err := writeYAML(cfgPath, cfg); err != nil {
		return nil, err
	}

	sdkKey, err := keyFromHex(sdkKeyHex)
	if err != nil {
		return nil, err
	}
	if e.goKey, err = keyFromHex(goKeyHex); err != nil {
		return nil, err
	}
	e.sdkAddr, e.goAddr = x402.AddressOfKey(sdkKey), x402.AddressOfKey(e.goKey)
	e.fac.local.Mint(e.offer.Asset, e.sdkAddr, big.NewInt(minted))
	e.fac.local.Mint(e.offer.Asset, e.goAddr, big.NewInt(minted))

	cmd := exec.Command(tollgateBin, "serve", "--config", cfgPath)
	cmd.Env = append(os.Environ(), x402AdminEnv+"="+x402AdminToken)
	rememberSecret(x402AdminToken)
	p, err := proc.Start("tollgate", filepath.Join(dir, "tollgate.log"), cmd)
	if err != nil {
		return nil, err
	}
	var l struct{ GRPC, Admin string }
	if err := p.WaitJSON(servingRE, 30*time.Second, &l); err != nil {
		p.Stop()
		return nil, err
	}
	e.tg = &tollgate{Child: p, grpcAddr: l.GRPC, adminAddr: l.Admin, config: cfgPath}
	cleanup(e.tg.Stop)

	src, err := os.ReadFile(filepath.Join(repoRoot, "examples", "envoy-x402.yaml"))
	if err != nil {
		return nil, err
	}
	ecfg, statPrefix, err := envoytest.Derive(src, envoytest.Changes{
		Tollgate: e.tg.grpcAddr, Upstream: upstream, AccessLog: filepath.Join(dir, "access.log"),
	})
	if err != nil {
		return nil, err
	}
	ev, err := envoytest.Start(envoytest.Options{
		Bin: envoyPath(t), Config: ecfg, Dir: dir, Name: "envoy",
		BaseID: 30000, LogLevel: "info", Ready: 30 * time.Second,
		Args: []string{"--log-path", filepath.Join(dir, "envoy.log"), "--file-flush-interval-msec", "50"},
	})
	if err != nil {
		return nil, err
	}
	cleanup(ev.Stop)
	e.envoy = &envoy{Envoy: ev, statPrefix: statPrefix, accessLog: filepath.Join(dir, "access.log")}
	return e, nil
}

// x402TollgateConfig is examples/tollgate-x402.yaml with loopback ports, the
// demo's entitlements plus a subject holding credits, and facilitator
// timeouts that fit a loaded test machine (the facilitator's URL is set
// once it listens).
func x402TollgateConfig(dir string) (string, map[string]any, error) {
	src, err := os.ReadFile(filepath.Join(repoRoot, "examples", "tollgate-x402.yaml"))
	if err != nil {
		return "", nil, err
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(src, &cfg); err != nil {
		return "", nil, fmt.Errorf("examples/tollgate-x402.yaml: %w", err)
	}
	ents, err := os.ReadFile(filepath.Join(repoRoot, "examples", "entitlements.yaml"))
	if err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256([]byte(creditsKey))
	ents = append(ents, fmt.Sprintf("  - id: %s\n    plan: pro\n    status: active\n    credits: %d\n    api_key_sha256:\n      - %s\n",
		creditsSubject, creditsBalance, hex.EncodeToString(sum[:]))...)
	entsPath := filepath.Join(dir, "entitlements.yaml")
	if err := os.WriteFile(entsPath, ents, 0o600); err != nil {
		return "", nil, err
	}
	server := cfg["server"].(map[string]any)
	server["grpc_address"], server["admin_address"], server["drain_timeout"] = "127.0.0.1:0", "127.0.0.1:0", "2s"
	cfg["entitlements"].(map[string]any)["file"].(map[string]any)["path"] = entsPath
	// GET /v1/usage/{subject} is served to the admin token's holder only.
	cfg["admin"] = map[string]any{"token_env": x402AdminEnv}
	fac := cfg["payments"].(map[string]any)["x402"].(map[string]any)["facilitator"].(map[string]any)
	// verify_timeout is what a slow facilitator costs a client; the paid
	// ext_authz filter's 15s stays well above it and settle_timeout.
	fac["verify_timeout"], fac["settle_timeout"] = "3s", "5s"
	path := filepath.Join(dir, "tollgate.yaml")
	return path, cfg, writeYAML(path, cfg)
}

func writeYAML(path string, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func keyFromHex(s string) (*secp256k1.PrivateKey, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil || len(b) != 32 {
		return nil, fmt.Errorf("bad key %q", s)
	}
	return secp256k1.PrivKeyFromBytes(b), nil
}

// ---------------------------------------------------------------------------
// Payments signed here, for what the SDK will not send: tampered, expired.

// sign is the PaymentPayload a client sends for offer, from key, valid
// until validBefore, with a random nonce; edit changes the authorization
// before it is signed.
func sign(t testing.TB, key *secp256k1.PrivateKey, offer x402.PaymentRequirements, validBefore time.Time, edit func(*x402.Authorization)) x402.PaymentPayload {
	t.Helper()
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	a := x402.Authorization{
		From: x402.AddressOfKey(key), To: offer.PayTo, Value: offer.Amount, ValidAfter: "0",
		ValidBefore: strconv.FormatInt(validBefore.Unix(), 10), Nonce: "0x" + hex.EncodeToString(nonce),
	}
	if edit != nil {
		edit(&a)
	}
	d, err := x402.DomainOf(offer)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := x402.SignAuthorization(key, d, a)
	if err != nil {
		t.Fatal(err)
	}
	acc := offer
	return x402.PaymentPayload{X402Version: x402.Version, Accepted: &acc, Payload: x402.ExactEVMPayload{Signature: sig, Authorization: a}}
}

func encodePayment(t testing.TB, p x402.PaymentPayload) string {
	t.Helper()
	h, err := x402.EncodeHeader(p)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func decodePayment(t testing.TB, h string) x402.PaymentPayload {
	t.Helper()
	p, err := x402.DecodePaymentSignature(h)
	if err != nil {
		t.Fatalf("decoding %q: %v", h, err)
	}
	return p
}

// problem is the problem+json members the x402 tests read.
type problem struct {
	Code   string            `json:"code"`
	Status int               `json:"status"`
	Detail string            `json:"detail"`
	Offers []json.RawMessage `json:"offers"`
	X402   *struct {
		Accepts []x402.PaymentRequirements `json:"accepts"`
	} `json:"x402"`
}

func problemOf(t testing.TB, r response) problem {
	t.Helper()
	var p problem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("status %d body %q is not problem+json: %v", r.status, r.body, err)
	}
	return p
}

// challengeOf decodes a response's PAYMENT-REQUIRED header.
func challengeOf(t testing.TB, r response) x402.PaymentRequired {
	t.Helper()
	h := r.header.Get("payment-required")
	if h == "" {
		t.Fatalf("status %d without PAYMENT-REQUIRED; body %s", r.status, r.body)
	}
	raw, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	var pr x402.PaymentRequired
	if err := json.Unmarshal(raw, &pr); err != nil {
		t.Fatalf("PAYMENT-REQUIRED %s: %v", raw, err)
	}
	return pr
}

// ---------------------------------------------------------------------------
// The real x402 client SDK.

// sdkResult is what testdata/x402client/pay.mjs prints.
type sdkResult struct {
	Status          int                  `json:"status"`
	Body            string               `json:"body"`
	PaymentResponse *x402.SettleResponse `json:"paymentResponse"`
	Requests        []struct {
		PaymentSignature *string `json:"paymentSignature"`
		Status           int     `json:"status"`
	} `json:"requests"`
	Payer string `json:"payer"`
	Error string `json:"error"`
}

// signature is the PAYMENT-SIGNATURE the SDK sent on its paid retry.
func (r sdkResult) signature(t testing.TB) string {
	t.Helper()
	for _, q := range r.Requests {
		if q.PaymentSignature != nil {
			return *q.PaymentSignature
		}
	}
	t.Fatalf("the SDK sent no PAYMENT-SIGNATURE: %+v", r.Requests)
	return ""
}

var (
	sdkOnce   sync.Once
	sdkScript string
	sdkSkip   string
	sdkErr    error
)

// sdkClient installs testdata/x402client's lockfile once (cached in the
// user cache directory by the lockfile's hash, as x402/interop_test.go
// does) and returns the path of pay.mjs beside its node_modules. Without
// node and npm, or without the npm registry, the SDK tests are skipped.
func sdkClient(t *testing.T) string {
	t.Helper()
	sdkOnce.Do(func() { sdkScript, sdkSkip, sdkErr = installSDK() })
	if sdkErr != nil {
		t.Fatal(sdkErr)
	}
	if sdkSkip != "" {
		sdktest.Skip(t, "%s", sdkSkip)
	}
	return sdkScript
}

func installSDK() (script, skip string, err error) {
	_, script, skip, err = sdktest.Install(filepath.Join(repoRoot, "e2e", "testdata", "x402client"), "tollgate-e2e-x402-client", "pay.mjs", "@x402/fetch/package.json")
	return script, skip, err
}

func lastBytes(b []byte, n int) []byte { return sdktest.Tail(b, n) }

// sdkOpts is one run of the SDK.
type sdkOpts struct {
	method    string            // default GET
	headers   map[string]string // more request headers
	paymentID string            // payment-identifier id, "" for none
}

// pay runs the SDK against url and returns what it printed; a run that
// printed no JSON fails the test, one that printed an error is returned.
func pay(t *testing.T, url string, o sdkOpts) sdkResult {
	t.Helper()
	script := sdkClient(t)
	hs, _ := json.Marshal(o.headers)
	method := o.method
	if method == "" {
		method = "GET"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Dir = filepath.Dir(script)
	cmd.Env = append(os.Environ(), "X402_URL="+url, "X402_PRIVATE_KEY="+sdkKeyHex, "X402_METHOD="+method,
		"X402_HEADERS="+string(hs), "X402_PAYMENT_ID="+o.paymentID)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res sdkResult
	if jerr := json.Unmarshal(bytes.TrimSpace(out), &res); jerr != nil {
		t.Fatalf("SDK output %q (run: %v; stderr: %s)", out, err, lastBytes(stderr.Bytes(), 2000))
	}
	if res.Error == "" && err != nil {
		t.Fatalf("SDK run: %v; stderr: %s", err, lastBytes(stderr.Bytes(), 2000))
	}
	return res
}

// balances is the payer's and the payee's balance now.
func (e *x402Env) balances(payer string) (from, to int64) {
	return e.fac.local.Balance(e.offer.Asset, payer).Int64(), e.fac.local.Balance(e.offer.Asset, e.offer.PayTo).Int64()
}

func x402Unix(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// mustEncode is a receipt as tollgate sends it in PAYMENT-RESPONSE.
func mustEncode(t testing.TB, sr x402.SettleResponse) string {
	t.Helper()
	h, err := x402.EncodePaymentResponse(sr)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// paidChecks counts the Checks the paid ext_authz instance (stat_prefix
// paid) answered, allowed or denied.
func (e *x402Env) paidChecks(t testing.TB) int64 {
	t.Helper()
	p := "http." + e.envoy.statPrefix + ".ext_authz.paid."
	return e.envoy.stat(t, p+"ok") + e.envoy.stat(t, p+"denied")
}

// usage is GET /v1/usage/{subject} from the admin listener.
func (e *x402Env) usage(t testing.TB, subject string) string {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+e.tg.adminAddr+"/v1/usage/"+subject, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+x402AdminToken)
	resp, err := noProxy.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v1/usage/%s: status %d, %v: %s", subject, resp.StatusCode, err, b)
	}
	return string(b)
}
