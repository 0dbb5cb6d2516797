package authz

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
)

// A denial as a gRPC client sees it.
//
// For a gRPC request (content-type application/grpc*) Envoy turns the
// denied_response into a trailers-only gRPC reply: HTTP 200, content-type
// application/grpc, grpc-message = the body (percent-encoded), and
// grpc-status = a grpc-status header from denied_response.headers if there is
// one, else its mapping of the HTTP status. CheckResponse.status.code is not
// used. Observed with Envoy 1.40 (e2e/TestGRPCClientGetsGRPCStatus) without
// the header: 400 → INTERNAL, 401 → UNAUTHENTICATED, 402 → UNKNOWN,
// 403 → PERMISSION_DENIED, 429 → UNAVAILABLE, 503 → UNAVAILABLE, and the
// whole problem+json document as grpc-message.
//
// So for gRPC clients tollgate sends the gRPC code itself as a grpc-status
// header and a one-line human body ("code: detail", as in Status.Message)
// instead of problem+json, which would otherwise become the grpc-message.
// The denied_response status stays the configured one; Envoy's access log
// shows HTTP 200 for any gRPC reply, but %GRPC_STATUS% and tollgate's dynamic
// metadata (code, subject, plan) tell the denials apart.

// grpcHeaders is the template's headers for a gRPC client: grpc-status with
// the code, and no problem+json content type (Envoy's gRPC reply has its own).
func grpcHeaders(t *template) []*corev3.HeaderValueOption {
	c := t.grpcCode
	if c == codes.OK {
		c = codes.PermissionDenied // a denial is never OK
	}
	hs := []*corev3.HeaderValueOption{overwrite("grpc-status", strconv.Itoa(int(c)))}
	for _, h := range t.headers {
		if h.GetHeader().GetKey() != "content-type" {
			hs = append(hs, h)
		}
	}
	return hs
}
