package authz

import (
	"context"
	"math/rand/v2"
	"unsafe"
)

// Tracer traces Checks. The server calls it only when Deps.Tracer is set:
// without one, tracing costs a Check nothing. internal/app implements it
// with OpenTelemetry, so that authz, and whatever only decides, does not
// link an SDK.
type Tracer interface {
	// StartCheck is called as a Check begins, with ctx (the gRPC call's,
	// with its metadata) and the request's headers (h is valid only during
	// the call). It returns the context the Check is decided in (the
	// entitlement cache and the quota store are called with it) and the id
	// of the trace the Check belongs to, for the decision log ("" for none).
	StartCheck(ctx context.Context, h Headers) (context.Context, string)
	// EndCheck is called with the context StartCheck returned once the
	// Check is decided. res is valid only during the call, and so are its
	// strings (DecisionID shares memory the next Check overwrites): copy
	// (strings.Clone) any string you keep, as a span's attributes are.
	EndCheck(ctx context.Context, res *Result)
}

// Headers looks up a request header by lower-case name.
type Headers interface {
	Header(name string) (string, bool)
}

// DecisionIDHeader carries a denial's decision id to the client; allows
// carry it upstream in the trusted header named by the header prefix
// (x-tollgate-decision-id by default).
const DecisionIDHeader = "tollgate-decision-id"

// decisionID is the storage of one decision's id, inside the response that
// carries it: 128 random bits as 32 lower-case hex digits. Every answer
// gets a new one, whatever the request sent, so an id names one decision
// (x-request-id may be the client's own, and repeat) and tells a client
// nothing about the server (a counter would show its traffic).
type decisionID [32]byte

// fill writes a new id into b and returns it as a string that shares b's
// memory: the id costs no allocation of its own. b is a new block's
// (Decide, Shed), whose string keeps it alive, or a pooled Request's
// (serve): then the id is valid only until that Request serves its next
// Check, and whoever keeps it past the Check copies it.
func (b *decisionID) fill() string {
	hi, lo := idBits()
	return b.format(hi, lo)
}

func (b *decisionID) format(hi, lo uint64) string {
	const digits = "0123456789abcdef"
	for i := 15; i >= 0; i-- {
		b[i], b[16+i] = digits[hi&15], digits[lo&15]
		hi >>= 4
		lo >>= 4
	}
	return unsafe.String(&b[0], len(b))
}

// idBits is the randomness of a decision id. The package's tests fix it, so
// that two answers to one request compare equal.
var idBits = randomIDBits

// randomIDBits is 128 bits from the runtime's generator (ChaCha8, seeded
// from the OS): unique among any number of decisions tollgate will make.
func randomIDBits() (uint64, uint64) { return rand.Uint64(), rand.Uint64() }
