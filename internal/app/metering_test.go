package app

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-authz/tollgate/quota"
	"github.com/tollgate-authz/tollgate/reservation"
	"github.com/tollgate-authz/tollgate/usage"
)

// sink is a JSON-lines endpoint that keeps each event once, by ID, as a
// billing provider de-duplicates.
type sink struct {
	mu     sync.Mutex
	events map[string]usage.Event
	posts  int
}

func newSink(t *testing.T) (*sink, string) {
	s := &sink{events: map[string]usage.Event{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sc := bufio.NewScanner(r.Body)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.posts++
		for sc.Scan() {
			var e usage.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				s.events[e.ID] = e
			}
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return s, srv.URL
}

func (s *sink) all() []usage.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []usage.Event
	for _, e := range s.events {
		out = append(out, e)
	}
	return out
}

// meteredDemo is the demo config with a tokens quota on chat, metered by
// the x-usage-units response header, settling into a file outbox.
func meteredDemo(t *testing.T, metering string) string {
	t.Helper()
	t.Setenv("TOLLGATE_TEST_METER_KEY", strings.Repeat("m", 32))
	dir := demoDir(t, "127.0.0.1:0")
	cfg := filepath.Join(dir, "tollgate.yaml")
	editFile(t, cfg, "    features: [search, chat]\n", "    features: [search, chat]\n    quotas: {tokens: {limit: 1000, period: day}}\n")
	editFile(t, cfg, "    feature: chat\n", "    feature: chat\n    quota: tokens\n    cost: 100\n    meter: {event: llm_tokens, units_from: {header: x-usage-units}}\n")
	editFile(t, cfg, "default: deny", "metering:\n  key_env: TOLLGATE_TEST_METER_KEY\n  outbox: {path: "+filepath.Join(dir, "usage.db")+metering+"\ndefault: deny")
	return cfg
}

func checkWithID(t *testing.T, s *server, id string) *authv3.CheckResponse {
	t.Helper()
	return s.check(t, "POST", "/v1/chat", map[string]string{"x-api-key": "demo-pro-key", "x-request-id": id})
}

// settleVia sends one access log entry for a response, as Envoy does.
func settleVia(t *testing.T, s *server, resp *authv3.CheckResponse, status uint32, headers map[string]string) {
	t.Helper()
	stream, err := accesslogv3.NewAccessLogServiceClient(s.conn).StreamAccessLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	entry := &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			StartTime: timestamppb.Now(),
			Metadata:  &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.ext_authz": resp.GetDynamicMetadata()}},
		},
		Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(status), ResponseHeaders: headers},
	}
	if err := stream.Send(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{entry}},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
}

// used is the tokens counter of acme now.
func used(t *testing.T, s *server) int64 {
	t.Helper()
	now := time.Now()
	start := time.Date(now.UTC().Year(), now.UTC().Month(), now.UTC().Day(), 0, 0, 0, 0, time.UTC)
	n, err := s.app.quotas.Quotas.(quota.Peeker).Peek(context.Background(), "acme", quota.Item{Key: quota.Key("acme", "tokens", start)})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMeteredRequestSettlesAndExports: a metered Check reserves its cost
// and carries a reservation; the access log entry of its response settles
// the actual units (releasing the rest of the reservation) and the usage
// event reaches the billing endpoint once, even when the entry is sent
// twice.
func TestMeteredRequestSettlesAndExports(t *testing.T) {
	snk, url := newSink(t)
	s := startServe(t, meteredDemo(t, "}\n  export: {to: http, http: {url: "+url+"}}"))

	resp := checkWithID(t, s, "req-1")
	if code(resp) != "ok" || resp.GetDynamicMetadata().GetFields()["reservation"].GetStringValue() == "" {
		t.Fatalf("metered Check: %s, metadata %v", code(resp), resp.GetDynamicMetadata())
	}
	if got := used(t, s); got != 100 {
		t.Fatalf("reserved %d, want the route's cost 100", got)
	}
	settleVia(t, s, resp, 200, map[string]string{"x-usage-units": "40"})
	settleVia(t, s, resp, 200, map[string]string{"x-usage-units": "40"}) // Envoy never does; a replay must not count
	waitFor(t, func() bool { return len(snk.all()) == 1 })
	ev := snk.all()[0]
	if ev.Units != 40 || ev.Reserved != 100 || ev.Subject != "acme" || ev.Customer != "acme" || ev.Meter != "llm_tokens" || ev.Route != "chat" || ev.Status != 200 {
		t.Errorf("event = %+v", ev)
	}
	if got := used(t, s); got != 40 {
		t.Errorf("after settlement the counter holds %d, want the actual 40", got)
	}
	if got := metricValue(t, s, `tollgate_settlements_total{outcome="duplicate",route="chat"}`); got != "1" {
		t.Errorf("duplicates counted: %q, want 1", got)
	}

	// A 5xx from the upstream is not billed, and its reservation released.
	resp = checkWithID(t, s, "req-2")
	settleVia(t, s, resp, 503, nil)
	waitFor(t, func() bool {
		return metricValue(t, s, `tollgate_settlements_total{outcome="not_billable",route="chat"}`) == "1"
	})
	if got := used(t, s); got != 40 {
		t.Errorf("after a 503 the counter holds %d, want 40", got)
	}
	if n := len(snk.all()); n != 1 {
		t.Errorf("%d events, want 1: a 503 is not billed", n)
	}
}

// TestFullOutboxRefusesMeteredRequests: with when_full: refuse, once the
// outbox holds its maximum, metered requests are refused (nothing is
// served unbilled) and unmetered ones still pass.
func TestFullOutboxRefusesMeteredRequests(t *testing.T) {
	s := startServe(t, meteredDemo(t, ", max_events: 1, when_full: refuse}"))
	for i, id := range []string{"a", "b"} {
		resp := checkWithID(t, s, id)
		if code(resp) != "ok" {
			t.Fatalf("check %d: %s", i, code(resp))
		}
		settleVia(t, s, resp, 200, map[string]string{"x-usage-units": "1"})
	}
	waitFor(t, func() bool { return code(checkWithID(t, s, "c")) == "entitlements_unavailable" })
	if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key"})); got != "ok" {
		t.Errorf("unmetered route with the outbox full: %s, want ok", got)
	}
	if got := metricValue(t, s, `tollgate_usage_events_dropped_total`); got != "1" {
		t.Errorf("dropped events = %q, want 1", got)
	}
}

// TestReserveFromRequestBody: an LLM route reserves the request body's
// max_tokens (Envoy's with_request_body), whether Envoy sends the body as
// a string or as bytes, and falls back to the route's cost without it.
func TestReserveFromRequestBody(t *testing.T) {
	cfg := meteredDemo(t, "}")
	editFile(t, cfg, "    cost: 100\n", "    cost: 100\n    cost_from: {body: max_tokens}\n")
	s := startServe(t, cfg)
	client := authv3.NewAuthorizationClient(s.conn)
	before := used(t, s)
	for _, tt := range []struct {
		name string
		http *authv3.AttributeContext_HttpRequest
		want int64
	}{
		{"body", &authv3.AttributeContext_HttpRequest{Body: `{"model":"m","max_tokens":700}`}, 700},
		{"raw_body", &authv3.AttributeContext_HttpRequest{RawBody: []byte(`{"max_tokens":50,"stream":true}`)}, 50},
		{"no body", &authv3.AttributeContext_HttpRequest{}, 100},
	} {
		h := tt.http
		h.Method, h.Path, h.Host = "POST", "/v1/chat", "api.example.com"
		h.Headers = map[string]string{":method": "POST", ":path": "/v1/chat", ":authority": "api.example.com", "x-api-key": "demo-pro-key"}
		resp, err := client.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: h},
		}})
		if err != nil || code(resp) != "ok" {
			t.Fatalf("%s: %s, %v", tt.name, code(resp), err)
		}
		if got := used(t, s) - before; got != tt.want {
			t.Errorf("%s: reserved %d, want %d", tt.name, got, tt.want)
		}
		before = used(t, s)
	}
}

// TestSettledUseEqualsActualUse: after many metered requests with random
// estimates and random actual units (under, over, equal, absent), the
// quota counter and the prepaid credits spent equal the sum of what was
// billed, not of the estimates.
func TestSettledUseEqualsActualUse(t *testing.T) {
	for _, spend := range []string{"tokens", "credits"} {
		t.Run(spend, func(t *testing.T) {
			snk, url := newSink(t)
			cfg := meteredDemo(t, "}\n  export: {to: http, http: {url: "+url+"}}")
			editFile(t, cfg, "    cost: 100\n", "    cost: 100\n    cost_from: {header: x-estimate}\n")
			editFile(t, cfg, "{limit: 1000, period: day}", "{limit: 1000000, period: day}")
			counter := "tokens"
			if spend == "credits" {
				editFile(t, cfg, "    quota: tokens\n", "    quota: credits\n")
				editFile(t, filepath.Join(filepath.Dir(cfg), "entitlements.yaml"), "  - id: acme\n    plan: pro\n", "  - id: acme\n    plan: pro\n    credits: 1000000\n")
				counter = "credits/1000000"
			}
			s := startServe(t, cfg)
			rng := rand.New(rand.NewPCG(1, uint64(len(spend))))
			var billed int64
			const n = 60
			for i := range n {
				est := rng.Int64N(200)
				resp := s.check(t, "POST", "/v1/chat", map[string]string{"x-api-key": "demo-pro-key", "x-request-id": fmt.Sprint("r", i), "x-estimate": fmt.Sprint(est)})
				if code(resp) != "ok" {
					t.Fatalf("request %d: %s", i, code(resp))
				}
				h := map[string]string{}
				actual := est // no header: billed the reservation
				if rng.IntN(5) > 0 {
					actual = rng.Int64N(400)
					h["x-usage-units"] = fmt.Sprint(actual)
				}
				billed += actual
				settleVia(t, s, resp, 200, h)
			}
			waitFor(t, func() bool { return len(snk.all()) == n })
			var exported int64
			for _, e := range snk.all() {
				exported += e.Units
			}
			now := time.Now().UTC()
			start := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
			if spend == "credits" {
				start = time.Time{}
			}
			got, err := s.app.quotas.Quotas.(quota.Peeker).Peek(context.Background(), "acme", quota.Item{Key: quota.Key("acme", counter, start)})
			if err != nil {
				t.Fatal(err)
			}
			if got != billed || exported != billed {
				t.Errorf("counter %d, exported %d, want both the billed sum %d", got, exported, billed)
			}
		})
	}
}

// TestUsageEndpoint: GET /v1/usage/{subject} shows each counter's use
// after settlement and the export backlog, to a caller with the admin
// token only.
func TestUsageEndpoint(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_ADMIN_TOKEN", "test-admin-token-0123456789")
	s := startServe(t, meteredDemo(t, "}"))
	resp := checkWithID(t, s, "u1")
	settleVia(t, s, resp, 200, map[string]string{"x-usage-units": "40"})
	waitFor(t, func() bool {
		return metricValue(t, s, `tollgate_settlements_total{outcome="settled",route="chat"}`) == "1"
	})
	get := func(path, token string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+s.admin+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		var b strings.Builder
		_, _ = io.Copy(&b, r.Body)
		return r.StatusCode, b.String()
	}
	if st, _ := get("/v1/usage/acme", ""); st != 401 {
		t.Errorf("without the token: %d, want 401", st)
	}
	if st, _ := get("/v1/usage/nobody", "test-admin-token-0123456789"); st != 404 {
		t.Errorf("unknown subject: %d, want 404", st)
	}
	st, body := get("/v1/usage/acme", "test-admin-token-0123456789")
	var rep UsageReport
	if err := json.Unmarshal([]byte(body), &rep); err != nil || st != 200 {
		t.Fatalf("%d %s: %v", st, body, err)
	}
	if len(rep.Quotas) != 1 || rep.Quotas[0].Name != "tokens" || rep.Quotas[0].Used != 40 || rep.Quotas[0].Remaining != 960 ||
		rep.Export == nil || rep.Export.Backlog != 1 || rep.Export.To != "none" {
		t.Errorf("report = %s", body)
	}
}

// TestRequestIDDoesNotNameTheReservation: a client that sends one
// x-request-id on many requests gets one reservation each (the decision
// id names it), so no settlement is taken for another's duplicate.
func TestRequestIDDoesNotNameTheReservation(t *testing.T) {
	s := startServe(t, meteredDemo(t, "}"))
	signer, err := reservation.NewSigner([]byte(strings.Repeat("m", 32)))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 5 {
		resp := checkWithID(t, s, "same-request-id")
		r, err := signer.Verify(resp.GetDynamicMetadata().GetFields()["reservation"].GetStringValue())
		if err != nil {
			t.Fatal(err)
		}
		if seen[r.ID] {
			t.Fatalf("reservation id %q given twice", r.ID)
		}
		seen[r.ID] = true
	}
}
