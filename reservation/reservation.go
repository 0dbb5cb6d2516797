// Package reservation is what a metered request's Check reserved, carried
// to its settlement in Envoy's dynamic metadata.
//
// The Check that admits a metered request spends its estimated cost and
// puts a signed token in the ext_authz filter's dynamic metadata (key
// "reservation"). When the response ends, Envoy's access log entry for the
// request carries the token back to whichever replica receives it, which
// settles it: no replica keeps reservation state. The token is signed with
// a key every replica shares, so that a forged one (sent to the access log
// service by anyone who can reach it) cannot release units it never
// reserved.
package reservation

import (
	"hash"
	"strconv"
	"sync"
	"unicode/utf8"
	"unsafe"

	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// Reservation is what one Check reserved.
type Reservation struct {
	// ID is the Check's decision id (random, one per decision): with
	// Route and Start it names the reservation and its usage event.
	ID       string `json:"i"`
	Subject  string `json:"s"`
	Customer string `json:"c,omitempty"`
	Route    string `json:"r"`
	Meter    string `json:"m"`
	// Estimate is the cost the Check spent on Counter.
	Estimate int64 `json:"e"`
	// Counter is the quota counter spent on (quota.Key), "" when the route
	// spends no quota; Reset is when its window ends.
	Counter string `json:"k,omitempty"`
	Reset   int64  `json:"x,omitempty"` // Unix seconds
	// Start is when the Check decided (Unix milliseconds).
	Start int64 `json:"t"`
}

// ResetTime is Reset as a time.
func (r *Reservation) ResetTime() time.Time { return time.Unix(r.Reset, 0) }

// StartTime is Start as a time.
func (r *Reservation) StartTime() time.Time { return time.UnixMilli(r.Start) }

// Signer signs and checks tokens with one key.
type Signer struct {
	key  []byte
	macs sync.Pool // of hash.Hash: hmac.New allocates its state each time
}

// MinKeyBytes is the shortest key NewSigner takes.
const MinKeyBytes = 32

// NewSigner makes a Signer. The key must be the same on every replica that
// may settle another's reservations.
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < MinKeyBytes {
		return nil, errors.New("reservation key: at least 32 bytes are needed")
	}
	s := &Signer{key: append([]byte(nil), key...)}
	s.macs.New = func() any { return hmac.New(sha256.New, s.key) }
	return s, nil
}

const prefix = "v1."

// macBytes is how much of the HMAC-SHA256 a token carries (128 bits).
const macBytes = 16

// Sign returns r's token: "v1." base64url(JSON) "." base64url(MAC). It
// runs on every metered Check: the JSON is written by hand, in one buffer.
func (s *Signer) Sign(r *Reservation) string {
	var stack [512]byte
	body := appendJSON(stack[:0], r)
	enc := base64.RawURLEncoding
	n := len(prefix) + enc.EncodedLen(len(body)) + 1 + enc.EncodedLen(macBytes)
	out := make([]byte, n)
	copy(out, prefix)
	p := len(prefix) + enc.EncodedLen(len(body))
	enc.Encode(out[len(prefix):p], body)
	out[p] = '.'
	var sum [sha256.Size]byte
	enc.Encode(out[p+1:], s.mac(out[len(prefix):p], sum[:0]))
	return unsafe.String(unsafe.SliceData(out), len(out)) // out is never written again
}

// mac is the token's MAC of payload (its base64 text), appended to b.
func (s *Signer) mac(payload, b []byte) []byte {
	h := s.macs.Get().(hash.Hash)
	h.Reset()
	h.Write([]byte(prefix))
	h.Write(payload)
	b = h.Sum(b)[:macBytes]
	s.macs.Put(h)
	return b
}

// appendJSON writes r as encoding/json would read it back.
func appendJSON(b []byte, r *Reservation) []byte {
	b = append(b, `{"i":`...)
	b = appendString(b, r.ID)
	b = append(b, `,"s":`...)
	b = appendString(b, r.Subject)
	if r.Customer != "" {
		b = append(b, `,"c":`...)
		b = appendString(b, r.Customer)
	}
	b = append(b, `,"r":`...)
	b = appendString(b, r.Route)
	b = append(b, `,"m":`...)
	b = appendString(b, r.Meter)
	b = append(b, `,"e":`...)
	b = strconv.AppendInt(b, r.Estimate, 10)
	if r.Counter != "" {
		b = append(b, `,"k":`...)
		b = appendString(b, r.Counter)
	}
	if r.Reset != 0 {
		b = append(b, `,"x":`...)
		b = strconv.AppendInt(b, r.Reset, 10)
	}
	b = append(b, `,"t":`...)
	b = strconv.AppendInt(b, r.Start, 10)
	return append(b, '}')
}

// appendString writes s as a JSON string: quotes, backslashes and control
// characters escaped, invalid UTF-8 as U+FFFD (as encoding/json reads it).
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// MaxTokenBytes bounds a token Verify reads.
const MaxTokenBytes = 4096

// Errors of Verify.
var (
	ErrMalformed = errors.New("reservation token is malformed")
	ErrForged    = errors.New("reservation token signature does not match")
)

// Verify checks tok's signature and returns its reservation.
func (s *Signer) Verify(tok string) (*Reservation, error) {
	if len(tok) > MaxTokenBytes {
		return nil, ErrMalformed
	}
	rest, ok := strings.CutPrefix(tok, prefix)
	if !ok {
		return nil, ErrMalformed
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok {
		return nil, ErrMalformed
	}
	enc := base64.RawURLEncoding
	got, err := enc.DecodeString(sig)
	if err != nil {
		return nil, ErrMalformed
	}
	var sum [sha256.Size]byte
	if !hmac.Equal(got, s.mac([]byte(payload), sum[:0])) {
		return nil, ErrForged
	}
	body, err := enc.DecodeString(payload)
	if err != nil {
		return nil, ErrMalformed
	}
	var r Reservation
	if err := json.Unmarshal(body, &r); err != nil || r.Subject == "" || r.Estimate < 0 {
		return nil, ErrMalformed
	}
	return &r, nil
}

// NewID is a random reservation id, for a decision without an id.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
