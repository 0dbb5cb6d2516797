// Package apptest holds what the tests of the CLI (package main) and of
// internal/app share: the demo config on free ports, file edits, and small
// gRPC and admin clients. It is imported by tests only.
package apptest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Patience bounds how long tests wait for a server to do something. It only
// limits a failing test; a passing one moves on as soon as the server acts.
// It is never compared with a measured time.
const Patience = 30 * time.Second

// SyncBuffer is a log sink that tests read while a server writes.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// Root is the repository's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// DemoDir copies the example config and entitlements to a temp dir, with
// gRPC on grpcAddr, the admin listener on a free port, and the watches
// (entitlements file, config, certificates) polling every 20ms.
func DemoDir(t *testing.T, grpcAddr string) string {
	t.Helper()
	dir := t.TempDir()
	cfg, err := os.ReadFile(filepath.Join(Root(), "examples", "tollgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(cfg), "grpc_address: 127.0.0.1:9191", "grpc_address: "+grpcAddr, 1)
	s = strings.Replace(s, "admin_address: 127.0.0.1:9090", "admin_address: 127.0.0.1:0", 1)
	s = strings.Replace(s, "poll_interval: 1s", "poll_interval: 20ms", 1)
	s += "\nadmin: {token_env: TOLLGATE_TEST_ADMIN_TOKEN}\nreload: {poll_interval: 20ms}\n"
	WriteFile(t, filepath.Join(dir, "tollgate.yaml"), s)
	ents, err := os.ReadFile(filepath.Join(Root(), "examples", "entitlements.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	WriteFile(t, filepath.Join(dir, "entitlements.yaml"), string(ents))
	return dir
}

// WriteFile writes data to path or fails the test.
func WriteFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// EditFile replaces the first old with new in the file at path; it fails
// the test if there is no old.
func EditFile(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %q", path, old)
	}
	WriteFile(t, path, strings.Replace(string(b), old, new, 1))
}

// WaitFor polls cond until it holds, failing the test after Patience.
func WaitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Code is the decision code a CheckResponse carries in its metadata.
func Code(resp *authv3.CheckResponse) string {
	return resp.GetDynamicMetadata().GetFields()["code"].GetStringValue()
}

// DialGRPC connects to a plaintext gRPC address (host:port, or unix:path).
func DialGRPC(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		addr = "unix:" + p
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// CheckKey sends one Check for GET /v1/search with an API key and returns
// the decision's code, or the gRPC error. It is safe from any goroutine.
func CheckKey(conn *grpc.ClientConn, key string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Patience)
	defer cancel()
	h := map[string]string{":method": "GET", ":path": "/v1/search", ":authority": "api.example.com", "x-api-key": key}
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/v1/search", Host: "api.example.com", Headers: h,
		}},
	}})
	if err != nil {
		return "", err
	}
	return Code(resp), nil
}

// Get fetches url and returns its status and body.
func Get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// MetricValue is the value of one series ("name{labels}") in the admin
// listener's /metrics, or "" when it is not there.
func MetricValue(t *testing.T, adminAddr, series string) string {
	t.Helper()
	_, m := Get(t, "http://"+adminAddr+"/metrics")
	for _, line := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}
