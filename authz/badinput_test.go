package authz_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/authz"
)

// TestBadInput sends what a broken or hostile client (or a misconfigured
// Envoy) can produce: every case gets a well-formed answer with a clear
// code, never a panic or a gRPC error.
func TestBadInput(t *testing.T) {
	srv, _ := demo(t, nil)
	manyHeaders := map[string]string{"x-api-key": "demo-free-key"}
	for i := range 10000 {
		manyHeaders[fmt.Sprintf("x-h-%d", i)] = "v"
	}
	huge := strings.Repeat("a", 1<<20)
	jwtMeta := func(v *structpb.Value) *authv3.CheckRequest {
		cr := req("POST", "/v1/chat", nil)
		cr.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			authz.JWTNamespace: {Fields: map[string]*structpb.Value{"jwt_payload": v}},
		}}
		return cr
	}
	rawMap := func(n int, val []byte) *authv3.CheckRequest {
		cr := req("GET", "/v1/search", nil)
		cr.Attributes.Request.Http.Headers = nil
		hm := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-api-key", RawValue: []byte("demo-free-key")}}}
		for i := range n {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: fmt.Sprintf("x-r-%d", i), RawValue: val})
		}
		cr.Attributes.Request.Http.HeaderMap = hm
		return cr
	}
	tests := []struct {
		name string
		cr   *authv3.CheckRequest
		code string
	}{
		{"nil attributes", &authv3.CheckRequest{}, "route_not_allowed"},
		{"empty attributes", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}}, "route_not_allowed"},
		{"no http", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}, "route_not_allowed"},
		{"no headers", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/v1/search"}}}}, "missing_credentials"},
		{"10,000 headers", req("GET", "/v1/search", manyHeaders), "ok"},
		{"10,000 raw headers", rawMap(10000, []byte("v")), "ok"},
		{"1 MiB header value", req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "x-big": huge}), "ok"},
		{"1 MiB API key", req("GET", "/v1/search", map[string]string{"x-api-key": huge}), "invalid_credentials"},
		{"1 MiB path", req("GET", "/v1/search/"+huge, map[string]string{"x-api-key": "demo-free-key"}), "ok"},
		{"1 MiB raw header bytes", rawMap(1, []byte(huge)), "ok"},
		{"1 MiB unmatched path", req("GET", "/nowhere/"+huge, map[string]string{"x-api-key": "demo-free-key"}), "route_not_allowed"},
		{"path without /", req("GET", "v1/search", map[string]string{"x-api-key": "demo-free-key"}), "route_not_allowed"},
		{"invalid UTF-8 in the key", req("GET", "/v1/search", map[string]string{"x-api-key": "\xff\xfe"}), "invalid_credentials"},
		{"header and bearer disagree", req("GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key", "authorization": "Bearer demo-pro-key"}), "invalid_credentials"},
		{"JWT payload not an object", jwtMeta(structpb.NewStringValue("sub=acme")), "missing_credentials"},
		{"JWT sub a number", jwtMeta(structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"sub": structpb.NewNumberValue(7)}})), "invalid_credentials"},
		{"JWT sub a list", jwtMeta(structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"sub": structpb.NewListValue(&structpb.ListValue{})}})), "invalid_credentials"},
		{"JWT sub empty", jwtMeta(structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"sub": structpb.NewStringValue("")}})), "invalid_credentials"},
		{"JWT sub null", jwtMeta(structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"sub": structpb.NewNullValue()}})), "invalid_credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := srv.Check(context.Background(), tt.cr)
			checkWellFormed(t, resp, err)
			if got := resp.GetDynamicMetadata().GetFields()["code"].GetStringValue(); got != tt.code {
				t.Errorf("code = %s, want %s", got, tt.code)
			}
			if d := resp.GetDeniedResponse(); d != nil && len(d.GetBody()) > 4096 {
				t.Errorf("denial body is %d bytes: input must not be echoed in bulk", len(d.GetBody()))
			}
		})
	}
}
