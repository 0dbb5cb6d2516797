package authz

import (
	"errors"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The wire-format primitives Request.decode (decode_request.go) reads a
// CheckRequest with: one field at a time, strings kept as substrings of one copy of the
// request (invalid UTF-8 replaced, as lenientUnmarshal replaces it), and
// anything unexpected reported as errSlowPath, which sends the whole
// request to lenientUnmarshal.

// errSlowPath sends a request to proto.Unmarshal.
var errSlowPath = errors.New("authz: not on the fast path")

// field is one field of a message on the wire.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   []byte // the payload of a length-delimited field, else the raw value
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
	return field{num: num, typ: typ, v: v}, n
}

// merge hands the fields the decoder does not read to the protobuf
// runtime. depth is how many messages deep m is, for the recursion limit.
func merge(rest []byte, m proto.Message, depth int) error {
	if len(rest) == 0 {
		return nil
	}
	return proto.UnmarshalOptions{Merge: true, RecursionLimit: protowire.DefaultRecursionLimit - depth}.Unmarshal(rest, m)
}

// str is a string field's value, made valid UTF-8 (see validString).
func (f *field) str() (string, error) {
	if f.typ != protowire.BytesType {
		return "", errSlowPath
	}
	if !utf8.Valid(f.v) {
		return validString(f.v), nil
	}
	return string(f.v), nil
}

// validString is v with each run of bytes that is not UTF-8 replaced by
// U+FFFD. proto3 strings must be UTF-8, and Envoy does not check that it
// sends them so: a header value in Latin-1 is decoded, not refused. The
// replacement keeps everything derived from a request (a digest, a log
// field, a response header) valid UTF-8.
func validString(v []byte) string { return strings.ToValidUTF8(string(v), "\uFFFD") }

// text is the strings of one message: s holds the same bytes as b.
type text struct {
	b []byte
	s string
}

func newText(b []byte) text { return text{b: b, s: string(b)} }

// str is f.str, as a substring of t when f lies in t.b and is valid.
func (t *text) str(f *field) (string, error) {
	if f.typ != protowire.BytesType {
		return "", errSlowPath
	}
	if !utf8.Valid(f.v) {
		return validString(f.v), nil
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
