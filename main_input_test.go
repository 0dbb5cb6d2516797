package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// Hostile or mistaken input, through the real commands: secrets written
// into addresses, a config written in place, bytes that are not UTF-8 or
// not a CheckRequest at all.

// runCommand runs tollgate with args until it exits, and returns its exit
// status, stdout and stderr. A serve that starts serving (when it should
// have refused its config) is stopped and reported.
func runCommand(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	exit := make(chan int, 1)
	go func() { exit <- run(ctx, args, strings.NewReader(""), &stdout, &stderr) }()
	deadline := time.After(time.Minute)
	for {
		select {
		case code := <-exit:
			return code, stdout.String(), stderr.String()
		case <-deadline:
		case <-time.After(10 * time.Millisecond):
			if !strings.Contains(stderr.String(), `"msg":"serving"`) {
				continue
			}
		}
		cancel()
		code := <-exit
		t.Errorf("tollgate %s ran instead of exiting (exit %d when stopped)", args[0], code)
		return code, stdout.String(), stderr.String()
	}
}

// TestSecretsInAddressesAreNeverPrinted: a password written into a Redis
// address, or credentials in the http source's URL, make serve, validate
// and check refuse the config with FILE:LINE: field: problem, and the
// secret appears in no output. A password given the documented way
// (password_env) appears in no log line either, Redis up or down.
func TestSecretsInAddressesAreNeverPrinted(t *testing.T) {
	const secret = "Hunter2-Redis-Secret-0042"
	rs := redistest.Start(t)
	dir := demoDir(t, "127.0.0.1:0")
	cfg := filepath.Join(dir, "tollgate.yaml")
	raw, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	source := func(block string) string {
		return strings.Replace(string(raw), "  source: file\n", "  source: "+block+"\n", 1)
	}
	refused := []struct {
		name  string
		conf  string
		field string
	}{
		{"redis source URL", source("redis\n  redis: {address: \"redis://:" + secret + "@" + rs.Addr() + "\"}"), "entitlements.redis.address"},
		{"redis source user and password", source("redis\n  redis: {address: \"default:" + secret + "@" + rs.Addr() + "\"}"), "entitlements.redis.address"},
		{"quota store URL", string(raw) + "\nquota_store:\n  store: redis\n  redis: {address: \"rediss://default:" + secret + "@" + rs.Addr() + "/0\"}\n", "quota_store.redis.address"},
		{"http source URL with a wrong scheme", source("http\n  http: {url: \"htp://alice:" + secret + "@billing.internal/v1\"}"), "entitlements.http.url"},
		{"http source URL", source("http\n  http: {url: \"https://alice:" + secret + "@billing.internal/v1\"}"), "entitlements.http.url"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tollgate.yaml")
			writeFile(t, path, strings.ReplaceAll(tt.conf, "path: entitlements.yaml", "path: "+filepath.Join(dir, "entitlements.yaml")))
			line := regexp.MustCompile(`tollgate: ` + regexp.QuoteMeta(path) + `:\d+: ` + regexp.QuoteMeta(tt.field) + `: `)
			for _, args := range [][]string{
				{"serve", "--config", path},
				{"validate", "--config", path},
				{"check", "--config", path, "--path", "/v1/search", "-H", "x-api-key: demo-free-key"},
			} {
				code, stdout, stderr := runCommand(t, args...)
				if code != 1 || !line.MatchString(stderr) {
					t.Errorf("%s: exit %d, stderr %q; want 1 and %s", args[0], code, stderr, line)
				}
				if out := stdout + stderr; strings.Contains(out, secret) || strings.Contains(out, "alice") {
					t.Errorf("%s prints the credentials: %q", args[0], out)
				}
			}
		})
	}

	t.Run("password_env", func(t *testing.T) {
		ctx := context.Background()
		if err := rs.Client().ConfigSet(ctx, "requirepass", secret).Err(); err != nil {
			t.Fatal(err)
		}
		t.Setenv("TOLLGATE_TEST_REDIS_PASSWORD", secret)
		down := redistest.Start(t)
		down.Kill()
		for _, tt := range []struct {
			name, addr, wantLog string
		}{
			{"redis up", rs.Addr(), `"msg":"serving"`},
			{"redis down", down.Addr(), "redis is not answering yet"},
		} {
			path := filepath.Join(t.TempDir(), "tollgate.yaml")
			writeFile(t, path, strings.ReplaceAll(source("redis\n  redis: {address: \""+tt.addr+"\", password_env: TOLLGATE_TEST_REDIS_PASSWORD, timeout: 150ms}")+
				"\nquota_store:\n  store: redis\n  redis: {address: \""+tt.addr+"\", password_env: TOLLGATE_TEST_REDIS_PASSWORD}\n",
				"    timeout: 50ms\n", "    timeout: 150ms\n"))
			s := startServe(t, path)
			s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})
			s.check(t, "POST", "/v1/chat", map[string]string{"x-api-key": "nope"})
			s.stop()
			if logs := s.logs.String(); !strings.Contains(logs, tt.wantLog) || strings.Contains(logs, secret) {
				t.Errorf("%s: want %q in the log, and never the password; log:\n%s", tt.name, tt.wantLog, logs)
			}
		}
	})
}

// rawCodec sends a []byte as it is, as a broken or hostile client can.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// TestMalformedCheckBytes sends the real server CheckRequests with bytes
// that are not UTF-8 where Envoy passes them through (header values and
// names, the path, raw header values): each gets a well-formed decision.
// Bytes that are not a CheckRequest get INVALID_ARGUMENT.
func TestMalformedCheckBytes(t *testing.T) {
	s := startServe(t, filepath.Join(demoDir(t, "127.0.0.1:0"), "tollgate.yaml"))
	field := func(num protowire.Number, b []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), b)
	}
	entry := func(k, v string) []byte { return append(field(1, []byte(k)), field(2, []byte(v))...) }
	// request is a CheckRequest for method and path with the given
	// HttpRequest fields (headers).
	request := func(method, path string, headers ...[]byte) []byte {
		http := slices.Concat(field(2, []byte(method)), field(4, []byte(path)), field(5, []byte("api.example.com")), slices.Concat(headers...))
		return field(1, field(4, field(2, http)))
	}
	header := func(k, v string) []byte { return field(3, entry(k, v)) }
	rawHeaders := func(kv ...string) []byte {
		var hm []byte
		for i := 0; i < len(kv); i += 2 {
			hm = append(hm, field(1, append(field(1, []byte(kv[i])), field(3, []byte(kv[i+1]))...))...)
		}
		return field(13, hm)
	}
	free := header("x-api-key", "demo-free-key")
	tests := []struct {
		name string
		b    []byte
		want string // the decision's code
	}{
		{"header value", request("GET", "/v1/search", free, header("x-note", "caf\xe9")), "ok"},
		{"header name", request("GET", "/v1/search", free, header("x-\xff", "v")), "ok"},
		{"path", request("GET", "/v1/search/\xc3\x28", free), "ok"},
		{"query", request("GET", "/v1/search?q=\xff\xfe", free), "ok"},
		{"method", request("G\xffT", "/v1/search", free), "route_not_allowed"},
		{"API key", request("GET", "/v1/search", header("x-api-key", "demo-free-key\xff")), "invalid_credentials"},
		{"raw header value", request("GET", "/v1/search", rawHeaders("x-api-key", "demo-free-key", "x-note", "\xfe\xff")), "ok"},
		{"raw API key", request("GET", "/v1/search", rawHeaders("x-api-key", "\xfe")), "invalid_credentials"},
		{"request id echoed", request("GET", "/nowhere", free, header("x-request-id", "r-\xff")), "route_not_allowed"},
		{"headers in both forms", request("GET", "/v1/search", free, header("x-note", "\xff"), rawHeaders("x-b", "c")), "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := new(authv3.CheckResponse)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := s.conn.Invoke(ctx, authv3.Authorization_Check_FullMethodName, tt.b, resp, grpc.ForceCodecV2(rawCodec{})); err != nil {
				t.Fatalf("gRPC error %v, want a decision", err)
			}
			if got := code(resp); got != tt.want {
				t.Errorf("code %s, want %s", got, tt.want)
			}
			if resp.GetStatus() == nil {
				t.Error("no status")
			}
		})
	}
	for _, b := range [][]byte{{0x0a, 0x05}, []byte("GET /v1/search HTTP/1.1\r\n\r\n"), {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := s.conn.Invoke(ctx, authv3.Authorization_Check_FullMethodName, b, new(authv3.CheckResponse), grpc.ForceCodecV2(rawCodec{}))
		cancel()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%q: %v, want INVALID_ARGUMENT", b, err)
		}
	}
	// The server still answers.
	if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})); got != "ok" {
		t.Errorf("after malformed input: %s", got)
	}
}
