// Package authz is the only package that knows Envoy's protos. It turns a
// CheckRequest into a plain request view (only the few things a decision
// reads), runs identity → entitlement → policy, and turns the Decision into
// a CheckResponse.
//
// A refusal is a normal CheckResponse with a non-OK status and a
// denied_response carrying RFC 9457 problem+json; gRPC errors are reserved for
// internal faults, because Envoy treats them as "authorization is broken" and
// applies failure_mode_allow / status_on_error.
//
// To serve Check, install Codec (grpc.ForceServerCodecV2(Codec{})) and
// Register the Server: each request's bytes are then decoded straight into
// the view, a pooled Request, without building the CheckRequest message:
// one allocation (the message takes about 30) unless the request carries
// context extensions or jwt_authn metadata, and always the decision the
// message would get. Responses are encoded with vtprotobuf when built with
// -tags vtprotobuf. Server.Check (for authv3.RegisterAuthorizationServer)
// and Decide take a message and decide the same way. BENCHMARKS.md has the
// figures.
//
// The Server is safe for concurrent use. Its Rules (policy, identity chain,
// response templates) are swapped atomically on a config reload, so a Check
// sees either the old or the new config, never a mix.
package authz
