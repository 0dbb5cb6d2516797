package authz

import (
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A Check reads a handful of things from its CheckRequest (see request),
// so Register's handler does not build the message at all: Request.decode
// reads those things straight from the wire, and checks everything else
// without keeping it (peers' addresses, time, TLS, the body, unknown
// fields). Every string it keeps is a substring of one copy of the bytes,
// so that, without jwt_authn metadata, a Check costs one allocation to
// decode (and a map when there are context extensions); the headers go to
// the Request's pooled storage.
//
// The view must be the one the message would give, and bytes that are not
// a CheckRequest must be refused. So anything unexpected (malformed data, a
// field with another wire type, headers in both the map and header_map,
// more map headers than Envoy sends, deep nesting) makes decode start over
// with lenientUnmarshal and fill the view from the message.
// FuzzCheckFromWire holds decisions made from the wire to the ones made
// from lenientUnmarshal's message.
//
// Invalid UTF-8 in a string is not an error, here or in lenientUnmarshal:
// Envoy sends header values as it received them, and a gRPC error would
// make Envoy answer status_on_error for a request that deserves a decision.
// Each run of invalid bytes reads as U+FFFD, in both paths alike.

// decode replaces q's request with the wire-format CheckRequest b. Its
// error, if any, is lenientUnmarshal's: b is not a CheckRequest.
func (q *Request) decode(b []byte) error {
	q.r.reset()
	d := wireDecoder{t: newText(b), r: &q.r}
	if err := d.checkRequest(b); err != nil {
		q.r.reset()
		var cr authv3.CheckRequest
		if err := lenientUnmarshal(b, &cr); err != nil {
			return err
		}
		q.r.fromProto(&cr)
		return nil
	}
	q.r.rawHeaders = d.fromList
	q.r.finish(d.md)
	return nil
}

// maxMapHeaders is how many entries of the headers map decode reads itself
// (Envoy's default limit on a request's headers is 100); more go to the
// runtime, so that merging repeated names never costs more than that.
const maxMapHeaders = 128

// wireDecoder is one decode's state.
type wireDecoder struct {
	t  text // the whole request, as one string
	r  *request
	md *corev3.Metadata // metadata_context, once one is not empty
	// fromMap and fromList say where headers were seen: the headers map,
	// header_map.
	fromMap, fromList bool
	names             [4]uint64 // a filter of the names of the map headers
}

// eachField calls fn with each field of the message b, in order.
func eachField(b []byte, fn func(f field) error) error {
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		if err := fn(f); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// only reads, with read, the message in field num of the message b, and
// skips the other fields (s is b's shape, depth its depth).
func only(b []byte, num protowire.Number, s *shape, depth int, read func(b []byte) error) error {
	return eachField(b, func(f field) error {
		if f.num != num {
			return skip(f, s, depth)
		}
		if err := f.msg(); err != nil {
			return err
		}
		return read(f.v)
	})
}

// checkRequest reads the attributes of a CheckRequest.
func (d *wireDecoder) checkRequest(b []byte) error {
	return only(b, 1, checkRequestShape, 0, d.attributes)
}

func (d *wireDecoder) attributes(b []byte) error {
	return eachField(b, func(f field) error {
		switch f.num {
		case 1, 4, 10, 11: // source, request, context_extensions, metadata_context
		default:
			return skip(f, attributesShape, 1)
		}
		if err := f.msg(); err != nil {
			return err
		}
		switch f.num {
		case 1:
			return d.source(f.v)
		case 4:
			return d.request(f.v)
		case 10:
			return d.contextExtension(f.v)
		}
		return d.metadata(f.v)
	})
}

func (d *wireDecoder) contextExtension(b []byte) error {
	k, v, err := decodeStringEntry(b, &d.t)
	if err != nil {
		return err
	}
	if d.r.ext == nil {
		d.r.ext = make(map[string]string, 2)
	}
	d.r.ext[k] = v
	return nil
}

// metadata merges a metadata_context into d.md, with the runtime: only
// jwt_authn puts anything there.
func (d *wireDecoder) metadata(b []byte) error {
	if len(b) == 0 { // what Envoy sends without jwt_authn: reads as none
		return nil
	}
	if d.md == nil {
		d.md = new(corev3.Metadata)
	}
	return merge(b, d.md, 2)
}

func (d *wireDecoder) source(b []byte) error {
	return eachField(b, func(f field) (err error) {
		if f.num != 4 {
			return skip(f, peerShape, 2)
		}
		d.r.principal, err = d.t.str(&f)
		return err
	})
}

// request reads the http of an AttributeContext.Request.
func (d *wireDecoder) request(b []byte) error { return only(b, 2, requestShape, 2, d.http) }

func (d *wireDecoder) http(b []byte) error {
	return eachField(b, func(f field) (err error) {
		r := d.r
		switch f.num {
		case 2:
			r.httpMethod, err = d.t.str(&f)
		case 3:
			if err = f.msg(); err == nil {
				var k, v string
				if k, v, err = decodeStringEntry(f.v, &d.t); err == nil {
					err = d.mapHeader(k, v)
				}
			}
		case 4:
			r.httpPath, err = d.t.str(&f)
		case 5:
			r.httpHost, err = d.t.str(&f)
		case 13:
			if err = f.msg(); err == nil {
				err = d.headerMap(f.v)
			}
		case 11, 12: // body, raw_body (with_request_body): kept for cost_from.body
			var v string
			// body wins over raw_body, as in fromProto (Envoy sends one).
			if v, err = d.t.str(&f); err == nil && v != "" && (f.num == 11 || r.body == "") {
				r.body = v
			}
		default:
			err = skip(f, httpShape, 3)
		}
		return err
	})
}

// mapHeader adds an entry of the headers map. A name seen before takes the
// new value, as in a protobuf map, so that every name is in r.headers once.
func (d *wireDecoder) mapHeader(k, v string) error {
	h := &d.r.headers
	if d.fromList || len(*h) == maxMapHeaders { // headers in both, or many
		return errSlowPath
	}
	d.fromMap = true
	w, bit := nameBit(k)
	if d.names[w]&bit != 0 {
		for i := range *h {
			if (*h)[i].name == k {
				(*h)[i].value = v
				return nil
			}
		}
	}
	d.names[w] |= bit
	*h = append(*h, header{k, v})
	return nil
}

// nameBit places a header name in a 256-bit filter: equal names share a
// bit, different ones seldom do, so a name is looked for among the others
// only when its bit is already set.
func nameBit(k string) (word int, bit uint64) {
	n := uint(len(k))
	if n > 0 {
		n = n*31 + uint(k[n-1])*7 + uint(k[n/2])
	}
	n &= 255
	return int(n >> 6), 1 << (n & 63)
}

// headerMap reads the headers of a HeaderMap.
func (d *wireDecoder) headerMap(b []byte) error { return only(b, 1, headerMapShape, 4, d.headerValue) }

func (d *wireDecoder) headerValue(b []byte) error {
	var h header
	var raw string
	err := eachField(b, func(f field) (err error) {
		switch f.num {
		case 1:
			h.name, err = d.t.str(&f)
		case 2:
			h.value, err = d.t.str(&f)
		case 3: // bytes, read as a string: made valid UTF-8 as a string is
			if err = f.msg(); err == nil {
				raw, err = d.t.str(&f)
			}
		default:
			err = skip(f, headerValueShape, 5)
		}
		return err
	})
	if err != nil {
		return err
	}
	if d.fromMap { // headers in both the map and header_map
		return errSlowPath
	}
	if raw != "" { // an empty raw_value decodes as none
		h.value = raw
	}
	d.fromList = true
	d.r.headers = append(d.r.headers, h)
	return nil
}

// maxSkipDepth is how deep skip follows messages before it leaves the
// bytes to the runtime, whose limit (protowire.DefaultRecursionLimit) is far
// deeper than anything Envoy sends.
const maxSkipDepth = 100

// skip checks a field the server does not read as the runtime checks it
// while decoding: a message must be well formed all the way down. A string
// may hold invalid UTF-8 (lenientUnmarshal would replace it, and the field
// is not read). A known field with another wire type than its kind's (the
// runtime keeps it as an unknown field, or reads it as packed) is
// errSlowPath too. depth is how many messages deep f's message is.
func skip(f field, s *shape, depth int) error {
	if int(f.num) >= len(s.fields) || !s.fields[f.num].known {
		return nil // an unknown field: next has checked that it is well formed
	}
	fs := &s.fields[f.num]
	switch {
	case f.typ != fs.typ:
		return errSlowPath
	case fs.msg != nil:
		if depth >= maxSkipDepth || fs.msg.slow {
			return errSlowPath
		}
		// A group's value ends with its end-group tag, which next
		// refuses: groups (not in these proto3 messages) never skip.
		return eachField(f.v, func(g field) error { return skip(g, fs.msg, depth+1) })
	}
	return nil
}

// shape is what skip needs to know of a message: its fields by number.
type shape struct {
	fields []fieldShape
	// slow marks a message whose checks go beyond its fields' (required
	// fields, extensions: proto2 only): skip leaves it to the runtime.
	slow bool
}

type fieldShape struct {
	known bool
	typ   protowire.Type // the wire type of the field's kind, unpacked
	utf8  bool           // a string
	msg   *shape         // a message's or a map entry's
}

// shapes are the shapes of every message a CheckRequest may hold, by name.
var shapes = func() map[protoreflect.FullName]*shape {
	m := map[protoreflect.FullName]*shape{}
	shapeOf((*authv3.CheckRequest)(nil).ProtoReflect().Descriptor(), m)
	return m
}()

func shapeOf(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]*shape) *shape {
	if s := seen[md.FullName()]; s != nil {
		return s
	}
	s := &shape{slow: md.ParentFile().Syntax() != protoreflect.Proto3 || md.ExtensionRanges().Len() > 0}
	seen[md.FullName()] = s
	fds := md.Fields()
	top := 0
	for i := range fds.Len() {
		top = max(top, int(fds.Get(i).Number()))
	}
	s.fields = make([]fieldShape, top+1)
	for i := range fds.Len() {
		fd := fds.Get(i)
		fs := &s.fields[fd.Number()]
		fs.known, fs.typ, fs.utf8 = true, wireType(fd.Kind()), fd.Kind() == protoreflect.StringKind
		if m := fd.Message(); m != nil {
			fs.msg = shapeOf(m, seen)
		}
	}
	return s
}

// wireType is the wire type the runtime reads a field of kind k from,
// unpacked.
func wireType(k protoreflect.Kind) protowire.Type {
	switch k {
	case protoreflect.BoolKind, protoreflect.EnumKind,
		protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Uint32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Uint64Kind:
		return protowire.VarintType
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return protowire.Fixed64Type
	case protoreflect.GroupKind:
		return protowire.StartGroupType
	}
	return protowire.BytesType // string, bytes, message
}

// The shapes of the messages decode reads itself, for the fields it skips.
var (
	checkRequestShape = shapeFor(&authv3.CheckRequest{})
	attributesShape   = shapeFor(&authv3.AttributeContext{})
	peerShape         = shapeFor(&authv3.AttributeContext_Peer{})
	requestShape      = shapeFor(&authv3.AttributeContext_Request{})
	httpShape         = shapeFor(&authv3.AttributeContext_HttpRequest{})
	headerMapShape    = shapeFor(&corev3.HeaderMap{})
	headerValueShape  = shapeFor(&corev3.HeaderValue{})
)

func shapeFor(m proto.Message) *shape {
	s := shapes[m.ProtoReflect().Descriptor().FullName()]
	if s == nil {
		panic("authz: no wire shape for " + string(m.ProtoReflect().Descriptor().FullName()))
	}
	return s
}

// lenientUnmarshal is proto.Unmarshal, except that a string field holding
// invalid UTF-8 (which proto.Unmarshal refuses in proto3) is read with
// each run of invalid bytes replaced by U+FFFD, as validString does. Its
// error, if any, is proto.Unmarshal's: b is not a CheckRequest even so.
func lenientUnmarshal(b []byte, cr *authv3.CheckRequest) error {
	err := proto.Unmarshal(b, cr)
	if err == nil {
		return nil
	}
	fixed, changed, ok := validUTF8(b, checkRequestShape, 0)
	if !ok || !changed {
		return err
	}
	proto.Reset(cr)
	return proto.Unmarshal(fixed, cr)
}

// validUTF8 is the message b of shape s with the invalid UTF-8 in its
// string fields, all the way down, replaced as validString replaces it.
// changed says whether anything was; ok is false when b is not well
// formed (or nests deeper than the runtime reads), and is left to
// proto.Unmarshal to refuse. depth is how many messages deep b is.
func validUTF8(b []byte, s *shape, depth int) (out []byte, changed, ok bool) {
	if depth > protowire.DefaultRecursionLimit {
		return nil, false, false
	}
	out = make([]byte, 0, len(b))
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return nil, false, false
		}
		raw := b[:n]
		b = b[n:]
		if f.typ != protowire.BytesType || int(f.num) >= len(s.fields) || !s.fields[f.num].known {
			out = append(out, raw...)
			continue
		}
		fs := &s.fields[f.num]
		v, fixed := f.v, false
		switch {
		case fs.utf8 && !utf8.Valid(v):
			v, fixed = []byte(validString(v)), true
		case fs.msg != nil:
			sub, ch, ok := validUTF8(v, fs.msg, depth+1)
			if !ok {
				return nil, false, false
			}
			v, fixed = sub, ch
		}
		if !fixed {
			out = append(out, raw...)
			continue
		}
		changed = true
		out = protowire.AppendTag(out, f.num, protowire.BytesType)
		out = protowire.AppendBytes(out, v)
	}
	return out, changed, true
}
