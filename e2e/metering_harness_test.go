//go:build e2e

package e2e

// The metering environment: tollgate with metered routes, an Envoy that
// reads response bodies with ext_proc and reports finished requests to
// tollgate's access log service, an upstream that answers like an
// OpenAI-compatible API or with a usage header or trailer, and a fake
// Stripe meter-events endpoint.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/tollgate-authz/tollgate/internal/envoytest"
	"github.com/tollgate-authz/tollgate/internal/proc"
)

// Paths of the metered API behind Envoy, and tollgate's meters for them.
const (
	pathLLM     = "/v1/chat/completions" // usage in the JSON or event-stream body (ext_proc)
	pathHeader  = "/v1/units/header"     // x-usage-units response header (access log)
	pathTrailer = "/v1/units/trailer"    // x-usage-units response trailer, over HTTP/2 (access log)
	// The same trailer over HTTP/1.1 (chunked): Envoy keeps it only with
	// enable_trailers in the cluster's http_protocol_options.
	pathTrailerH1 = "/v1/units/trailer-h1"

	meterLLM   = "llm_tokens"
	meterUnits = "api_units"

	// meteredEstimate is what a metered request reserves: the LLM route's
	// max_tokens, the unit routes' fixed cost. Actual units are drawn from
	// 1..2×estimate, so some settle below (a release) and some above (an
	// overage).
	meteredEstimate = 5000
	// tokensLimit is the pro plan's daily tokens quota: never reached.
	tokensLimit = 1_000_000_000

	meterKeyEnv   = "TOLLGATE_E2E_METER_KEY"
	stripeKeyEnv  = "TOLLGATE_E2E_STRIPE_KEY"
	stripeTestKey = "sk_test_e2eTollgateFakeStripeKey0123456789"
)

// meterKey signs reservations; every replica of a test shares it.
var meterKey = "e2e-reservation-key-" + strconv.FormatUint(rand.Uint64(), 36) + "-0123456789abcdef"

func init() {
	rememberSecret(meterKey)
	rememberSecret(stripeTestKey)
}

// ---------------------------------------------------------------------------
// Units: random, and distinct within a test, so that the billed events can
// be matched to the requests by their units alone (the event identifier is
// a hash of the request id and the Check's start time).

type unitPool struct {
	mu   sync.Mutex
	left []int64
}

func newUnitPool() *unitPool {
	p := &unitPool{}
	for _, n := range rand.Perm(2 * meteredEstimate) {
		if n+1 != meteredEstimate { // a request billed at its estimate would look right
			p.left = append(p.left, int64(n+1))
		}
	}
	return p
}

func (p *unitPool) next() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.left) == 0 {
		panic("unitPool: out of distinct units")
	}
	n := p.left[len(p.left)-1]
	p.left = p.left[:len(p.left)-1]
	return n
}

// ---------------------------------------------------------------------------
// The metered API.

// served is what the upstream answered one request (by x-request-id).
type served struct {
	path   string
	stream bool
	status int
	units  int64
}

// meterAPI is the upstream: HTTP/1.1 and HTTP/2 without TLS on one port.
type meterAPI struct {
	addr  string
	units *unitPool
	mu    sync.Mutex
	seen  map[string]served
	holds map[string]chan struct{} // requests held mid-answer (x-test-hold), by id
}

func startMeterAPI(t testing.TB, units *unitPool) *meterAPI {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &meterAPI{addr: lis.Addr().String(), units: units, seen: map[string]served{}, holds: map[string]chan struct{}{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+pathLLM, a.chat)
	mux.HandleFunc("GET "+pathHeader, a.header)
	mux.HandleFunc("GET "+pathTrailer, a.trailer)
	mux.HandleFunc("GET "+pathTrailerH1, a.trailer)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true) // the trailer route's cluster speaks h2c
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return a
}

// status is the status the test asked for (x-test-status), default 200.
func testStatus(r *http.Request) int {
	if s, err := strconv.Atoi(r.Header.Get("x-test-status")); err == nil {
		return s
	}
	return http.StatusOK
}

func (a *meterAPI) record(r *http.Request, s served) {
	id := r.Header.Get("x-request-id")
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, dup := a.seen[id]; dup || id == "" {
		panic("meterAPI: request id missing or seen twice: " + id)
	}
	a.seen[id] = s
}

// hold stops a request sent with x-test-hold in the middle of its answer
// until release (or its client leaves).
func (a *meterAPI) hold(r *http.Request) {
	if r.Header.Get("x-test-hold") == "" {
		return
	}
	ch := make(chan struct{})
	a.mu.Lock()
	a.holds[r.Header.Get("x-request-id")] = ch
	a.mu.Unlock()
	select {
	case <-ch:
	case <-r.Context().Done():
	}
}

// holding reports whether request id is held now.
func (a *meterAPI) holding(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.holds[id] != nil
}

// release lets held request id finish its answer.
func (a *meterAPI) release(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ch := a.holds[id]; ch != nil {
		close(ch)
		delete(a.holds, id)
	}
}

// served is what the upstream answered the request id, if it was reached.
func (a *meterAPI) served(id string) (served, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.seen[id]
	return s, ok
}

// chat answers like an OpenAI-compatible chat completions API: a JSON body
// with usage, or with "stream": true an event stream whose last chunk
// before [DONE] carries usage (stream_options.include_usage).
func (a *meterAPI) chat(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Stream    bool  `json:"stream"`
		MaxTokens int64 `json:"max_tokens"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	status, total := testStatus(r), a.units.next()
	prompt := total / 3
	usage := map[string]int64{"prompt_tokens": prompt, "completion_tokens": total - prompt, "total_tokens": total}
	a.record(r, served{path: pathLLM, stream: req.Stream, status: status, units: total})
	if !req.Stream || status != http.StatusOK {
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(status)
		body := map[string]any{
			"id": "chatcmpl-e2e", "object": "chat.completion", "model": "e2e-model",
			"choices": []any{map[string]any{"index": 0, "message": map[string]string{"role": "assistant", "content": "hello"}, "finish_reason": "stop"}},
			"usage":   usage,
		}
		if status != http.StatusOK {
			body["error"] = map[string]string{"message": "upstream failed on purpose", "type": "server_error"}
		}
		_ = json.NewEncoder(w).Encode(body)
		return
	}
	w.Header().Set("content-type", "text/event-stream")
	w.Header().Set("cache-control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	chunk := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "data: %s\n\n", b)
		fl.Flush()
	}
	for i, word := range []string{"Hel", "lo ", "there"} {
		delta := map[string]any{"content": word}
		if i == 0 {
			delta["role"] = "assistant"
		}
		chunk(map[string]any{"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "model": "e2e-model",
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": nil}}})
		if i == 0 {
			a.hold(r) // mid-stream
		}
	}
	chunk(map[string]any{"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "model": "e2e-model",
		"choices": []any{map[string]any{"index": 0, "delta": map[string]any{}, "finish_reason": "stop"}}})
	// The usage chunk: no choices, as OpenAI sends it.
	chunk(map[string]any{"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "model": "e2e-model", "choices": []any{}, "usage": usage})
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// header sets the units as a response header.
func (a *meterAPI) header(w http.ResponseWriter, r *http.Request) {
	status, n := testStatus(r), a.units.next()
	a.record(r, served{path: pathHeader, status: status, units: n})
	a.hold(r) // before the answer
	w.Header().Set("x-usage-units", strconv.FormatInt(n, 10))
	w.WriteHeader(status)
	fmt.Fprintln(w, "ok")
}

// trailer sets the units as a response trailer, known only once the body
// is written.
func (a *meterAPI) trailer(w http.ResponseWriter, r *http.Request) {
	status, n := testStatus(r), a.units.next()
	a.record(r, served{path: r.URL.Path, status: status, units: n})
	w.Header().Set("Trailer", "x-usage-units")
	w.WriteHeader(status)
	fmt.Fprintln(w, "ok")
	w.(http.Flusher).Flush()
	w.Header().Set("x-usage-units", strconv.FormatInt(n, 10))
}

// ---------------------------------------------------------------------------
// The fake Stripe meter-events endpoint.

// stripeMode is how the fake answers.
type stripeMode int

const (
	stripeUp   stripeMode = iota // takes events, de-duplicating by identifier
	stripeDown                   // 503 api_error for everything, taking nothing
	stripeHang                   // takes the event, then never answers (the answer is lost)
)

// meterEvent is one event the fake holds.
type meterEvent struct {
	name, customer string
	value          int64
	timestamp      int64
}

// fakeStripe is POST /v1/billing/meter_events as Stripe documents it: form
// parameters event_name, identifier, payload[stripe_customer_id],
// payload[value], timestamp; a second event with an identifier it holds is
// refused with 400 "An event already exists with identifier …", and
// nothing is counted twice.
type fakeStripe struct {
	t   testing.TB
	url string

	mu      sync.Mutex
	mode    stripeMode
	release chan struct{} // closed to end the hanging requests
	events  map[string]meterEvent
	// posts counts the requests with a well-formed event; dups those
	// refused as already held; refused those answered 503; held those
	// left hanging.
	posts, dups, refused, held int
}

func startFakeStripe(t testing.TB) *fakeStripe {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeStripe{t: t, url: "http://" + lis.Addr().String(), release: make(chan struct{}), events: map[string]meterEvent{}}
	srv := &http.Server{Handler: f, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() {
		f.setMode(stripeUp)
		_ = srv.Close()
	})
	return f
}

// setMode changes how the fake answers from the next request on; leaving
// stripeHang ends the requests still hanging (their clients are usually
// gone by then).
func (f *fakeStripe) setMode(m stripeMode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mode == stripeHang && m != stripeHang {
		close(f.release)
		f.release = make(chan struct{})
	}
	f.mode = m
}

func stripeError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"type": typ, "message": msg}})
}

var stripeParams = map[string]bool{"event_name": true, "identifier": true, "timestamp": true,
	"payload[stripe_customer_id]": true, "payload[value]": true}

func (f *fakeStripe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/billing/meter_events" {
		stripeError(w, http.StatusNotFound, "invalid_request_error", "Unrecognized request URL ("+r.Method+": "+r.URL.Path+").")
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+stripeTestKey {
		stripeError(w, http.StatusUnauthorized, "invalid_request_error", "Invalid API Key provided.")
		return
	}
	f.mu.Lock()
	mode, release := f.mode, f.release
	if mode == stripeDown {
		f.refused++
	}
	f.mu.Unlock()
	if mode == stripeDown {
		stripeError(w, http.StatusServiceUnavailable, "api_error", "Stripe is down (e2e outage).")
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/x-www-form-urlencoded" {
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "Invalid request: content type "+ct)
		return
	}
	if err := r.ParseForm(); err != nil {
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "Invalid form")
		return
	}
	for k := range r.PostForm {
		if !stripeParams[k] {
			f.t.Errorf("fake stripe: unknown parameter %s", k)
			stripeError(w, http.StatusBadRequest, "invalid_request_error", "Received unknown parameter: "+k)
			return
		}
	}
	id := r.PostForm.Get("identifier")
	ev := meterEvent{name: r.PostForm.Get("event_name"), customer: r.PostForm.Get("payload[stripe_customer_id]")}
	var err1, err2 error
	ev.value, err1 = strconv.ParseInt(r.PostForm.Get("payload[value]"), 10, 64)
	ev.timestamp, err2 = strconv.ParseInt(r.PostForm.Get("timestamp"), 10, 64)
	now := time.Now().Unix()
	if id == "" || ev.name == "" || ev.customer == "" || err1 != nil || err2 != nil ||
		ev.timestamp < now-35*24*3600 || ev.timestamp > now+300 {
		f.t.Errorf("fake stripe: malformed meter event %v", r.PostForm)
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "Invalid meter event")
		return
	}
	f.mu.Lock()
	f.posts++
	old, dup := f.events[id]
	if dup {
		f.dups++
		if old.name != ev.name || old.customer != ev.customer || old.value != ev.value {
			f.t.Errorf("fake stripe: identifier %s sent again with other content: %+v, then %+v", id, old, ev)
		}
	} else {
		f.events[id] = ev
	}
	if mode == stripeHang && !dup {
		f.held++
	}
	f.mu.Unlock()
	if dup {
		w.Header().Set("Stripe-Should-Retry", "false")
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "An event already exists with identifier "+id+".")
		return
	}
	if mode == stripeHang {
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return
	}
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"object": "billing.meter_event", "created": now, "event_name": ev.name, "identifier": id, "livemode": false,
		"payload":   map[string]string{"stripe_customer_id": ev.customer, "value": strconv.FormatInt(ev.value, 10)},
		"timestamp": ev.timestamp,
	})
}

// snapshot is the fake's events and counters now.
func (f *fakeStripe) snapshot() (events map[string]meterEvent, posts, dups, refused, held int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	events = make(map[string]meterEvent, len(f.events))
	for k, v := range f.events {
		events[k] = v
	}
	return events, f.posts, f.dups, f.refused, f.held
}

func (f *fakeStripe) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.events)
}

// ---------------------------------------------------------------------------
// tollgate with metering.

// meterTollgateOpts say how a metered tollgate is configured.
type meterTollgateOpts struct {
	grpcAddr string // host:port; "" picks a free port (kept across restarts)
	stripe   string // the fake Stripe's URL
	// redis, when set, puts the quota counters and the outbox in this
	// Redis (host:port), shared by replicas; otherwise memory counters and
	// a file outbox in the tollgate's directory.
	redis string
}

// meteredTollgate is a tollgate process that can be killed and started
// again with the same config, port and outbox.
type meteredTollgate struct {
	*tollgate
	dir  string
	runs int
	// settledBefore counts the settlements of the processes killed.
	settledBefore int
}

// settledTotal counts the settlements of every run so far.
func (m *meteredTollgate) settledTotal(t testing.TB) int {
	t.Helper()
	return m.settledBefore + m.settlements(t)
}

// meterConfig derives the metered config from the e2e config: a daily
// tokens quota on the pro plan, the metered routes before the demo's
// (first match wins), and metering to the fake Stripe.
func meterConfig(dir string, o meterTollgateOpts) (string, error) {
	path, err := tollgateConfig(dir, o.grpcAddr)
	if err != nil {
		return "", err
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(src, &cfg); err != nil {
		return "", err
	}
	pro := cfg["plans"].(map[string]any)["pro"].(map[string]any)
	pro["quotas"] = map[string]any{"tokens": map[string]any{"limit": tokensLimit, "period": "day"}}
	llm := map[string]any{
		"name":  "llm",
		"match": map[string]any{"method": "POST", "path": map[string]any{"exact": pathLLM}},
		// The estimate is the request's max_tokens (Envoy sends the body
		// to ext_authz on this route only).
		"feature": "chat", "quota": "tokens", "cost": meteredEstimate, "cost_from": map[string]any{"body": "max_tokens"},
		"meter": map[string]any{"event": meterLLM, "units_from": map[string]any{"body": "usage.total_tokens"}},
	}
	units := map[string]any{
		"name":    "units",
		"match":   map[string]any{"method": "GET", "path": map[string]any{"prefix": "/v1/units/"}},
		"feature": "chat", "quota": "tokens", "cost": meteredEstimate,
		"meter": map[string]any{"event": meterUnits, "units_from": map[string]any{"header": "x-usage-units"}},
	}
	routes, _ := cfg["routes"].([]any)
	cfg["routes"] = append([]any{llm, units}, routes...)
	stripe := map[string]any{"secret_key_env": stripeKeyEnv, "api_base": o.stripe, "rate_per_second": 500}
	metering := map[string]any{
		"key_env": meterKeyEnv,
		"export":  map[string]any{"to": "stripe", "stripe": stripe},
	}
	if o.redis != "" {
		cfg["quota_store"] = map[string]any{"store": "redis", "redis": map[string]any{
			"address": o.redis, "prefix": "e2e:q:",
			// One unit at a time: the shared counter is exact, so the
			// RateLimit header reads what was settled.
			"lease_size": 1,
		}}
		metering["outbox"] = map[string]any{"store": "redis", "redis": map[string]any{"address": o.redis}}
	} else {
		metering["outbox"] = map[string]any{"store": "file", "path": filepath.Join(dir, "usage.db")}
	}
	cfg["metering"] = metering
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, out, 0o600)
}

// startMeteredTollgate configures and starts a metered tollgate in dir.
func startMeteredTollgate(t testing.TB, dir string, o meterTollgateOpts) *meteredTollgate {
	t.Helper()
	if o.grpcAddr == "" {
		// A fixed port, so that a restarted process is where Envoy looks.
		addr, err := closedPort()
		if err != nil {
			t.Fatal(err)
		}
		o.grpcAddr = addr
	}
	cfg, err := meterConfig(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	m := &meteredTollgate{tollgate: &tollgate{grpcAddr: o.grpcAddr, config: cfg}, dir: dir}
	m.start(t)
	t.Cleanup(func() { m.Stop() })
	return m
}

// start runs the process (again) with the same config.
func (m *meteredTollgate) start(t testing.TB) {
	t.Helper()
	m.runs++
	cmd := exec.Command(tollgateBin, "serve", "--config", m.config)
	cmd.Env = append(os.Environ(), meterKeyEnv+"="+meterKey, stripeKeyEnv+"="+stripeTestKey)
	p, err := proc.Start("tollgate", filepath.Join(m.dir, fmt.Sprintf("tollgate-%d.log", m.runs)), cmd)
	if err != nil {
		t.Fatal(err)
	}
	var l struct{ GRPC, Admin string }
	if err := p.WaitJSON(servingRE, 30*time.Second, &l); err != nil {
		p.Stop()
		t.Fatal(err)
	}
	if l.GRPC != m.grpcAddr {
		p.Stop()
		t.Fatalf("tollgate serves on %s, want %s", l.GRPC, m.grpcAddr)
	}
	m.Child, m.adminAddr = p, l.Admin
}

// kill sends SIGKILL to the process's PID and waits until it is reaped.
// Its settlements are counted first: call it when none is in flight.
func (m *meteredTollgate) kill(t testing.TB) {
	t.Helper()
	m.settledBefore += m.settlements(t)
	if err := syscall.Kill(m.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !eventually(30*time.Second, m.Exited) {
		t.Fatal("tollgate did not exit after SIGKILL")
	}
}

// metric sums the samples of name whose labels include every one of
// labels (`k="v"`), from the admin /metrics.
func (tg *tollgate) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	body := httpGet(t, "http://"+tg.adminAddr+"/metrics")
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if !allIn(rest, labels) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("unparsable metric line %q", line)
		}
		sum += v
	}
	return sum
}

func allIn(s string, subs []string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}

// settlements counts the settled requests of every outcome but duplicate.
func (tg *tollgate) settlements(t testing.TB) int {
	t.Helper()
	n := 0
	for _, o := range []string{"settled", "at_estimate", "not_billable", "failed", "forged"} {
		n += int(tg.metric(t, "tollgate_settlements_total", `outcome="`+o+`"`))
	}
	return n
}

// ---------------------------------------------------------------------------
// Envoy with ext_proc and the gRPC access log.

// meterEnvoyOpts say where a metering Envoy sends what.
type meterEnvoyOpts struct {
	// authz is the tollgate for ext_authz and ext_proc; als the one for
	// the access log service ("": authz).
	authz, als string
	api        string // the metered API's host:port
}

// meterEnvoyConfig is the repo's envoy.yaml (through envoytest.Derive, like
// every e2e Envoy) with what metering adds:
//
//   - routes for the metered API: the LLM route sends its request body to
//     ext_authz (the estimate is max_tokens) and turns ext_proc on; the
//     trailer route goes to an HTTP/2 cluster;
//   - ext_proc after ext_authz, off unless a route turns it on;
//   - an envoy.access_loggers.http_grpc access log to tollgate, for the
//     requests that carry a reservation.
func meterEnvoyConfig(dir string, o meterEnvoyOpts) ([]byte, error) {
	src, err := os.ReadFile(filepath.Join(repoRoot, "envoy.yaml"))
	if err != nil {
		return nil, err
	}
	enableExtProc := map[string]any{
		// ext_proc is disabled in the filter chain (below); an empty
		// FilterConfig turns it on for this route.
		"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
		"config": map[string]any{
			"@type":     "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
			"overrides": map[string]any{},
		},
	}
	routes := []any{
		map[string]any{
			"match": map[string]any{"path": pathLLM},
			"route": map[string]any{"cluster": "upstream", "timeout": "30s"},
			"typed_per_filter_config": map[string]any{
				"envoy.filters.http.ext_authz": map[string]any{
					"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
					"check_settings": map[string]any{"with_request_body": map[string]any{
						"max_request_bytes": 65536, "allow_partial_message": true,
					}},
				},
				"envoy.filters.http.ext_proc": enableExtProc,
			},
		},
		map[string]any{
			"match": map[string]any{"prefix": "/v1/units/header"},
			"route": map[string]any{"cluster": "upstream", "timeout": "30s"},
		},
		map[string]any{
			"match": map[string]any{"path": pathTrailer},
			"route": map[string]any{"cluster": "upstream_h2", "timeout": "30s"},
		},
		map[string]any{
			"match": map[string]any{"path": pathTrailerH1},
			"route": map[string]any{"cluster": "upstream_h1_trailers", "timeout": "30s"},
		},
	}
	cfg, _, err := envoytest.Derive(src, envoytest.Changes{
		Tollgate:     o.authz,
		Upstream:     o.api,
		AccessLog:    filepath.Join(dir, "access.log"),
		Routes:       routes,
		GRPCClusters: map[string]string{"upstream_h2": o.api},
	})
	if err != nil {
		return nil, err
	}
	var root map[string]any
	if err := yaml.Unmarshal(cfg, &root); err != nil {
		return nil, err
	}
	sr := root["static_resources"].(map[string]any)
	listener := sr["listeners"].([]any)[0].(map[string]any)
	hcm := named(listener["filter_chains"].([]any)[0].(map[string]any)["filters"].([]any),
		"envoy.filters.network.http_connection_manager")["typed_config"].(map[string]any)

	// The loaded test machine is not the point here: give ext_authz more
	// than the shipped 0.2s.
	filters := hcm["http_filters"].([]any)
	authz := named(filters, "envoy.filters.http.ext_authz")["typed_config"].(map[string]any)
	authz["grpc_service"].(map[string]any)["timeout"] = "2s"

	extProc := map[string]any{
		"name": "envoy.filters.http.ext_proc",
		// Off by default: only the routes that read the body turn it on.
		"disabled": true,
		"typed_config": map[string]any{
			"@type":        "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
			"grpc_service": map[string]any{"envoy_grpc": map[string]any{"cluster_name": "tollgate"}, "timeout": "5s"},
			// A failing or unreachable ext_proc never breaks a response:
			// the response goes on unread, the access log entry carries no
			// body units, and the request settles at its reservation
			// (billed what its Check reserved, here max_tokens).
			"failure_mode_allow": true,
			// Response headers (to see the content type and the
			// reservation), then the body as it streams; nothing of the
			// request. tollgate answers a route whose units are not in
			// the body with mode_override: body NONE.
			"processing_mode": map[string]any{
				"request_header_mode":   "SKIP",
				"request_body_mode":     "NONE",
				"request_trailer_mode":  "SKIP",
				"response_header_mode":  "SEND",
				"response_body_mode":    "STREAMED",
				"response_trailer_mode": "SKIP",
			},
			"allow_mode_override": true,
			// Generous for a loaded test machine; each streamed chunk
			// waits for tollgate's answer.
			"message_timeout": "5s",
			"metadata_options": map[string]any{
				// The reservation, so tollgate knows the route's meter.
				"forwarding_namespaces": map[string]any{"untyped": []any{"envoy.filters.http.ext_authz"}},
				// Where tollgate puts the units it found.
				"receiving_namespaces": map[string]any{"untyped": []any{"tollgate.usage"}},
			},
		},
	}
	var out []any
	for _, f := range filters {
		out = append(out, f)
		if f.(map[string]any)["name"] == "envoy.filters.http.ext_authz" {
			out = append(out, extProc)
		}
	}
	hcm["http_filters"] = out

	alsCluster := "tollgate"
	if o.als != "" && o.als != o.authz {
		alsCluster = "tollgate_als"
	}
	hcm["access_log"] = append(hcm["access_log"].([]any), map[string]any{
		"name": "envoy.access_loggers.http_grpc",
		// Only the requests that carry a reservation (metered and admitted).
		"filter": map[string]any{"metadata_filter": map[string]any{
			"matcher": map[string]any{
				"filter": "envoy.filters.http.ext_authz",
				"path":   []any{map[string]any{"key": "reservation"}},
				"value":  map[string]any{"present_match": true},
			},
		}},
		"typed_config": map[string]any{
			"@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
			"common_config": map[string]any{
				"log_name":              "tollgate",
				"transport_api_version": "V3",
				"grpc_service":          map[string]any{"envoy_grpc": map[string]any{"cluster_name": alsCluster}},
				"buffer_flush_interval": "0.05s",
				// When tollgate cannot be reached (a restart), Envoy retries
				// opening the stream with the entries it holds, instead of
				// dropping them: about num_retries × max_interval. Without
				// it, an entry flushed while no tollgate answers is lost,
				// and its request served unbilled. (Envoy's docs say only
				// num_retries is used; in 1.40 retry_back_off is honoured,
				// and without it the default backoff left the stream
				// waiting long after tollgate was back.)
				"grpc_stream_retry_policy": map[string]any{
					"num_retries":    30,
					"retry_back_off": map[string]any{"base_interval": "0.25s", "max_interval": "1s"},
				},
			},
			"additional_response_headers_to_log":  []any{"x-usage-units"},
			"additional_response_trailers_to_log": []any{"x-usage-units"},
		},
	})

	clusters := sr["clusters"].([]any)
	tg := named(clusters, "tollgate")
	// The metered API again, over HTTP/1.1 with trailers kept: without
	// enable_trailers Envoy drops an HTTP/1.1 upstream's trailers, and the
	// request settles at its reservation.
	h1 := map[string]any{}
	for k, v := range named(clusters, "upstream") {
		h1[k] = v
	}
	h1["name"] = "upstream_h1_trailers"
	h1["typed_extension_protocol_options"] = map[string]any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": map[string]any{
		"@type":                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
		"explicit_http_config": map[string]any{"http_protocol_options": map[string]any{"enable_trailers": true}},
	}}
	clusters = append(clusters, h1)
	sr["clusters"] = clusters
	if alsCluster != "tollgate" {
		host, port, _ := net.SplitHostPort(o.als)
		p, _ := strconv.Atoi(port)
		clusters = append(clusters, map[string]any{
			"name": alsCluster, "type": "STATIC", "connect_timeout": "1s",
			"typed_extension_protocol_options": tg["typed_extension_protocol_options"],
			"load_assignment": map[string]any{"cluster_name": alsCluster, "endpoints": []any{map[string]any{
				"lb_endpoints": []any{map[string]any{"endpoint": map[string]any{"address": map[string]any{
					"socket_address": map[string]any{"address": host, "port_value": p},
				}}}},
			}}},
		})
		sr["clusters"] = clusters
	}
	return yaml.Marshal(root)
}

func named(l []any, name string) map[string]any {
	for _, x := range l {
		if m, ok := x.(map[string]any); ok && m["name"] == name {
			return m
		}
	}
	panic("nothing named " + name)
}

// startMeterEnvoy runs a metering Envoy in dir.
func startMeterEnvoy(t testing.TB, dir, name string, o meterEnvoyOpts) *envoy {
	t.Helper()
	cfg, err := meterEnvoyConfig(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	e, err := envoytest.Start(envoytest.Options{
		Bin: envoyPath(t), Config: cfg, Dir: dir, Name: name,
		BaseID: 20000, LogLevel: "info", Ready: 30 * time.Second,
		Args: []string{"--log-path", filepath.Join(dir, name+".log"), "--file-flush-interval-msec", "50"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return &envoy{Envoy: e, statPrefix: "api", accessLog: filepath.Join(dir, "access.log")}
}

// ---------------------------------------------------------------------------
// Clients.

// meterKind is one kind of metered request.
type meterKind int

const (
	kindJSON meterKind = iota
	kindStream
	kindHeader
	kindTrailer
	kindTrailerH1
)

// allKinds are the metered requests a test sends in turn.
var allKinds = []meterKind{kindJSON, kindStream, kindHeader, kindTrailer, kindTrailerH1}

func (k meterKind) String() string {
	return [...]string{"json", "stream", "header", "trailer", "trailer-h1"}[k]
}

func (k meterKind) meter() string {
	if k == kindJSON || k == kindStream {
		return meterLLM
	}
	return meterUnits
}

// sent is one request the client made and what it got.
type sent struct {
	id       string
	kind     meterKind
	status   int
	ratelim  string // the RateLimit header of the answer
	bodyUnit int64  // units the client read in the body (JSON and stream), -1 if none
}

// newRequestID is a random UUID (version 4). Envoy rewrites the 15th
// character of an x-request-id to record its trace decision
// (pack_trace_reason), which leaves a version-4 UUID as it is; another id
// would reach the upstream changed.
func newRequestID() string {
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", rand.Uint32(), rand.Uint32()&0xffff, rand.Uint32()&0xfff,
		rand.Uint32()&0x3fff|0x8000, rand.Uint64()&(1<<48-1))
}

// meterClient may take a while: a streamed answer waits for tollgate's
// ext_proc on each chunk.
var meterClient = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}, Timeout: 60 * time.Second}

// send makes one metered request of kind through e; status, when not 0,
// asks the upstream for that status.
func send(t testing.TB, e *envoy, kind meterKind, status int) sent {
	t.Helper()
	s, err := trySend(e, kind, status)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// trySend is send for any goroutine.
func trySend(e *envoy, kind meterKind, status int, headers ...string) (sent, error) {
	s := sent{id: newRequestID(), kind: kind, bodyUnit: -1}
	return s, tryRequest(e, &s, status, headers...)
}

// tryRequest sends s (its id and kind set) and fills in the rest; headers
// are "name: value".
func tryRequest(e *envoy, s *sent, status int, headers ...string) error {
	kind := s.kind
	var req *http.Request
	var err error
	switch kind {
	case kindJSON, kindStream:
		body := fmt.Sprintf(`{"model":"e2e-model","max_tokens":%d,"stream":%v,"messages":[{"role":"user","content":"hi"}]}`,
			meteredEstimate, kind == kindStream)
		req, err = http.NewRequest("POST", e.url(pathLLM), strings.NewReader(body))
		if err == nil {
			req.Header.Set("content-type", "application/json")
		}
	case kindHeader:
		req, err = http.NewRequest("GET", e.url(pathHeader), nil)
	case kindTrailer:
		req, err = http.NewRequest("GET", e.url(pathTrailer), nil)
	case kindTrailerH1:
		req, err = http.NewRequest("GET", e.url(pathTrailerH1), nil)
	}
	if err != nil {
		return err
	}
	req.Header.Set("x-api-key", "demo-pro-key")
	req.Header.Set("x-request-id", s.id)
	if status != 0 {
		req.Header.Set("x-test-status", strconv.Itoa(status))
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := meterClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %v", kind, s.id, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading the body: %v", kind, s.id, err)
	}
	s.status, s.ratelim = resp.StatusCode, resp.Header.Get("ratelimit")
	if resp.StatusCode/100 == 2 && (kind == kindJSON || kind == kindStream) {
		s.bodyUnit = usageIn(b, kind == kindStream)
	}
	return nil
}

// usageIn is usage.total_tokens of a JSON body, or of the event of a
// stream that carries it; -1 if none.
func usageIn(b []byte, stream bool) int64 {
	var v struct {
		Usage *struct {
			TotalTokens int64 `json:"total_tokens"`
		} `json:"usage"`
	}
	if !stream {
		if json.Unmarshal(b, &v) == nil && v.Usage != nil {
			return v.Usage.TotalTokens
		}
		return -1
	}
	n := int64(-1)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		d, ok := strings.CutPrefix(sc.Text(), "data: ")
		if ok && json.Unmarshal([]byte(d), &v) == nil && v.Usage != nil {
			n = v.Usage.TotalTokens
		}
	}
	return n
}

// remainingRE reads the tokens quota's remaining units from a RateLimit
// header: "tokens";r=999;t=86400.
var remainingRE = regexp.MustCompile(`"tokens";r=(\d+)`)

func remaining(t testing.TB, s sent) int64 {
	t.Helper()
	m := remainingRE.FindStringSubmatch(s.ratelim)
	if m == nil {
		t.Fatalf("request %s: RateLimit header %q has no tokens quota", s.id, s.ratelim)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// ---------------------------------------------------------------------------
// What must be billed.

// ledger is the test's book of requests: what each got, and what the
// upstream served it.
type ledger struct {
	mu   sync.Mutex
	sent []sent
}

func (l *ledger) add(s sent) {
	l.mu.Lock()
	l.sent = append(l.sent, s)
	l.mu.Unlock()
}

func (l *ledger) all() []sent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.sent)
}

// billed is one usage line as the test expects it at Stripe.
type billed struct {
	meter string
	units int64
}

// expectation is what the ledger's requests must come to: the events of
// the 2xx ones, their units' sum, and how many were admitted (reached the
// upstream: each is settled once, billed or not).
type expectation struct {
	events   []billed
	sum      int64
	admitted int
}

func (l *ledger) expect(t testing.TB, api *meterAPI) expectation {
	t.Helper()
	var x expectation
	for _, s := range l.all() {
		sv, reached := api.served(s.id)
		if reached {
			x.admitted++
		}
		if s.status/100 != 2 {
			continue
		}
		if !reached {
			t.Fatalf("request %s (%s) got %d without reaching the upstream", s.id, s.kind, s.status)
		}
		if s.bodyUnit >= 0 && s.bodyUnit != sv.units {
			t.Fatalf("request %s: the client read %d units, the upstream sent %d", s.id, s.bodyUnit, sv.units)
		}
		x.events = append(x.events, billed{s.kind.meter(), sv.units})
		x.sum += sv.units
	}
	sortBilled(x.events)
	return x
}

func sortBilled(b []billed) {
	slices.SortFunc(b, func(x, y billed) int {
		if c := strings.Compare(x.meter, y.meter); c != 0 {
			return c
		}
		return int(x.units - y.units)
	})
}

// stripeBilled is the fake's events as billed lines, checking each is for
// the demo's pro customer.
func stripeBilled(t testing.TB, f *fakeStripe) []billed {
	t.Helper()
	events, _, _, _, _ := f.snapshot()
	var out []billed
	for id, e := range events {
		if e.customer != "acme" {
			t.Errorf("event %s bills customer %q, want acme", id, e.customer)
		}
		out = append(out, billed{e.name, e.value})
	}
	sortBilled(out)
	return out
}

// waitBilled waits until the tollgates settled every admitted request and
// the fake holds one event per billable one, then checks them: the same
// meters and units, once each.
func waitBilled(t testing.TB, l *ledger, api *meterAPI, f *fakeStripe, tgs ...*meteredTollgate) expectation {
	t.Helper()
	x := l.expect(t, api)
	settled := func() int {
		n := 0
		for _, tg := range tgs {
			n += tg.settledTotal(t)
		}
		return n
	}
	if !eventually(60*time.Second, func() bool { return settled() >= x.admitted }) {
		t.Fatalf("tollgate settled %d requests, want the %d admitted", settled(), x.admitted)
	}
	if !eventually(120*time.Second, func() bool { return f.count() >= len(x.events) }) {
		t.Fatalf("the fake Stripe holds %d events, want %d", f.count(), len(x.events))
	}
	got := stripeBilled(t, f)
	if !slices.Equal(got, x.events) {
		t.Fatalf("billed at Stripe (meter, units):\n got %v\nwant %v", got, x.events)
	}
	return x
}

// meterDir is a directory for one test's configs, outbox and logs, under
// workDir: TestLogsNeverHoldSecrets reads every *.log there.
func meterDir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp(workDir, "meter-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
