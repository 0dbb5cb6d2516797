package authz

import (
	"errors"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Decoding a CheckRequest is most of what an ext_authz server does with its
// CPU, and most of that, in the protobuf runtime, is the request's header
// map: map fields are decoded by reflection, at several allocations an
// entry. Register's handler does not build the message at all (wire.go,
// which shares this file's reading of fields and strings); for a server
// that does, DecodeCheckRequest reads the path Envoy always sends
//
//	CheckRequest.attributes → .request → .time, .http (strings, headers, header_map)
//	                        → .source, .destination (address, principal, …)
//	                        → .context_extensions
//
// by hand, and hands every other field (peers, metadata, TLS, the body,
// unknown fields) to the protobuf runtime, which merges them in. Anything
// unexpected on the hand-read path (malformed wire data, invalid UTF-8, a
// field with another wire type) makes it start over with proto.Unmarshal,
// so the result — message or error — is always proto.Unmarshal's.
// FuzzDecodeCheckRequest holds it to that.
//
// The strings of the HTTP request (its scalar fields, header names and
// values) are substrings of one string holding the whole HttpRequest: one
// allocation instead of one each. A substring keeps that string alive, so
// whatever outlives the Check keeps a copy instead (the cache clones its
// keys; everything else built from the request is a new string anyway).

// errSlowPath sends a message to proto.Unmarshal.
var errSlowPath = errors.New("authz: not on the fast path")

// DecodeCheckRequest decodes a wire-format CheckRequest into cr, which must
// be empty, exactly as proto.Unmarshal does.
func DecodeCheckRequest(b []byte, cr *authv3.CheckRequest) error {
	if err := decodeCheckRequest(b, cr); err != nil {
		proto.Reset(cr)
		return proto.Unmarshal(b, cr)
	}
	return nil
}

// field is one field of a message on the wire.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   []byte // the payload of a length-delimited field, else the raw value
	raw []byte // tag and value, to hand on unchanged
}

// next reads the first field of b; n < 0 when b does not start with one.
func next(b []byte) (f field, n int) {
	num, typ, tn := protowire.ConsumeTag(b)
	if tn < 0 || num > protowire.MaxValidNumber {
		return f, -1
	}
	var v []byte
	var vn int
	if typ == protowire.BytesType { // the most common: read its length once
		v, vn = protowire.ConsumeBytes(b[tn:])
	} else {
		vn = protowire.ConsumeFieldValue(num, typ, b[tn:])
	}
	if vn < 0 {
		return f, -1
	}
	n = tn + vn
	if v == nil {
		v = b[tn:n]
	}
	return field{num: num, typ: typ, v: v, raw: b[:n]}, n
}

// merge hands the fields the fast path does not read to the protobuf
// runtime. depth is how many messages deep m is, for the recursion limit.
func merge(rest []byte, m proto.Message, depth int) error {
	if len(rest) == 0 {
		return nil
	}
	return proto.UnmarshalOptions{Merge: true, RecursionLimit: protowire.DefaultRecursionLimit - depth}.Unmarshal(rest, m)
}

// str is a string field's value, valid UTF-8 as proto3 requires.
func (f *field) str() (string, error) {
	if f.typ != protowire.BytesType || !utf8.Valid(f.v) {
		return "", errSlowPath
	}
	return string(f.v), nil
}

// text is the strings of one message: s holds the same bytes as b, and
// raw, once needed, a copy of b for bytes fields.
type text struct {
	b   []byte
	s   string
	raw []byte
}

func newText(b []byte) text { return text{b: b, s: string(b)} }

// bytes is a bytes field's value as a slice of t.raw (capped, so that an
// append cannot reach the next field), or nil when empty, as the runtime
// decodes it.
func (t *text) bytes(f *field) []byte {
	if len(f.v) == 0 {
		return nil
	}
	off := cap(t.b) - cap(f.v)
	if off < 0 || off+len(f.v) > len(t.b) {
		return append([]byte(nil), f.v...)
	}
	if t.raw == nil {
		t.raw = append([]byte(nil), t.b...)
	}
	return t.raw[off : off+len(f.v) : off+len(f.v)]
}

// str is f.str, as a substring of t when f lies in t.b.
func (t *text) str(f *field) (string, error) {
	if f.typ != protowire.BytesType || !utf8.Valid(f.v) {
		return "", errSlowPath
	}
	return t.sub(f.v), nil
}

// sub is v as a substring of t when v lies in t.b, else a copy.
func (t *text) sub(v []byte) string {
	// v is a subslice of t.b, ending where t.b ends: the difference of
	// their capacities is its offset.
	off := cap(t.b) - cap(v)
	if off < 0 || off+len(v) > len(t.s) {
		return string(v)
	}
	return t.s[off : off+len(v)]
}

// msg checks that a field holding a message is length-delimited.
func (f *field) msg() error {
	if f.typ != protowire.BytesType {
		return errSlowPath
	}
	return nil
}

func decodeCheckRequest(b []byte, m *authv3.CheckRequest) error {
	var rest []byte
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		switch f.num {
		case 1:
			if err := f.msg(); err != nil {
				return err
			}
			if m.Attributes == nil {
				m.Attributes = new(authv3.AttributeContext)
			}
			if err := decodeAttributes(f.v, m.Attributes); err != nil {
				return err
			}
		default:
			rest = append(rest, f.raw...)
		}
	}
	return merge(rest, m, 0)
}

func decodeAttributes(b []byte, m *authv3.AttributeContext) error {
	var rest []byte
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		switch f.num {
		case 1, 2:
			if err := f.msg(); err != nil {
				return err
			}
			p := &m.Source
			if f.num == 2 {
				p = &m.Destination
			}
			if *p == nil {
				*p = new(authv3.AttributeContext_Peer)
			}
			if err := decodePeer(f.v, *p); err != nil {
				return err
			}
		case 4:
			if err := f.msg(); err != nil {
				return err
			}
			if m.Request == nil {
				m.Request = new(authv3.AttributeContext_Request)
			}
			if err := decodeRequest(f.v, m.Request); err != nil {
				return err
			}
		case 10:
			if err := f.msg(); err != nil {
				return err
			}
			k, v, err := decodeStringEntry(f.v, nil)
			if err != nil {
				return err
			}
			if m.ContextExtensions == nil {
				m.ContextExtensions = make(map[string]string, 2)
			}
			m.ContextExtensions[k] = v
		default:
			rest = append(rest, f.raw...)
		}
	}
	return merge(rest, m, 1)
}

func decodeRequest(b []byte, m *authv3.AttributeContext_Request) error {
	var rest []byte
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		switch f.num {
		case 1:
			if err := f.msg(); err != nil {
				return err
			}
			if m.Time == nil {
				m.Time = new(timestamppb.Timestamp)
			}
			if err := decodeTimestamp(f.v, m.Time); err != nil {
				return err
			}
		case 2:
			if err := f.msg(); err != nil {
				return err
			}
			if m.Http == nil {
				m.Http = new(authv3.AttributeContext_HttpRequest)
			}
			if err := decodeHTTP(f.v, m.Http); err != nil {
				return err
			}
		default:
			rest = append(rest, f.raw...)
		}
	}
	return merge(rest, m, 2)
}

func decodeTimestamp(b []byte, m *timestamppb.Timestamp) error {
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 || f.typ != protowire.VarintType {
			return errSlowPath
		}
		b = b[n:]
		v, _ := protowire.ConsumeVarint(f.v)
		switch f.num {
		case 1:
			m.Seconds = int64(v)
		case 2:
			m.Nanos = int32(v)
		default:
			return errSlowPath // unknown fields: leave them to the runtime
		}
	}
	return nil
}

func decodeHTTP(b []byte, m *authv3.AttributeContext_HttpRequest) error {
	if m.Headers == nil {
		if n := count(b, 3); n > 0 {
			m.Headers = make(map[string]string, n)
		}
	}
	t := newText(b)
	var rest []byte
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		var err error
		switch f.num {
		case 1:
			m.Id, err = t.str(&f)
		case 2:
			m.Method, err = t.str(&f)
		case 3:
			if err = f.msg(); err == nil {
				var k, v string
				if k, v, err = decodeStringEntry(f.v, &t); err == nil {
					if m.Headers == nil {
						m.Headers = make(map[string]string)
					}
					m.Headers[k] = v
				}
			}
		case 4:
			m.Path, err = t.str(&f)
		case 5:
			m.Host, err = t.str(&f)
		case 6:
			m.Scheme, err = t.str(&f)
		case 9:
			if f.typ != protowire.VarintType {
				return errSlowPath
			}
			v, _ := protowire.ConsumeVarint(f.v)
			m.Size = int64(v)
		case 10:
			m.Protocol, err = t.str(&f)
		case 13:
			if err = f.msg(); err == nil {
				if m.HeaderMap == nil {
					m.HeaderMap = new(corev3.HeaderMap)
				}
				err = decodeHeaderMap(f.v, m.HeaderMap, &t)
			}
		default: // query, fragment, body, raw_body and unknown fields
			rest = append(rest, f.raw...)
		}
		if err != nil {
			return err
		}
	}
	return merge(rest, m, 3)
}

// count is how many times field num occurs in b, or 0 on malformed data.
func count(b []byte, num protowire.Number) int {
	c := 0
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return 0
		}
		if f.num == num {
			c++
		}
		b = b[n:]
	}
	return c
}

// decodeStringEntry reads a map<string, string> entry, as substrings of t
// when it is not nil. Other fields in an entry are skipped, as the
// protobuf runtime skips them.
func decodeStringEntry(b []byte, t *text) (k, v string, err error) {
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return "", "", errSlowPath
		}
		b = b[n:]
		switch {
		case f.num == 1 && t != nil:
			k, err = t.str(&f)
		case f.num == 1:
			k, err = f.str()
		case f.num == 2 && t != nil:
			v, err = t.str(&f)
		case f.num == 2:
			v, err = f.str()
		}
		if err != nil {
			return "", "", err
		}
	}
	return k, v, nil
}

// decodeHeaderMap reads raw headers, their strings as substrings of t and
// their raw values as slices of one copy of t's bytes.
func decodeHeaderMap(b []byte, m *corev3.HeaderMap, t *text) error {
	// One allocation for all the headers, not one each.
	vals := make([]corev3.HeaderValue, count(b, 1))
	if m.Headers == nil {
		m.Headers = make([]*corev3.HeaderValue, 0, len(vals))
	}
	var rest []byte
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		if f.num != 1 {
			rest = append(rest, f.raw...)
			continue
		}
		if err := f.msg(); err != nil {
			return err
		}
		var hv *corev3.HeaderValue
		if len(vals) > 0 {
			hv, vals = &vals[0], vals[1:]
		} else { // only when count gave up on malformed data, which fails below
			hv = new(corev3.HeaderValue)
		}
		if err := decodeHeaderValue(f.v, hv, t); err != nil {
			return err
		}
		m.Headers = append(m.Headers, hv)
	}
	return merge(rest, m, 4)
}

func decodeHeaderValue(b []byte, m *corev3.HeaderValue, t *text) error {
	var rest []byte
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		var err error
		switch f.num {
		case 1:
			m.Key, err = t.str(&f)
		case 2:
			m.Value, err = t.str(&f)
		case 3:
			if err = f.msg(); err == nil {
				m.RawValue = t.bytes(&f)
			}
		default:
			rest = append(rest, f.raw...)
		}
		if err != nil {
			return err
		}
	}
	return merge(rest, m, 5)
}

func decodePeer(b []byte, m *authv3.AttributeContext_Peer) error {
	var rest []byte
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		var err error
		switch f.num {
		case 1:
			if err = f.msg(); err == nil {
				if m.Address == nil {
					m.Address = new(corev3.Address)
				}
				err = decodeAddress(f.v, m.Address)
			}
		case 2:
			m.Service, err = f.str()
		case 3:
			if err = f.msg(); err == nil {
				var k, v string
				if k, v, err = decodeStringEntry(f.v, nil); err == nil {
					if m.Labels == nil {
						m.Labels = make(map[string]string)
					}
					m.Labels[k] = v
				}
			}
		case 4:
			m.Principal, err = f.str()
		case 5:
			m.Certificate, err = f.str()
		default:
			rest = append(rest, f.raw...)
		}
		if err != nil {
			return err
		}
	}
	return merge(rest, m, 2)
}

// decodeAddress reads a socket address; a pipe or internal address goes to
// the runtime. Both in one message (a oneof, where the last one wins) goes
// to the slow path.
func decodeAddress(b []byte, m *corev3.Address) error {
	var rest []byte
	socket, other := false, false
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		switch f.num {
		case 1:
			if err := f.msg(); err != nil {
				return err
			}
			socket = true
			sa, ok := m.Address.(*corev3.Address_SocketAddress)
			if !ok {
				sa = &corev3.Address_SocketAddress{SocketAddress: new(corev3.SocketAddress)}
				m.Address = sa
			}
			if err := decodeSocketAddress(f.v, sa.SocketAddress); err != nil {
				return err
			}
		case 2, 3:
			other = true
			rest = append(rest, f.raw...)
		default:
			rest = append(rest, f.raw...)
		}
	}
	if socket && other {
		return errSlowPath
	}
	return merge(rest, m, 3)
}

func decodeSocketAddress(b []byte, m *corev3.SocketAddress) error {
	var rest []byte
	for len(b) > 0 {
		f, n := next(b)
		if n < 0 {
			return errSlowPath
		}
		b = b[n:]
		var err error
		switch f.num {
		case 1, 3:
			if f.typ != protowire.VarintType {
				return errSlowPath
			}
			v, _ := protowire.ConsumeVarint(f.v)
			if f.num == 1 {
				m.Protocol = corev3.SocketAddress_Protocol(int32(v))
			} else {
				m.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(v)}
			}
		case 2:
			m.Address, err = f.str()
		case 4: // named_port: the other side of the port oneof
			return errSlowPath
		default:
			rest = append(rest, f.raw...)
		}
		if err != nil {
			return err
		}
	}
	return merge(rest, m, 4)
}
