package mpp

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// canonicalJSON returns the JSON Canonicalization Scheme (RFC 8785) form of
// v: v is marshalled with encoding/json, read back, and written again with
// members sorted by their UTF-16 code units, no insignificant whitespace,
// strings escaped only where JSON requires it, and numbers in the shortest
// ECMAScript form. The draft requires JCS for `request` and `opaque`
// (§5.1.1, "request"): the HMAC covers the base64url text, and the client
// SDK (mppx) re-serializes the request with JCS before echoing it, so any
// other serialization would make our own challenges fail to verify.
func canonicalJSON(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return canonicalizeRaw(raw)
}

// canonicalizeRaw canonicalizes one JSON text.
func canonicalizeRaw(raw []byte) ([]byte, error) {
	if !utf8.Valid(raw) {
		return nil, errors.New("mpp: JSON is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var val any
	if err := dec.Decode(&val); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(raw))
	if err := writeCanonical(&buf, val); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeCanonical(buf *bytes.Buffer, v any) error {
	switch v := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(v))
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return errors.New("mpp: JSON number out of IEEE 754 double range")
		}
		buf.WriteString(es6Number(f))
	case string:
		writeCanonicalString(buf, v)
	case []any:
		buf.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeCanonical(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareUTF16)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeCanonicalString(buf, k)
			buf.WriteByte(':')
			if err := writeCanonical(buf, v[k]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return errors.New("mpp: unexpected JSON value")
	}
	return nil
}

// compareUTF16 orders strings by UTF-16 code units (RFC 8785 §3.2.3). It
// differs from byte order only between supplementary-plane characters and
// U+E000..U+FFFF, but the draft's interop depends on the exact order.
func compareUTF16(a, b string) int {
	if isASCII(a) && isASCII(b) {
		return strings.Compare(a, b)
	}
	return slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(b)))
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// writeCanonicalString escapes as RFC 8785 §3.2.2.2 says: the two-character
// escapes for \b \t \n \f \r " and \, \u00xx (lower-case hex) for the other
// control characters, and every other character as itself.
func writeCanonicalString(buf *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	buf.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			buf.WriteString(`\"`)
		case '\\':
			buf.WriteString(`\\`)
		case '\b':
			buf.WriteString(`\b`)
		case '\t':
			buf.WriteString(`\t`)
		case '\n':
			buf.WriteString(`\n`)
		case '\f':
			buf.WriteString(`\f`)
		case '\r':
			buf.WriteString(`\r`)
		default:
			if c < 0x20 {
				buf.WriteString(`\u00`)
				buf.WriteByte(hex[c>>4])
				buf.WriteByte(hex[c&0xf])
			} else {
				buf.WriteByte(c)
			}
		}
	}
	buf.WriteByte('"')
}

// es6Number formats f as ECMAScript's Number.prototype.toString does, which
// RFC 8785 §3.2.2.3 adopts: the shortest digits that round-trip, plain
// notation for 1e-6 <= |f| < 1e21, exponent notation ("1e+21", "1.5e-7")
// outside it, and "0" for both zeros.
func es6Number(f float64) string {
	if f == 0 {
		return "0"
	}
	if f < 0 {
		return "-" + es6Number(-f)
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d[.ddd]e±xx
	mant, exp, _ := strings.Cut(e, "e")
	digits := strings.Replace(mant, ".", "", 1)
	x, _ := strconv.Atoi(exp)
	k, n := len(digits), x+1 // n: position of the decimal point
	switch {
	case k <= n && n <= 21:
		return digits + strings.Repeat("0", n-k)
	case 0 < n && n <= 21:
		return digits[:n] + "." + digits[n:]
	case -6 < n && n <= 0:
		return "0." + strings.Repeat("0", -n) + digits
	}
	sign := "+"
	if n-1 < 0 {
		sign = "-"
	}
	abs := n - 1
	if abs < 0 {
		abs = -abs
	}
	if k == 1 {
		return digits + "e" + sign + strconv.Itoa(abs)
	}
	return digits[:1] + "." + digits[1:] + "e" + sign + strconv.Itoa(abs)
}
