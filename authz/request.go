package authz

import (
	"strings"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/identity"
)

// JWTNamespace is where Envoy's jwt_authn filter puts verified payloads when
// the ext_authz filter lists it in metadata_context_namespaces.
const JWTNamespace = "envoy.filters.http.jwt_authn"

// request is the part of a CheckRequest the server reads, and nothing else.
// It is filled from a message (fromProto) or straight from the wire
// (Request.decode, decode_request.go), and then only read, until reset.
type request struct {
	httpMethod, httpPath, httpHost string // the HttpRequest's own fields
	// The client's headers are the message's headers map, when it has one
	// (hmap), or else headers: the wire's headers map entries or, when
	// Envoy sends raw headers (encode_raw_headers: true), header_map, with
	// a raw value, when there is one, in place of the value.
	hmap    map[string]string
	headers []header
	// rawHeaders says headers come from header_map: names in any case, and
	// a name may repeat. From a map, every name is there once.
	rawHeaders bool
	ext        map[string]string // context_extensions
	principal  string            // the source peer's
	jwt        *structpb.Struct  // metadata_context's jwt_authn payloads
	requestID  string
	// body is the request body Envoy sent (with_request_body), body or
	// raw_body; "" when it sent none.
	body string
}

// Body is the request body Envoy sent, for cost_from.body.
func (r *request) Body() string { return r.body }

// header is one header as the client sent it.
type header struct{ name, value string }

var _ identity.Request = (*request)(nil)

// newRequest is the view of cr. It shares cr's strings and maps; only the
// raw values of a header_map are copied, to one string.
func newRequest(cr *authv3.CheckRequest) request {
	var r request
	r.fromProto(cr)
	return r
}

// fromProto fills the empty r from cr, reusing r.headers' storage.
func (r *request) fromProto(cr *authv3.CheckRequest) {
	attrs := cr.GetAttributes()
	http := attrs.GetRequest().GetHttp()
	r.httpMethod, r.httpPath, r.httpHost = http.GetMethod(), http.GetPath(), http.GetHost()
	r.body = http.GetBody()
	if b := http.GetRawBody(); len(b) > 0 && r.body == "" {
		r.body = string(b)
	}
	if h := http.GetHeaders(); len(h) > 0 {
		r.hmap = h
	} else {
		r.rawHeaders = true
		hvs := http.GetHeaderMap().GetHeaders()
		raws := rawValues(hvs) // the raw values, one after the other
		for _, hv := range hvs {
			v := hv.GetValue()
			if raw := hv.GetRawValue(); raw != nil {
				v, raws = raws[:len(raw)], raws[len(raw):]
				if !utf8.ValidString(v) { // as the wire decoder reads it
					v = strings.ToValidUTF8(v, "\uFFFD")
				}
			}
			r.headers = append(r.headers, header{hv.GetKey(), v})
		}
	}
	r.ext = attrs.GetContextExtensions()
	r.principal = attrs.GetSource().GetPrincipal()
	r.finish(attrs.GetMetadataContext())
}

// rawValues is the raw values of hvs in one string, one allocation rather
// than one each.
func rawValues(hvs []*corev3.HeaderValue) string {
	n := 0
	for _, hv := range hvs {
		n += len(hv.GetRawValue())
	}
	var b strings.Builder
	b.Grow(n)
	for _, hv := range hvs {
		b.Write(hv.GetRawValue())
	}
	return b.String()
}

// finish sets what r derives from the rest, once filled.
func (r *request) finish(md *corev3.Metadata) {
	r.jwt = md.GetFilterMetadata()[JWTNamespace]
	r.requestID, _ = r.Header("x-request-id")
}

// reset empties r, keeping the storage of its headers.
func (r *request) reset() {
	clear(r.headers)
	*r = request{headers: r.headers[:0]}
}

// Header returns a header by lower-case name from headers, or from header_map
// when Envoy sends raw headers (encode_raw_headers: true). With header_map a
// repeated header gives its first value.
func (r *request) Header(name string) (string, bool) {
	if r.hmap != nil {
		v, ok := r.hmap[name]
		return v, ok
	}
	for i := range r.headers {
		h := &r.headers[i]
		if h.name == name || r.rawHeaders && strings.EqualFold(h.name, name) {
			return h.value, true
		}
	}
	return "", false
}

// eachHeaderName calls fn with every header name the client sent.
func (r *request) eachHeaderName(fn func(name string)) {
	for k := range r.hmap {
		fn(k)
	}
	for i := range r.headers {
		fn(r.headers[i].name)
	}
}

func (r *request) method() string { return r.httpMethod }

func (r *request) path() string {
	if p := r.httpPath; p != "" {
		return p
	}
	p, _ := r.Header(":path")
	return p
}

func (r *request) host() string {
	if h := r.httpHost; h != "" {
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

func (r *request) contextExtensions() map[string]string { return r.ext }

// isGRPC reports whether the client speaks gRPC, so a denial can carry a
// gRPC status the client understands.
func (r *request) isGRPC() bool {
	ct, _ := r.Header("content-type")
	return strings.HasPrefix(ct, "application/grpc")
}

// Principal implements identity.Request.
func (r *request) Principal() string { return r.principal }

// Claim implements identity.Request: it walks a dotted path inside the
// jwt_authn payload named payloadKey, or inside any payload when it is "".
func (r *request) Claim(payloadKey, path string) (string, bool, bool) {
	ns := r.jwt
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
