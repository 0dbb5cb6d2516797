package authz

import (
	"strings"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/identity"
)

// JWTNamespace is where Envoy's jwt_authn filter puts verified payloads when
// the ext_authz filter lists it in metadata_context_namespaces.
const JWTNamespace = "envoy.filters.http.jwt_authn"

// request is a read-only view of a CheckRequest. It copies nothing: every
// accessor reads the proto, which is nil-safe at every level.
type request struct {
	http      *authv3.AttributeContext_HttpRequest
	attrs     *authv3.AttributeContext
	requestID string
}

var _ identity.Request = (*request)(nil)

func newRequest(cr *authv3.CheckRequest) request {
	attrs := cr.GetAttributes()
	r := request{attrs: attrs, http: attrs.GetRequest().GetHttp()}
	r.requestID, _ = r.Header("x-request-id")
	return r
}

// Header returns a header by lower-case name from headers, or from header_map
// when Envoy sends raw headers (encode_raw_headers: true). With header_map a
// repeated header gives its first value.
func (r *request) Header(name string) (string, bool) {
	if h := r.http.GetHeaders(); len(h) > 0 {
		v, ok := h[name]
		return v, ok
	}
	for _, hv := range r.http.GetHeaderMap().GetHeaders() {
		if strings.EqualFold(hv.GetKey(), name) {
			if raw := hv.GetRawValue(); raw != nil {
				return string(raw), true
			}
			return hv.GetValue(), true
		}
	}
	return "", false
}

// eachHeaderName calls fn with every header name the client sent.
func (r *request) eachHeaderName(fn func(name string)) {
	if h := r.http.GetHeaders(); len(h) > 0 {
		for k := range h {
			fn(k)
		}
		return
	}
	for _, hv := range r.http.GetHeaderMap().GetHeaders() {
		fn(hv.GetKey())
	}
}

func (r *request) method() string { return r.http.GetMethod() }

func (r *request) path() string {
	if p := r.http.GetPath(); p != "" {
		return p
	}
	p, _ := r.Header(":path")
	return p
}

func (r *request) host() string {
	if h := r.http.GetHost(); h != "" {
		return h
	}
	h, _ := r.Header(":authority")
	return h
}

// maxShownPath bounds how much of a path a body or log line repeats.
const maxShownPath = 512

// pathOnly is the path for bodies and logs: without its query string, which
// may hold secrets, and cut to maxShownPath bytes (on a rune boundary) so a
// huge path is not echoed back in bulk.
func (r *request) pathOnly() string {
	p := r.path()
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if len(p) > maxShownPath {
		cut := maxShownPath
		for cut > 0 && !utf8.RuneStart(p[cut]) {
			cut--
		}
		p = p[:cut] + "…"
	}
	return p
}

func (r *request) contextExtensions() map[string]string {
	return r.attrs.GetContextExtensions()
}

// isGRPC reports whether the client speaks gRPC, so a denial can carry a
// gRPC status the client understands.
func (r *request) isGRPC() bool {
	ct, _ := r.Header("content-type")
	return strings.HasPrefix(ct, "application/grpc")
}

// Principal implements identity.Request.
func (r *request) Principal() string { return r.attrs.GetSource().GetPrincipal() }

// Claim implements identity.Request: it walks a dotted path inside the
// jwt_authn payload named payloadKey, or inside any payload when it is "".
func (r *request) Claim(payloadKey, path string) (string, bool, bool) {
	ns := r.attrs.GetMetadataContext().GetFilterMetadata()[JWTNamespace]
	if ns == nil {
		return "", false, false
	}
	if payloadKey != "" {
		return claimIn(ns.GetFields()[payloadKey], path)
	}
	for _, payload := range ns.GetFields() {
		if v, ok, isStr := claimIn(payload, path); ok {
			return v, ok, isStr
		}
	}
	return "", false, false
}

func claimIn(payload *structpb.Value, path string) (string, bool, bool) {
	v := payload
	for path != "" {
		s := v.GetStructValue()
		if s == nil {
			return "", false, false
		}
		// A claim name may itself hold dots (a URL-style claim): try it whole first.
		if whole := s.GetFields()[path]; whole != nil {
			v = whole
			break
		}
		var part string
		part, path, _ = strings.Cut(path, ".")
		if v = s.GetFields()[part]; v == nil {
			return "", false, false
		}
	}
	if sv, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		return sv.StringValue, true, true
	}
	return "", true, false
}
