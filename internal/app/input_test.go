package app

import (
	"context"
	"os"
	"path/filepath"
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

// Hostile or mistaken input through the served app: a Redis password, and
// bytes that are not UTF-8 or not a CheckRequest at all.

// TestRedisPasswordNeverLogged: a password given the documented way
// (password_env) appears in no log line, Redis up or down.
func TestRedisPasswordNeverLogged(t *testing.T) {
	const secret = "Hunter2-Redis-Secret-0042"
	rs := redistest.Start(t)
	dir := demoDir(t, "127.0.0.1:0")
	raw, err := os.ReadFile(filepath.Join(dir, "tollgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	source := func(block string) string {
		return strings.Replace(string(raw), "  source: file\n", "  source: "+block+"\n", 1)
	}
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
