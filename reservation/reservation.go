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
	// ID is the request's x-request-id (or a random id when it has none):
	// with the token's signature it names the reservation.
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
type Signer struct{ key []byte }

// MinKeyBytes is the shortest key NewSigner takes.
const MinKeyBytes = 32

// NewSigner makes a Signer. The key must be the same on every replica that
// may settle another's reservations.
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < MinKeyBytes {
		return nil, errors.New("reservation key: at least 32 bytes are needed")
	}
	return &Signer{key: append([]byte(nil), key...)}, nil
}

const prefix = "v1."

// macBytes is how much of the HMAC-SHA256 a token carries (128 bits).
const macBytes = 16

// Sign returns r's token: "v1." base64url(JSON) "." base64url(MAC).
func (s *Signer) Sign(r *Reservation) string {
	body, _ := json.Marshal(r) // plain fields: cannot fail
	enc := base64.RawURLEncoding
	var b strings.Builder
	b.Grow(len(prefix) + enc.EncodedLen(len(body)) + 1 + enc.EncodedLen(macBytes))
	b.WriteString(prefix)
	payload := enc.EncodeToString(body)
	b.WriteString(payload)
	b.WriteByte('.')
	b.WriteString(enc.EncodeToString(s.mac(payload)))
	return b.String()
}

func (s *Signer) mac(payload string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(prefix))
	m.Write([]byte(payload))
	return m.Sum(nil)[:macBytes]
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
	if !hmac.Equal(got, s.mac(payload)) {
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

// NewID is a random reservation id, for a request without x-request-id.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
