package authz_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
)

// envoyShaped is a CheckRequest as Envoy sends it: peers, time, the HTTP
// request with its headers, context extensions and metadata.
func envoyShaped() *authv3.CheckRequest {
	sock := func(a string, p uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: a, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p},
		}}}
	}
	cr := req("GET", "/v1/search?q=tolls", map[string]string{
		"x-api-key": "demo-free-key", "x-request-id": "7b8c1e0a-5f8e-4d8e-9a51-3c5b2b1f0a11",
		"user-agent": "curl/8.5.0", "accept": "*/*", "x-forwarded-proto": "http", ":scheme": "http",
	})
	a := cr.Attributes
	a.Source = &authv3.AttributeContext_Peer{Address: sock("10.0.0.7", 51234), Principal: "spiffe://example.org/client"}
	a.Destination = &authv3.AttributeContext_Peer{Address: sock("10.0.0.2", 8080)}
	a.Request.Time = timestamppb.New(time.Date(2026, 11, 24, 12, 0, 0, 5, time.UTC))
	h := a.Request.Http
	h.Id, h.Scheme, h.Protocol, h.Size = "1234567890", "http", "HTTP/1.1", 42
	a.ContextExtensions = map[string]string{"virtual_host": "api", "tier": "beta"}
	a.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		authz.JWTNamespace: {Fields: map[string]*structpb.Value{"jwt_payload": structpb.NewStructValue(&structpb.Struct{
			Fields: map[string]*structpb.Value{"sub": structpb.NewStringValue("acme")},
		})}},
	}}
	return cr
}

// pipePeer has a Unix-socket peer, as with a pipe listener.
func pipePeer() *authv3.CheckRequest {
	cr := req("GET", "/", nil)
	cr.Attributes.Source = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/x.sock"}}}}
	return cr
}

// withRaw moves the headers to header_map, as encode_raw_headers: true does.
func withRaw(cr *authv3.CheckRequest) *authv3.CheckRequest {
	cr = proto.Clone(cr).(*authv3.CheckRequest)
	h := cr.Attributes.Request.Http
	h.HeaderMap = &corev3.HeaderMap{}
	for k, v := range h.Headers {
		h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: "x-empty"}, &corev3.HeaderValue{Key: "x-old", Value: "v"})
	h.Headers = nil
	return cr
}

// noJWT is cr without JWT metadata, as Envoy sends it when jwt_authn does not run.
func noJWT(cr *authv3.CheckRequest) *authv3.CheckRequest {
	cr.Attributes.MetadataContext = &corev3.Metadata{}
	return cr
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wire helpers for hand-made inputs.
func tagged(num protowire.Number, typ protowire.Type, v []byte) []byte {
	return append(protowire.AppendTag(nil, num, typ), v...)
}

func lenField(num protowire.Number, payload []byte) []byte {
	return tagged(num, protowire.BytesType, protowire.AppendBytes(nil, payload))
}

// inHTTP wraps HttpRequest bytes into a whole CheckRequest.
func inHTTP(http []byte) []byte {
	return lenField(1, lenField(4, lenField(2, http)))
}

// wireCase is a CheckRequest on the wire, named for what it tries.
type wireCase struct {
	name string
	b    []byte
}

// decodeCases are Envoy's requests and edge cases of the wire format.
func decodeCases(t testing.TB) []wireCase {
	shaped := envoyShaped()
	withUnknown := marshal(t, shaped)
	withUnknown = append(withUnknown, tagged(99, protowire.VarintType, protowire.AppendVarint(nil, 7))...)
	return []wireCase{
		{"empty", nil},
		{"envoy shaped", marshal(t, shaped)},
		{"raw headers", marshal(t, withRaw(shaped))},
		{"fixture", marshal(t, fixture(t, "free_search_headers.json"))},
		{"raw fixture", marshal(t, fixture(t, "free_search_header_map.json"))},
		{"jwt fixture", marshal(t, fixture(t, "jwt_claim.json"))},
		{"unknown top-level field", withUnknown},
		{"unknown field in http", inHTTP(tagged(77, protowire.Fixed32Type, []byte{1, 2, 3, 4}))},
		{"body and query go to the runtime", inHTTP(append(lenField(11, []byte("{}")), lenField(7, []byte("q=1"))...))},
		{"http twice merges", append(inHTTP(lenField(2, []byte("GET"))), inHTTP(lenField(4, []byte("/x")))...)},
		{"repeated scalar: last wins", inHTTP(append(lenField(4, []byte("/a")), lenField(4, []byte("/b"))...))},
		{"duplicate header key: last wins", inHTTP(append(lenField(3, append(lenField(1, []byte("k")), lenField(2, []byte("1"))...)), lenField(3, append(lenField(1, []byte("k")), lenField(2, []byte("2"))...))...))},
		{"header entry without key", inHTTP(lenField(3, lenField(2, []byte("v"))))},
		{"header entry with an extra field", inHTTP(lenField(3, append(lenField(1, []byte("k")), tagged(3, protowire.VarintType, []byte{1})...)))},
		{"invalid UTF-8 in a header", inHTTP(lenField(3, append(lenField(1, []byte("k")), lenField(2, []byte{0xff})...)))},
		{"invalid UTF-8 in the path", inHTTP(lenField(4, []byte{'/', 0xfe}))},
		{"path as a varint", inHTTP(tagged(4, protowire.VarintType, []byte{5}))},
		{"size as bytes", inHTTP(lenField(9, []byte("x")))},
		{"attributes as a varint", tagged(1, protowire.VarintType, []byte{1})},
		{"truncated", marshal(t, shaped)[:40]},
		{"bad tag", []byte{0x00}},
		{"raw_value empty", inHTTP(lenField(13, lenField(1, append(lenField(1, []byte("k")), lenField(3, nil)...))))},
		{"time with unknown field", lenField(1, lenField(4, lenField(1, tagged(5, protowire.VarintType, []byte{1}))))},
		{"negative size", inHTTP(tagged(9, protowire.VarintType, protowire.AppendVarint(nil, ^uint64(0))))},
		{"group in http", inHTTP(append(tagged(20, protowire.StartGroupType, nil), tagged(20, protowire.EndGroupType, nil)...))},
		{"stray end group", inHTTP(tagged(20, protowire.EndGroupType, nil))},
		{"pipe peer", marshal(t, pipePeer())},
		{"socket then pipe", append(marshal(t, envoyShaped()), marshal(t, pipePeer())...)},
		{"named port", lenField(1, lenField(1, lenField(1, lenField(1, lenField(4, []byte("http"))))))},
		{"port twice", lenField(1, lenField(1, lenField(1, lenField(1, append(tagged(3, protowire.VarintType, []byte{1}), tagged(3, protowire.VarintType, []byte{2})...)))))},
		{"peer labels and unknown field", lenField(1, lenField(2, append(lenField(3, append(lenField(1, []byte("k")), lenField(2, []byte("v"))...)), tagged(9, protowire.VarintType, []byte{1})...)))},
		{"socket address extras", lenField(1, lenField(1, lenField(1, lenField(1, append(lenField(5, []byte("r")), tagged(6, protowire.VarintType, []byte{1})...)))))},
	}
}

// TestCodecRoundTrip: whatever the codec encodes (with vtprotobuf's methods
// under -tags vtprotobuf, or the runtime without), the runtime decodes to
// the same message; and the codec decodes what the runtime encodes.
func TestCodecRoundTrip(t *testing.T) {
	srv, _ := demo(t, nil)
	var c authz.Codec
	for _, cr := range []*authv3.CheckRequest{
		req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "x-tollgate-plan": "x"}),
		req("POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key", "x-request-id": "r1"}),
		req("GET", "/v1/search", nil),
		envoyShaped(),
	} {
		resp, err := srv.Check(context.Background(), cr)
		if err != nil {
			t.Fatal(err)
		}
		data, err := c.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		var got authv3.CheckResponse
		if err := proto.Unmarshal(data.Materialize(), &got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&got, resp) {
			t.Errorf("round trip:\n%v\nwant\n%v", &got, resp)
		}
		var back authv3.CheckRequest
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(marshal(t, cr))}, &back); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&back, cr) {
			t.Errorf("request round trip:\n%v\nwant\n%v", &back, cr)
		}
	}
	// Other messages go to the standard codec.
	st := &structpb.Struct{Fields: map[string]*structpb.Value{"a": structpb.NewBoolValue(true)}}
	data, err := c.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data.Materialize(), marshal(t, st)) {
		t.Error("a Struct is not encoded as the runtime encodes it")
	}
	if c.Name() != "proto" {
		t.Errorf("name %q", c.Name())
	}
}

// BenchmarkDecodeCheckRequest compares the runtime and the decoding to a
// Request (through Codec, into a Request
// reused as Register's pool reuses it) on an Envoy-shaped request, with
// headers and with raw headers.
func BenchmarkDecodeCheckRequest(b *testing.B) {
	for _, in := range []struct {
		name string
		cr   *authv3.CheckRequest
	}{{"headers", envoyShaped()}, {"header_map", withRaw(envoyShaped())}, {"headers_no_jwt", noJWT(envoyShaped())}} {
		data := marshal(b, in.cr)
		run := func(name string, decode func() error) {
			b.Run(in.name+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					if err := decode(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		run("proto", func() error { return proto.Unmarshal(data, new(authv3.CheckRequest)) })
		q, bufs := new(authz.Request), mem.BufferSlice{mem.SliceBuffer(data)}
		run("view", func() error { return authz.Codec{}.Unmarshal(bufs, q) })
	}
}

// BenchmarkMarshalCheckResponse is the codec encoding an allow with quota
// headers and metadata (vtprotobuf's methods under -tags vtprotobuf).
func BenchmarkMarshalCheckResponse(b *testing.B) {
	srv := benchQuotaServer(b, cache.Options{})
	resp, _ := srv.Check(context.Background(), envoyReq("GET", "/v1/search?q=x", "key-1"))
	var c authz.Codec
	b.ReportAllocs()
	for b.Loop() {
		data, err := c.Marshal(resp)
		if err != nil {
			b.Fatal(err)
		}
		data.Free()
	}
}

// TestCheckOverGRPC serves Check as serve does (Codec, an interceptor
// that may shed), registered either way, and gets over the wire what the
// handler returns, or what Shed returns when the interceptor sheds; bytes
// that are not a CheckRequest get INVALID_ARGUMENT from Register's handler
// (INTERNAL, grpc-go's answer to a codec error, from the generated one).
func TestCheckOverGRPC(t *testing.T) {
	srv, _ := demo(t, nil)
	for _, reg := range registrations {
		t.Run(reg.name, func(t *testing.T) {
			var shed atomic.Bool
			seen := make(chan string, 1)
			intercept := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				seen <- fmt.Sprintf("%T %s", req, info.FullMethod)
				if !shed.Load() {
					return handler(ctx, req)
				}
				resp, _ := srv.Shed(req)
				return resp, nil
			}
			gs := grpc.NewServer(grpc.ForceServerCodecV2(authz.Codec{}), grpc.UnaryInterceptor(intercept))
			reg.register(gs, srv)
			cc := dialBufconn(t, gs)
			client := authv3.NewAuthorizationClient(cc)
			for _, tt := range []struct {
				cr   *authv3.CheckRequest
				shed bool
			}{
				{envoyShaped(), false},
				{withRaw(envoyShaped()), false},
				{req("POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key", "x-request-id": "r1"}), false},
				{req("GET", "/nowhere", nil), false},
				{req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "x-request-id": "r2"}), true},
			} {
				shed.Store(tt.shed)
				got, err := client.Check(context.Background(), tt.cr)
				if err != nil {
					t.Fatal(err)
				}
				want, _ := srv.Check(context.Background(), tt.cr)
				if tt.shed {
					want, _ = srv.Shed(tt.cr)
				}
				if got, want := sortedRemovals(got), sortedRemovals(want); !proto.Equal(got, want) {
					t.Errorf("over gRPC:\n%v\nwant\n%v", got, want)
				}
				if got, want := <-seen, reg.req+" "+authv3.Authorization_Check_FullMethodName; got != want {
					t.Errorf("interceptor saw %s, want %s", got, want)
				}
			}
			err := cc.Invoke(context.Background(), authv3.Authorization_Check_FullMethodName, []byte{0x0a, 0x05}, new(authv3.CheckResponse), grpc.ForceCodecV2(rawCodec{}))
			if got := status.Code(err); got != reg.notCheckRequest {
				t.Errorf("truncated request: %v, want %v", err, reg.notCheckRequest)
			}
			// Invalid UTF-8 where Envoy may send it gets a decision.
			shed.Store(false)
			for _, tt := range []struct {
				name string
				b    []byte
				want string
			}{
				{"header value", attrs(httpFields(mapHeader("x-api-key", "demo-free-key"), mapHeader("x-note", "caf\xe9"))), "ok"},
				{"path", attrs(lenField(4, lenField(2, slices.Concat(lenField(2, []byte("GET")), lenField(4, []byte("/v1/search?q=\xff")), mapHeader("x-api-key", "demo-free-key"))))), "ok"},
				{"API key", attrs(httpFields(mapHeader("x-api-key", "demo-free-key\xff"))), "invalid_credentials"},
				{"raw value", attrs(httpFields(headerMap(append(entry("x-api-key", ""), lenField(3, []byte("\xfe"))...)))), "invalid_credentials"},
			} {
				got := new(authv3.CheckResponse)
				err := cc.Invoke(context.Background(), authv3.Authorization_Check_FullMethodName, tt.b, got, grpc.ForceCodecV2(rawCodec{}))
				select { // the interceptor's report, if it ran, is not checked here
				case <-seen:
				default:
				}
				if err != nil {
					t.Errorf("invalid UTF-8 in the %s: %v, want a decision", tt.name, err)
					continue
				}
				if c := got.GetDynamicMetadata().GetFields()["code"].GetStringValue(); c != tt.want {
					t.Errorf("invalid UTF-8 in the %s: %s, want %s", tt.name, c, tt.want)
				}
			}
		})
	}
}

// rawCodec sends a []byte as it is: a client that sends what it likes.
type rawCodec struct{ authz.Codec }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.([]byte); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.Codec.Marshal(v)
}

// TestEncodedIsSentOnce: Register's handler answers with the encoded
// response, which Codec hands to grpc-go once; a second Marshal (which
// would give grpc-go buffers it already freed) is an error.
func TestEncodedIsSentOnce(t *testing.T) {
	srv, _ := demo(t, nil)
	var reg registrar
	authz.Register(&reg, srv)
	b := marshal(t, req("GET", "/v1/search", map[string]string{"x-api-key": "sk_live_acme"}))
	dec := func(v any) error { return authz.Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, v) }
	resp, err := reg.desc.Methods[0].Handler(reg.impl, context.Background(), dec, nil)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := resp.(*authz.Encoded)
	if !ok {
		t.Fatalf("the handler answered a %T, want *authz.Encoded", resp)
	}
	want := e.Bytes()
	var m authv3.CheckResponse
	if err := proto.Unmarshal(want, &m); err != nil || m.GetStatus() == nil || m.GetDeniedResponse().GetBody() == "" {
		t.Fatalf("Bytes = %v (%v), want an encoded refusal", &m, err)
	}
	got, err := authz.Codec{}.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Materialize(), want) {
		t.Errorf("Marshal gave other bytes than Bytes")
	}
	if _, err := (authz.Codec{}).Marshal(e); err == nil {
		t.Errorf("a second Marshal succeeded, want an error")
	}
	if b := e.Bytes(); b != nil {
		t.Errorf("Bytes after sending = %d bytes, want nil", len(b))
	}
	got.Free()
}

// dialBufconn serves gs on an in-memory listener and returns a client
// connection to it; both stop when the test ends.
func dialBufconn(t testing.TB, gs *grpc.Server) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
