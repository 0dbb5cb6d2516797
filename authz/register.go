package authz

import (
	"context"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
)

// Register serves s's Check on reg, as authv3.RegisterAuthorizationServer
// does (same service, same method), but without building the CheckRequest
// message: Codec decodes each request straight into a pooled Request, and
// that Request is what interceptors get as req (Shed takes it). The server
// must use Codec (grpc.ForceServerCodecV2(Codec{})): no other codec can
// decode into a Request or send an Encoded, and every Check would fail with
// an error. An interceptor gets the *Request as req and, from the handler,
// an *Encoded response (Shed's answer, a *authv3.CheckResponse, can be
// returned in its place). An interceptor calls the handler before it
// returns and keeps neither req nor any string from it afterwards: the
// Request goes back to the pool when the handler's caller returns.
func Register(reg grpc.ServiceRegistrar, s *Server) {
	reg.RegisterService(&serviceDesc, s)
}

// serviceDesc is authv3.Authorization_ServiceDesc with serveCheck for Check.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: authv3.Authorization_ServiceDesc.ServiceName,
	HandlerType: (*authv3.AuthorizationServer)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Check", Handler: serveCheck}},
	Streams:     []grpc.StreamDesc{},
	Metadata:    authv3.Authorization_ServiceDesc.Metadata,
}

// serveCheck is the Check handler: srv is the Server, and dec decodes the
// request with the server's codec.
func serveCheck(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	s := srv.(*Server)
	q := requests.Get().(*Request)
	defer q.release()
	if err := decodeCheck(dec, q); err != nil { // INVALID_ARGUMENT for bytes that are not a CheckRequest
		return nil, err
	}
	if interceptor == nil {
		return s.serve(ctx, q)
	}
	return interceptor(ctx, q, &s.checkInfo, s.checkHandler)
}

// interceptedCheck is the handler an interceptor calls to decide req.
func (s *Server) interceptedCheck(ctx context.Context, req any) (any, error) {
	return s.serve(ctx, req.(*Request))
}

// serve decides q and returns the answer already encoded. The answer's
// messages are built in q's own blocks (Request.reuse) and encoded here,
// before q goes back to the pool, so a Check allocates no messages: grpc-go
// gets bytes that nothing else refers to.
func (s *Server) serve(ctx context.Context, q *Request) (*Encoded, error) {
	q.reuse = true
	resp, _ := s.decideRequest(ctx, q)
	return encode(resp)
}
