// Package authz is the only package that knows Envoy's protos. It turns a
// CheckRequest into a plain request view, runs identity → entitlement →
// policy, and turns the Decision into a CheckResponse.
//
// A refusal is a normal CheckResponse with a non-OK status and a
// denied_response carrying RFC 9457 problem+json; gRPC errors are reserved for
// internal faults, because Envoy treats them as "authorization is broken" and
// applies failure_mode_allow / status_on_error.
//
// Codec is the gRPC codec to serve Check with: it decodes a CheckRequest
// without reflection (and exactly as the protobuf runtime would), and
// encodes responses with vtprotobuf when built with -tags vtprotobuf.
// BENCHMARKS.md has the figures.
//
// The Server is safe for concurrent use. Its Runtime (policy, identity chain,
// response templates) is swapped atomically on a config reload, so a Check
// sees either the old or the new config, never a mix.
package authz
