package export

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// stripeMockVersion is the stripe-mock whose OpenAPI spec serves
// /v1/billing/meter_events and validates its parameters.
const stripeMockVersion = "github.com/stripe/stripe-mock@v0.203.0"

// lockedBuffer is a bytes.Buffer a process writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStripeMock sends the Stripe exporter's requests to stripe-mock,
// Stripe's mock of its API driven by its OpenAPI spec, which refuses a
// parameter the spec does not define, a missing required one, or a value
// of the wrong type. The module is built into a temporary directory; the
// test is skipped (saying why) when it cannot be fetched, and under -short.
func TestStripeMock(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: not building stripe-mock")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to build stripe-mock")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goBin, "install", stripeMockVersion)
	build.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("cannot build %s (module proxy unreachable?): %v\n%s", stripeMockVersion, err, out)
	}

	sock := filepath.Join(dir, "stripe-mock.sock")
	log := &lockedBuffer{}
	cmd := exec.Command(filepath.Join(dir, "stripe-mock"), "-http-unix", sock)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting stripe-mock: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	waitUntil(t, "stripe-mock listens", func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	// The control: stripe-mock refuses a form our exporter must not send,
	// so its yes below means something.
	post := func(form string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://localhost/v1/billing/meter_events", strings.NewReader(form))
		req.Header.Set("Authorization", "Bearer "+testStripeKey)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("stripe-mock: %v\n%s", err, log.String())
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, bad := range []string{
		"event_name=llm_tokens&payload%5Bvalue%5D=1&surprise=1", // unknown parameter
		"payload%5Bvalue%5D=1", // no event_name
		"event_name=llm_tokens&payload%5Bvalue%5D=1&timestamp=yesterday",
	} {
		if got := post(bad); got != http.StatusBadRequest {
			t.Fatalf("stripe-mock answered %d to %q, want 400: it does not validate meter events", got, bad)
		}
	}

	events := makeEvents("stripe-mock", 5)
	events[1].Customer = ""            // the subject is sent as the customer
	events[2].End = time.Time{}        // no timestamp
	events[3].Customer = "cus_a&b c/d" // escaped
	events[4].Units = 0
	s := NewStripe(StripeOptions{SecretKey: testStripeKey, APIBase: "http://localhost", HTTPClient: client, RatePerSecond: -1})
	if err := s.Export(context.Background(), events); err != nil {
		t.Fatalf("stripe-mock refused the exporter's requests: %v\n%s", err, log.String())
	}
}
