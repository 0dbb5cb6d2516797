package authz_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/authz"
)

// lastResult is an Observer that keeps the last Result it is told.
type lastResult struct{ res authz.Result }

func (o *lastResult) ObserveCheck(r *authz.Result) { o.res = *r }
func (*lastResult) ObserveQuota(string, string)    {}

// registrations are the two ways to serve Check: authv3's generated
// handler, with the message, and Register's, with the view.
var registrations = []struct {
	name     string
	register func(grpc.ServiceRegistrar, *authz.Server)
	req      string // the type interceptors see
	// notCheckRequest is the answer to bytes that are not a CheckRequest.
	notCheckRequest codes.Code
}{
	{"message", func(r grpc.ServiceRegistrar, s *authz.Server) { authv3.RegisterAuthorizationServer(r, s) }, "*authv3.CheckRequest", codes.Internal},
	{"view", authz.Register, "*authz.Request", codes.InvalidArgument},
}

// registrar keeps the service registered on it, to call its Check handler
// as a grpc.Server would.
type registrar struct {
	desc *grpc.ServiceDesc
	impl any
}

func (r *registrar) RegisterService(d *grpc.ServiceDesc, impl any) { r.desc, r.impl = d, impl }

// check runs the Check handler on b, decoded by Codec as grpc-go decodes
// it. grpc-go then frees its buffer, so the request must not point into
// it: check clears it.
func (r *registrar) check(ctx context.Context, b []byte) (*authv3.CheckResponse, error) {
	dec := func(v any) error {
		buf := bytes.Clone(b)
		err := authz.Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(buf)}, v)
		clear(buf)
		return err
	}
	resp, err := r.desc.Methods[0].Handler(r.impl, ctx, dec, nil)
	if err != nil {
		return nil, err
	}
	return decodeAnswer(resp)
}

// decodeAnswer is the message a Check handler's answer encodes: Register's
// handler returns it encoded (*authz.Encoded), the generated one as it is.
func decodeAnswer(resp any) (*authv3.CheckResponse, error) {
	switch resp := resp.(type) {
	case *authv3.CheckResponse:
		return resp, nil
	case *authz.Encoded:
		m := new(authv3.CheckResponse)
		if err := proto.Unmarshal(resp.Bytes(), m); err != nil {
			return nil, err
		}
		return m, nil
	}
	return nil, fmt.Errorf("the handler answered a %T", resp)
}

// twoWays decides each request twice, on two servers built alike from
// testdata/wire.yaml: from the wire, as Register serves it, and from the
// message lenientUnmarshal makes (proto.Unmarshal's, with invalid UTF-8
// replaced), as Decide does. Both servers see the same
// Checks in the same order, so their caches and quotas agree.
type twoWays struct {
	wire  registrar
	seen  lastResult // the wire server's Results
	proto *authz.Server
}

func newTwoWays(t testing.TB) *twoWays {
	w := new(twoWays)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	authz.Register(&w.wire, serverFrom(t, "testdata/wire.yaml", nil, authz.Deps{Observer: &w.seen, Log: log}))
	w.proto = serverFrom(t, "testdata/wire.yaml", nil, authz.Deps{Log: log})
	return w
}

// check fails unless deciding b from the wire gives what lenientUnmarshal
// and Decide give: INVALID_ARGUMENT for the bytes lenientUnmarshal
// refuses, else the same response and the same Result. Every response can
// be sent: its strings are valid UTF-8.
func (w *twoWays) check(t *testing.T, b []byte) {
	t.Helper()
	ctx := context.Background()
	var cr authv3.CheckRequest
	werr := authz.LenientUnmarshal(b, &cr)
	w.seen = lastResult{}
	got, err := w.wire.check(ctx, b)
	if werr != nil {
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), werr.Error()) {
			t.Fatalf("error = %v, want INVALID_ARGUMENT with lenientUnmarshal's %v", err, werr)
		}
		return
	}
	if err != nil {
		t.Fatalf("error = %v, want a decision", err)
	}
	if _, err := proto.Marshal(got); err != nil {
		t.Fatalf("the response cannot be sent: %v", err)
	}
	want, res := w.proto.Decide(ctx, &cr)
	if got, want := sortedRemovals(got), sortedRemovals(want); !proto.Equal(got, want) {
		t.Fatalf("from the wire\n%v\nfrom the message\n%v", got, want)
	}
	if w.seen.res != res {
		t.Fatalf("Result from the wire\n%+v\nfrom the message\n%+v", w.seen.res, res)
	}
}

// sortedRemovals is resp with its headers_to_remove in order: from a
// headers map they come in the map's order, which is random.
func sortedRemovals(resp *authv3.CheckResponse) *authv3.CheckResponse {
	if slices.IsSorted(resp.GetOkResponse().GetHeadersToRemove()) {
		return resp
	}
	resp = proto.Clone(resp).(*authv3.CheckResponse)
	slices.Sort(resp.GetOkResponse().HeadersToRemove)
	return resp
}

// Wire-format pieces of a CheckRequest, for hand-made requests.

// entry is a map<string, string> entry, or a HeaderValue's key and value.
func entry(k, v string) []byte { return entry2(k, []byte(v)) }

// mapHeader is an entry of HttpRequest.headers.
func mapHeader(k, v string) []byte { return lenField(3, entry(k, v)) }

// headerMap is HttpRequest.header_map with the given HeaderValues.
func headerMap(values ...[]byte) []byte {
	var b []byte
	for _, v := range values {
		b = append(b, lenField(1, v)...)
	}
	return lenField(13, b)
}

// attrs wraps AttributeContext fields into a whole CheckRequest.
func attrs(fields ...[]byte) []byte { return lenField(1, slices.Concat(fields...)) }

// httpFields is an AttributeContext's request: a GET /v1/search to
// api.example.com, and fields added to its HttpRequest.
func httpFields(fields ...[]byte) []byte {
	return lenField(4, lenField(2, slices.Concat(lenField(2, []byte("GET")), lenField(4, []byte("/v1/search")),
		lenField(5, []byte("api.example.com")), slices.Concat(fields...))))
}

// jwtMetadata is a metadata_context with a jwt_authn payload whose sub is sub.
func jwtMetadata(sub string) []byte {
	payload := lenField(5, lenField(1, entry2("sub", lenField(3, []byte(sub))))) // a Struct value {"sub": sub}
	return lenField(11, lenField(1, entry2(authz.JWTNamespace, lenField(1, entry2("jwt_payload", payload)))))
}

// entry2 is a map entry whose value is v's bytes: a string or a message.
func entry2(k string, v []byte) []byte { return append(lenField(1, []byte(k)), lenField(2, v)...) }

// nested is a Struct n messages deep: a Struct, a map entry, a Value, a
// Struct, and so on, each holding the next, the innermost empty. It is
// written back to front, each message's tag and length before its contents.
func nested(n int) []byte {
	var rev []byte
	prepend := func(b []byte) {
		for i := len(b) - 1; i >= 0; i-- {
			rev = append(rev, b[i])
		}
	}
	for level := n - 2; level >= 0; level-- {
		num := protowire.Number(1) // Struct.fields
		switch level % 3 {
		case 1: // the entry's value
			num = 2
		case 2: // Value.struct_value
			num = 5
		}
		prepend(protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.BytesType), uint64(len(rev))))
		if level%3 == 1 {
			prepend(lenField(1, []byte("a"))) // the entry's key
		}
	}
	slices.Reverse(rev)
	return rev
}

// metadataAt is a Metadata field (AttributeContext field num) holding
// nested(n) under the jwt_authn namespace.
func metadataAt(num protowire.Number, n int) []byte {
	return lenField(num, lenField(1, entry2(authz.JWTNamespace, nested(n))))
}

// deepest is the deepest nesting in metadata (field num) that
// proto.Unmarshal accepts.
func deepest(t testing.TB, num protowire.Number) int {
	lo, hi := 1, 12000 // proto.Unmarshal refuses hi: the recursion limit is 10,000
	if proto.Unmarshal(attrs(metadataAt(num, hi)), new(authv3.CheckRequest)) == nil {
		t.Fatalf("nesting %d is accepted", hi)
	}
	for lo+1 < hi {
		mid := (lo + hi) / 2
		if proto.Unmarshal(attrs(metadataAt(num, mid)), new(authv3.CheckRequest)) == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

// viewCases are requests that exercise each part of a CheckRequest the
// server reads, with the decisions of testdata/wire.yaml.
func viewCases(t testing.TB) []wireCase {
	get := func(headers map[string]string) *authv3.CheckRequest { return req("GET", "/v1/search", headers) }
	principal := get(nil)
	principal.Attributes.Source = &authv3.AttributeContext_Peer{Principal: "acme"}
	chat := req("POST", "/v1/chat", map[string]string{"authorization": "Bearer demo-pro-key", "x-request-id": "r-chat"})
	chat.Attributes.ContextExtensions = map[string]string{"tokens": "250"}
	beta := get(map[string]string{"x-api-key": "demo-free-key"})
	beta.Attributes.Request.Http.Host = "beta.example.com"
	beta.Attributes.ContextExtensions = map[string]string{"tier": "beta"}
	jwt := get(nil)
	jwt.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		authz.JWTNamespace: {Fields: map[string]*structpb.Value{"jwt_payload": structpb.NewStructValue(&structpb.Struct{
			Fields: map[string]*structpb.Value{"sub": structpb.NewStringValue("acme")},
		})}},
	}}
	free := mapHeader("x-api-key", "demo-free-key")
	many := [][]byte{free}
	for i := range 128 {
		many = append(many, mapHeader(fmt.Sprintf("x-h-%d", i), "v"))
	}
	raw := func(name, value string) []byte {
		return append(lenField(1, []byte(name)), lenField(3, []byte(value))...)
	} // a raw HeaderValue
	jwtDepth, routeDepth := deepest(t, 11), deepest(t, 13)
	return []wireCase{
		{"free key", marshal(t, get(map[string]string{"x-api-key": "demo-free-key", "x-cost": "3", "x-request-id": "r1"}))},
		{"pro key, raw headers", marshal(t, rawReq("GET", "/v1/search", map[string]string{"x-api-key": "demo-pro-key", "x-tollgate-plan": "free"}))},
		{"unknown key", marshal(t, get(map[string]string{"x-api-key": "nope"}))},
		{"no credentials", marshal(t, get(nil))},
		{"public route", marshal(t, req("GET", "/healthz", nil))},
		{"envoy shaped", marshal(t, envoyShaped())},
		{"envoy shaped, raw headers", marshal(t, withRaw(envoyShaped()))},
		{"gRPC client denied", marshal(t, get(map[string]string{"content-type": "application/grpc", "x-api-key": "nope"}))},
		{"principal", marshal(t, principal)},
		{"trusted header", marshal(t, get(map[string]string{"x-subject": "bigco"}))},
		{"bearer and context extension cost", marshal(t, chat)},
		{"context extension route", marshal(t, beta)},
		{"jwt", marshal(t, jwt)},
		{"jwt metadata twice", attrs(httpFields(), jwtMetadata("nobody"), jwtMetadata("acme"))},
		{"jwt metadata empty", attrs(httpFields(), lenField(11, nil))},
		{"jwt metadata truncated", attrs(httpFields(), lenField(11, jwtMetadata("acme")[:20]))},
		{"jwt metadata at the recursion limit", attrs(httpFields(), metadataAt(11, jwtDepth))},
		{"jwt metadata past the recursion limit", attrs(httpFields(), metadataAt(11, jwtDepth+1))},
		{"route metadata deep", attrs(httpFields(free), metadataAt(13, 500))},
		{"route metadata at the recursion limit", attrs(httpFields(free), metadataAt(13, routeDepth))},
		{"route metadata past the recursion limit", attrs(httpFields(free), metadataAt(13, routeDepth+1))},
		{"map header twice, last wins", attrs(httpFields(mapHeader("x-api-key", "nope"), free))},
		{"map header twice, last loses", attrs(httpFields(free, mapHeader("x-api-key", "nope")))},
		{"prefixed map headers twice", attrs(httpFields(free, mapHeader("x-tollgate-plan", "a"), mapHeader("x-tollgate-admin", "1"), mapHeader("x-tollgate-plan", "b")))},
		{"map header with an empty name", attrs(httpFields(free, mapHeader("", "v")))},
		{"many map headers", attrs(httpFields(many...))},
		{"raw header names in any case", attrs(httpFields(headerMap(raw("X-Api-Key", "demo-free-key"), raw("x-api-key", "nope"), raw("X-Tollgate-Plan", "x"))))},
		{"raw header with a value", attrs(httpFields(headerMap(entry("x-api-key", "demo-free-key"))))},
		{"raw value over value", attrs(httpFields(headerMap(append(entry("x-api-key", "nope"), lenField(3, []byte("demo-pro-key"))...))))},
		{"raw value empty, then value", attrs(httpFields(headerMap(slices.Concat(lenField(3, []byte("nope")), lenField(3, nil), lenField(2, []byte("demo-free-key")), lenField(1, []byte("x-api-key"))))))},
		{"raw value not UTF-8", attrs(httpFields(headerMap(raw("x-api-key", "\xff\xfe"), raw("x-request-id", "\xc3"))))},
		{"header_map twice", attrs(httpFields(headerMap(raw("x-request-id", "r")), headerMap(raw("x-api-key", "demo-free-key"))))},
		{"headers and header_map", attrs(httpFields(mapHeader("x-api-key", "nope"), headerMap(raw("x-api-key", "demo-free-key"))))},
		{"header_map then headers", attrs(httpFields(headerMap(raw("x-api-key", "demo-free-key")), mapHeader("x-api-key", "nope")))},
		{"empty header_map and headers", attrs(httpFields(lenField(13, nil), free))},
		{"http twice", append(attrs(httpFields(free)), attrs(lenField(4, lenField(2, lenField(4, []byte("/v1/chat")))))...)},
		{"source twice", attrs(httpFields(), lenField(1, lenField(4, []byte("acme"))), lenField(1, lenField(2, []byte("svc"))))},
		{"context extension twice", attrs(httpFields(free), lenField(10, entry("tier", "beta")), lenField(10, entry("tier", "ga")))},
		{"invalid UTF-8 in the principal", attrs(httpFields(), lenField(1, lenField(4, []byte{0xff})))},
		{"invalid UTF-8 in a context extension", attrs(httpFields(free), lenField(10, entry("tier", "\xff")))},
		{"invalid UTF-8 in the destination", attrs(httpFields(free), lenField(2, lenField(2, []byte{0xff})))},
		{"invalid UTF-8 in the query", attrs(httpFields(free, lenField(7, []byte{0xfe})))},
		{"invalid UTF-8 in a header name", attrs(httpFields(mapHeader("x-\xff", "v"), free))},
		{"invalid UTF-8 in a header value", attrs(httpFields(mapHeader("x-note", "caf\xe9"), free))},
		{"invalid UTF-8 in the API key", attrs(httpFields(mapHeader("x-api-key", "demo-free-key\xff")))},
		{"invalid UTF-8 in the path", attrs(lenField(4, lenField(2, slices.Concat(lenField(2, []byte("GET")), lenField(4, []byte("/v1/search/\xc3\x28")), free))))},
		{"invalid UTF-8 in the method", attrs(lenField(4, lenField(2, slices.Concat(lenField(2, []byte("G\xffT")), lenField(4, []byte("/v1/search")), free))))},
		{"invalid UTF-8 in a JWT claim", attrs(httpFields(), jwtMetadata("ac\xffme"))},
		{"invalid UTF-8 and headers in both", attrs(httpFields(mapHeader("x-api-key", "demo-free-key"), mapHeader("x-note", "\xfe"), headerMap(raw("x-b", "c"))))},
		{"invalid UTF-8 and a method as fixed64", attrs(httpFields(free, mapHeader("x-note", "\xfe"), tagged(2, protowire.Fixed64Type, make([]byte, 8))))},
		{"invalid UTF-8 in a raw value and a header name", attrs(httpFields(headerMap(raw("x-api-key", "demo-free-key"), raw("x-\xff", "\xfe\xff"))))},
		{"destination as a varint", attrs(httpFields(free), tagged(2, protowire.VarintType, []byte{1}))},
		{"time seconds as bytes", attrs(lenField(4, lenField(1, lenField(1, []byte("x")))), httpFields(free))},
		{"principal as a varint", attrs(httpFields(free), lenField(1, tagged(4, protowire.VarintType, []byte{1})))},
		{"method as fixed64", attrs(httpFields(free, tagged(2, protowire.Fixed64Type, make([]byte, 8))))},
		{"unknown fields everywhere", slices.Concat(tagged(99, protowire.VarintType, []byte{1}), attrs(
			tagged(99, protowire.Fixed32Type, make([]byte, 4)), lenField(1, tagged(99, protowire.VarintType, []byte{1})),
			lenField(4, tagged(99, protowire.VarintType, []byte{1})),
			httpFields(free, tagged(99, protowire.VarintType, []byte{1}), lenField(3, append(entry("x-a", "b"), tagged(3, protowire.VarintType, []byte{1})...)),
				lenField(13, append(tagged(9, protowire.VarintType, []byte{1}), lenField(1, append(entry("x-b", "c"), tagged(9, protowire.VarintType, []byte{1})...))...))),
			lenField(10, append(entry("k", "v"), tagged(5, protowire.VarintType, []byte{1})...))))},
		{"group in a skipped message", attrs(httpFields(free), lenField(2, append(tagged(9, protowire.StartGroupType, nil), tagged(9, protowire.EndGroupType, nil)...)))},
	}
}

// maxSeed leaves the nesting cases (tens of kB each) to the test: as fuzz
// seeds they would have the fuzzer minimize large inputs most of the time.
const maxSeed = 4096

func TestCheckFromWireMatchesProto(t *testing.T) {
	w := newTwoWays(t)
	for _, tt := range slices.Concat(viewCases(t), decodeCases(t)) {
		t.Run(tt.name, func(t *testing.T) { w.check(t, tt.b) })
	}
	shaped := marshal(t, envoyShaped())
	for n := range len(shaped) {
		t.Run(fmt.Sprintf("truncated to %d bytes", n), func(t *testing.T) { w.check(t, shaped[:n]) })
	}
}

// FuzzCheckFromWire holds the decisions Register's handler makes from the
// wire to those made from proto.Unmarshal's message, for any bytes.
func FuzzCheckFromWire(f *testing.F) {
	for _, c := range slices.Concat(viewCases(f), decodeCases(f)) {
		if len(c.b) <= maxSeed {
			f.Add(c.b)
		}
	}
	w := newTwoWays(f)
	f.Fuzz(func(t *testing.T, b []byte) { w.check(t, b) })
}

// TestDecodeAllocations: without JWT metadata or context extensions, a
// Request decodes in one allocation, the copy of the bytes.
func TestDecodeAllocations(t *testing.T) {
	for _, tt := range []struct {
		name string
		cr   *authv3.CheckRequest
	}{
		{"headers", harnessShaped()},
		{"header_map", withRaw(harnessShaped())},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := mem.BufferSlice{mem.SliceBuffer(marshal(t, tt.cr))}
			q := new(authz.Request)
			got := testing.AllocsPerRun(100, func() {
				if err := (authz.Codec{}).Unmarshal(data, q); err != nil {
					t.Fatal(err)
				}
			})
			if got != 1 {
				t.Errorf("%v allocations, want 1", got)
			}
		})
	}
}

// harnessShaped is what the load harness sends (bench/fixture.go): peers,
// time, the HTTP request with its headers, an empty metadata context, for
// benchConfig's subject 1.
func harnessShaped() *authv3.CheckRequest {
	cr := noJWT(envoyShaped())
	cr.Attributes.ContextExtensions = nil
	cr.Attributes.Source.Principal = ""
	cr.Attributes.Request.Http.Headers["x-api-key"] = "key-1"
	return cr
}

func TestRegisterServesAuthorization(t *testing.T) {
	srv, _ := demo(t, nil)
	var got registrar
	authz.Register(&got, srv)
	want := &authv3.Authorization_ServiceDesc
	var names []string
	for _, m := range got.desc.Methods {
		names = append(names, m.MethodName)
	}
	if got.desc.ServiceName != want.ServiceName || got.desc.Metadata != want.Metadata ||
		!slices.Equal(names, []string{"Check"}) || len(got.desc.Streams) != 0 || got.impl != srv {
		t.Errorf("registered %s %v %s for %T, want %s [Check] %s for the server", got.desc.ServiceName, names, got.desc.Metadata, got.impl, want.ServiceName, want.Metadata)
	}
}

func TestShedTakesEitherRequest(t *testing.T) {
	srv, _ := demo(t, nil)
	cr := req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "x-request-id": "r-shed"})
	decoded := new(authz.Request)
	if err := (authz.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(marshal(t, cr))}, decoded); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Shed(cr)
	tests := []struct {
		name string
		req  any
		ok   bool
	}{
		{"message", cr, true},
		{"decoded", decoded, true},
		{"another message", &authv3.CheckResponse{}, false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := srv.Shed(tt.req)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if ok && !proto.Equal(got, want) {
				t.Errorf("shed\n%v\nwant\n%v", got, want)
			}
		})
	}
	if code := summarize(t, want).code; code != "entitlements_unavailable" || !strings.Contains(want.GetDeniedResponse().GetBody(), "r-shed") {
		t.Errorf("shed with %s: %s", code, want.GetDeniedResponse().GetBody())
	}
}
