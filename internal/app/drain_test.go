package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tollgate-authz/tollgate/config"
)

func healthStatus(conn *grpc.ClientConn) string {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
	if err != nil {
		return err.Error()
	}
	return hr.GetStatus().String()
}

// TestIdleGRPCConnectionIsClosed is the gRPC half of issue 11's hole 7: a
// connection that carries no Check for server.max_connection_idle is sent
// away (the client sees it go idle) instead of being held forever.
func TestIdleGRPCConnectionIsClosed(t *testing.T) {
	dir := demoDir(t, "127.0.0.1:0")
	cfgPath := filepath.Join(dir, "tollgate.yaml")
	editFile(t, cfgPath, "  drain_timeout: 10s\n", "  drain_timeout: 10s\n  max_connection_idle: 100ms\n")
	s := startServe(t, cfgPath)
	if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})); got != "ok" {
		t.Fatalf("Check = %q, want ok", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	for st := s.conn.GetState(); st == connectivity.Ready; st = s.conn.GetState() {
		if !s.conn.WaitForStateChange(ctx, st) {
			t.Fatalf("connection still %s after %s idle", st, patience)
		}
	}
	// The next Check reconnects.
	if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})); got != "ok" {
		t.Errorf("Check after the idle close = %q, want ok", got)
	}
}

// slowPost starts a POST to /v1/invalidate on a raw connection that
// declares length bytes and sends only the first one.
func slowPost(t *testing.T, addr string, length int) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(patience))
	fmt.Fprintf(c, "POST /v1/invalidate HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer test-admin-token-0123456789\r\nContent-Length: %d\r\n\r\n{", length)
	return c
}

// answerAndClose reads the response on c (its status, or "no response"),
// then reads on until the server closes c; "still open" if it does not.
func answerAndClose(c net.Conn) string {
	status := "no response"
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err == nil {
		status = strconv.Itoa(resp.StatusCode)
		resp.Body.Close()
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return status + ", still open"
		}
	}
	return status
}

// postInvalidate sends a whole POST /v1/invalidate and returns its status.
func postInvalidate(t *testing.T, addr, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/invalidate", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer test-admin-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestSlowAdminBodies is the admin half of issue 11's hole 7 through
// serve: clients sending large bodies a byte at a time to POST
// /v1/invalidate.
func TestSlowAdminBodies(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_ADMIN_TOKEN", "test-admin-token-0123456789")
	start := func(t *testing.T, adminOpts string) *server {
		dir := demoDir(t, "127.0.0.1:0")
		cfgPath := filepath.Join(dir, "tollgate.yaml")
		editFile(t, cfgPath, "admin: {token_env: TOLLGATE_TEST_ADMIN_TOKEN}\n",
			"admin: {token_env: TOLLGATE_TEST_ADMIN_TOKEN, "+adminOpts+"}\n")
		return startServe(t, cfgPath)
	}

	t.Run("a slow body is cut and its connection closed", func(t *testing.T) {
		s := start(t, "body_timeout: 200ms")
		c := slowPost(t, s.admin, 1_000_000)
		go func() { // a byte at a time, until the server hangs up
			for {
				time.Sleep(20 * time.Millisecond)
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}()
		if got := answerAndClose(c); strings.HasSuffix(got, "still open") {
			t.Errorf("slow body: %s after %s", got, patience)
		}
	})

	t.Run("an idle keep-alive connection is closed", func(t *testing.T) {
		s := start(t, "idle_timeout: 100ms")
		c, err := net.Dial("tcp", s.admin)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(patience))
		fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
		if got := answerAndClose(c); got != "200" {
			t.Errorf("GET /healthz, then idle: %s, want 200 and the connection closed", got)
		}
	})

	t.Run("bodies over the bound are refused at once", func(t *testing.T) {
		s := start(t, "body_timeout: 1h, max_concurrent_bodies: 1, min_body_rate: -1")
		// One slow body holds the only slot: whole bodies get 503 from the
		// moment its handler runs.
		holder := slowPost(t, s.admin, len(`{"subject":"acme"}`))
		waitFor(t, func() bool { return postInvalidate(t, s.admin, `{"subject":"acme"}`) == 503 })
		const others = 19
		answers := make(chan string, others)
		for range others {
			c := slowPost(t, s.admin, 1_000_000)
			go func() { answers <- answerAndClose(c) }()
		}
		for range others {
			if got := <-answers; got != "503" {
				t.Errorf("slow body over the bound: %s, want 503 and the connection closed", got)
			}
		}
		// The holder finishes: the slot is free again.
		fmt.Fprint(holder, `"subject":"acme"}`)
		resp, err := http.ReadResponse(bufio.NewReader(holder), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("the slot holder's request = %d, want 200", resp.StatusCode)
		}
		if got := postInvalidate(t, s.admin, `{"subject":"acme"}`); got != 200 {
			t.Errorf("invalidate after the slot was freed = %d, want 200", got)
		}
	})

	t.Run("a body below min_body_rate is cut long before body_timeout", func(t *testing.T) {
		s := start(t, "body_timeout: 1h, min_body_rate: 1000")
		c := slowPost(t, s.admin, 1_000_000)
		go func() { // 50 bytes/s, until the server hangs up
			for {
				time.Sleep(20 * time.Millisecond)
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}()
		if got := answerAndClose(c); strings.HasSuffix(got, "still open") {
			t.Errorf("trickling body: %s after %s", got, patience)
		}
	})

	t.Run("one client address holds at most max_bodies_per_client", func(t *testing.T) {
		s := start(t, "body_timeout: 1h, max_concurrent_bodies: 4, max_bodies_per_client: 2, min_body_rate: -1")
		slowPost(t, s.admin, 100)
		slowPost(t, s.admin, 100)
		// Both held: this client's next body is refused, the pool not full.
		waitFor(t, func() bool { return postInvalidate(t, s.admin, `{"subject":"acme"}`) == 503 })
		// Another address on the loopback network gets in (where the
		// system lets a client bind one: Linux does).
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		c, err := d.Dial("tcp", s.admin)
		if err != nil {
			t.Skipf("cannot dial from 127.0.0.2: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(patience))
		body := `{"subject":"acme"}`
		fmt.Fprintf(c, "POST /v1/invalidate HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer test-admin-token-0123456789\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("invalidate from another address = %d, want 200", resp.StatusCode)
		}
	})
}

// gateWriter passes writes through until the test shuts the gate; then
// each write waits until the gate is opened again.
type gateWriter struct {
	syncBuffer
	mu   sync.Mutex
	gate chan struct{} // nil: open
}

func (g *gateWriter) shut() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *gateWriter) open() {
	g.mu.Lock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
	g.mu.Unlock()
}

func (g *gateWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return g.syncBuffer.Write(p)
}

// TestDrainSequence is issue 10's item 5: the order serve stops in. On
// SIGTERM (the context cancelled), with one Check held inside the billing
// service:
//  1. /readyz turns 503 and gRPC health NOT_SERVING before anything is
//     written to the log (the log is stalled then, as a full pipe would be);
//  2. serve waits out server.shutdown_delay, and during it the listener
//     still accepts new connections and answers their Checks;
//  3. after it the listener closes, while the held Check is still running;
//  4. the held Check completes with its real answer, then serve returns.
//
// The test owns the shutdown delay's clock, so no step depends on timing.
func TestDrainSequence(t *testing.T) {
	b := newBillingService(t)
	b.set("initech", "free", "active", "demo-free-key")
	b.set("acme", "pro", "active", "demo-pro-key")
	cfgPath := httpSourceDirTimeout(t, b.URL, "1m", "{ttl: 1h, timeout: 2m}")
	editFile(t, cfgPath, "  drain_timeout: 10s\n", "  drain_timeout: 1m\n  shutdown_delay: 7s\n")
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	logs := &gateWriter{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	delayAsked := make(chan time.Duration, 1)
	endDelay := make(chan time.Time)
	a, err := New(cfg, Options{Logger: log, After: func(d time.Duration) <-chan time.Time { delayAsked <- d; return endDelay }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	addrs, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, adminAddr := addrs.GRPC, addrs.Admin
	hold := make(chan struct{}) // the billing service holds requests until closed
	var delayEnded, holdReleased sync.Once

	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{}) // closed when Serve has returned
	var serveErr error
	go func() { serveErr = a.Serve(ctx); close(served) }()
	// Runs before the billing service closes: whatever step failed, let
	// Serve finish.
	t.Cleanup(func() {
		logs.open()
		delayEnded.Do(func() { close(endDelay) })
		holdReleased.Do(func() { close(hold) })
		cancel()
		select {
		case <-served:
		case <-time.After(patience):
		}
	})
	conn := dialGRPC(t, grpcAddr)
	if got, err := checkKey(conn, "demo-pro-key"); got != "ok" || err != nil { // now cached
		t.Fatalf("before the drain: %q, %v; want ok", got, err)
	}

	// A Check for a cold key, held inside the billing service.
	b.mu.Lock()
	b.hold = hold
	b.mu.Unlock()
	held := make(chan string, 1)
	calls := b.calls.Load()
	go func() {
		got, err := checkKey(conn, "demo-free-key")
		if err != nil {
			got = err.Error()
		}
		held <- got
	}()
	waitFor(t, func() bool { return b.calls.Load() > calls })

	// 1. SIGTERM with the log stalled: readiness and health flip anyway.
	logs.shut()
	cancel()
	waitFor(t, func() bool {
		return getStatus(t, "http://"+adminAddr+"/readyz") == 503 && healthStatus(conn) == "NOT_SERVING"
	})
	logs.open()

	// 2. The shutdown delay: asked for as configured, and while it lasts a
	// new connection is accepted and its Check answered.
	select {
	case d := <-delayAsked:
		if d != 7*time.Second {
			t.Errorf("shutdown delay = %v, want server.shutdown_delay 7s", d)
		}
	case <-time.After(patience):
		t.Fatal("serve did not wait out server.shutdown_delay")
	}
	during := dialGRPC(t, grpcAddr)
	if got, err := checkKey(during, "demo-pro-key"); got != "ok" || err != nil {
		t.Errorf("new connection during the shutdown delay: %q, %v; want ok", got, err)
	}
	if got := healthStatus(during); got != "NOT_SERVING" {
		t.Errorf("health during the shutdown delay = %s, want NOT_SERVING", got)
	}

	// 3. The delay over, the listener closes; the held Check is not done.
	delayEnded.Do(func() { close(endDelay) })
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", grpcAddr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case got := <-held:
		t.Fatalf("the held Check ended before its source answered: %q", got)
	case <-served:
		t.Fatalf("serve returned (%v) with a Check in flight", serveErr)
	default:
	}

	// 4. The source answers: the held Check gets its real answer, and
	// serve returns.
	holdReleased.Do(func() { close(hold) })
	if got := <-held; got != "ok" {
		t.Errorf("held Check = %q, want ok", got)
	}
	select {
	case <-served:
		if serveErr != nil {
			t.Errorf("serve = %v", serveErr)
		}
	case <-time.After(patience):
		t.Fatal("serve did not return after the last Check")
	}
	for _, want := range []string{`"msg":"draining"`, `"msg":"stopped"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
}
