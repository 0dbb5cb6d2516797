package authz_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-authz/tollgate/authz"
)

// checkWellFormed fails unless resp is a complete answer Envoy can act on.
func checkWellFormed(t *testing.T, resp *authv3.CheckResponse, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("gRPC error: %v", err)
	}
	if resp.GetStatus() == nil {
		t.Fatal("no status")
	}
	ok, denied := resp.GetOkResponse(), resp.GetDeniedResponse()
	switch {
	case ok != nil && resp.GetStatus().GetCode() == 0:
	case denied != nil && resp.GetStatus().GetCode() != 0:
		st := denied.GetStatus().GetCode()
		if st < 400 || st > 599 {
			t.Fatalf("denial status %d", st)
		}
		isGRPC := false
		for _, h := range denied.GetHeaders() {
			if h.GetHeader().GetKey() == "grpc-status" {
				isGRPC = true
			}
		}
		if !isGRPC && !json.Valid([]byte(denied.GetBody())) {
			t.Fatalf("denial body is not JSON: %q", denied.GetBody())
		}
	default:
		t.Fatalf("inconsistent response: %v", resp)
	}
}

// FuzzCheckRequest feeds arbitrary method, path, header names and values
// (through headers and raw header_map bytes) and arbitrary serialized
// CheckRequests to the handler: every input gets a well-formed answer. The
// same strings, written to the wire as they are (invalid UTF-8 included,
// which Envoy may send), get a decision from Register's handler, never a
// gRPC error, and a response that can be sent.
func FuzzCheckRequest(f *testing.F) {
	f.Add("GET", "/v1/search?q=1", "x-api-key", "demo-free-key", []byte("demo-free-key"), false, []byte(nil))
	f.Add("POST", "/v1/chat", "authorization", "Bearer demo-pro-key", []byte("Bearer demo-pro-key"), true, []byte(nil))
	f.Add("", "", "", "", []byte{}, false, []byte{0x0a, 0x02, 0x0a, 0x00})
	f.Add("GET", "v1/no-slash", "x-tollgate-admin", "\xff\xfe", []byte{0xff, 0x00}, true, []byte(nil))
	f.Add("PUT", strings.Repeat("/a", 500), "content-type", "application/grpc", []byte("application/grpc"), false, []byte(nil))
	srv, _ := demo(f, nil)
	var viaWire registrar
	authz.Register(&viaWire, srv)
	f.Fuzz(func(t *testing.T, method, path, hk, hv string, raw []byte, useRaw bool, wire []byte) {
		headers := mapHeader(strings.ToLower(hk), hv)
		if useRaw {
			headers = headerMap(slices.Concat(lenField(1, []byte(hk)), lenField(3, raw)), append(entry(":path", path), lenField(3, raw)...))
		}
		b := attrs(lenField(4, lenField(2, slices.Concat(lenField(2, []byte(method)), lenField(4, []byte(path)), lenField(5, []byte("api.example.com")), headers))))
		resp, err := viaWire.check(context.Background(), b)
		checkWellFormed(t, resp, err)
		if _, err := proto.Marshal(resp); err != nil {
			t.Fatalf("the response to %q cannot be sent: %v", b, err)
		}

		cr := req(method, path, map[string]string{strings.ToLower(hk): hv})
		if useRaw {
			cr.Attributes.Request.Http.Headers = nil
			cr.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: hk, RawValue: raw}, {Key: ":path", RawValue: raw},
			}}
		}
		resp, err = srv.Check(context.Background(), cr)
		checkWellFormed(t, resp, err)

		var any authv3.CheckRequest
		if proto.Unmarshal(wire, &any) == nil {
			resp, err = srv.Check(context.Background(), &any)
			checkWellFormed(t, resp, err)
		}
	})
}
