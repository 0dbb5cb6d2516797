package mpp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash"
	"strings"
	"sync"
	"time"
)

// Header names of the Payment scheme.
const (
	HeaderWWWAuthenticate = "WWW-Authenticate"
	HeaderAuthorization   = "Authorization"
	HeaderPaymentReceipt  = "Payment-Receipt"
	HeaderAcceptPayment   = "Accept-Payment"
)

// Scheme is the authentication scheme name (matched case-insensitively on
// input, as RFC 9110 §11.1 says of every auth-scheme).
const Scheme = "Payment"

// IntentCharge is the one-time payment intent (draft-payment-intent-charge).
const IntentCharge = "charge"

// MinKeyBytes is the shortest challenge-binding key NewChallenger accepts:
// the HMAC-SHA256 output size, so the key is not the weak point.
const MinKeyBytes = 32

// expiresLayout is RFC 3339 in UTC at whole seconds, as the draft's
// examples write it ("2025-01-15T12:05:00Z").
const expiresLayout = "2006-01-02T15:04:05Z"

// b64url is the draft's encoding of request, opaque, the credential and the
// receipt: RFC 4648 §5 without padding. Strict refuses non-zero trailing
// bits, so each value has exactly one spelling.
var b64url = base64.RawURLEncoding.Strict()

// Challenge is one Payment challenge: the auth-params of a
// `WWW-Authenticate: Payment` value, and what a credential echoes back.
// Request and Opaque are the base64url text as on the wire (the HMAC
// covers that text, not the JSON inside).
type Challenge struct {
	ID          string
	Realm       string
	Method      string
	Intent      string
	Request     string // base64url (no padding) of the JCS-serialized request JSON
	Expires     string // RFC 3339; always set by a Challenger
	Digest      string // RFC 9530 content digest of the request body, when bound
	Opaque      string // base64url of JCS JSON {string: string}, server correlation data
	Description string // display only; not covered by the binding
}

// EncodedRequest is a request already serialized as the draft wants it
// (JCS, then base64url without padding). Build one with EncodeRequest when
// the offer is known at load, so Challenge does no JSON work per 402.
type EncodedRequest string

// EncodeRequest serializes a method's request object (a struct or map that
// marshals to a JSON object) with JCS and base64url.
func EncodeRequest(v any) (EncodedRequest, error) {
	b, err := canonicalJSON(v)
	if err != nil {
		return "", err
	}
	if len(b) == 0 || b[0] != '{' {
		return "", errors.New("mpp: a request must be a JSON object")
	}
	return EncodedRequest(b64url.EncodeToString(b)), nil
}

// encodeOpaque serializes opaque correlation data (§5.1.2: a flat
// string-to-string map, JCS, base64url).
func encodeOpaque(m map[string]string) (string, error) {
	if len(m) == 0 {
		return "", nil
	}
	b, err := canonicalJSON(m)
	if err != nil {
		return "", err
	}
	return b64url.EncodeToString(b), nil
}

// Params are the parts of a challenge beyond method, intent and request,
// for Issue. All are optional.
type Params struct {
	Description string            // display only
	Digest      string            // RFC 9530 digest of the request body the credential must come with
	Opaque      map[string]string // echoed unchanged by the client; bound by the HMAC
}

// Challenger issues Payment challenges whose id is an HMAC-SHA256 of the
// challenge parameters (the draft's "Recommended: HMAC-SHA256 Binding"),
// and checks the challenges echoed in credentials. It keeps no state per
// challenge. Safe for concurrent use.
type Challenger struct {
	err       error
	realm     string
	ttl       time.Duration
	now       func() time.Time
	realmAttr string // `, realm="…"`, escaped once
	macs      []*macPool
}

// macPool reuses HMAC states and input buffers so issuing a challenge does
// not allocate for them.
type macPool struct{ sync.Pool }

type macState struct {
	h   hash.Hash
	buf []byte
	sum [sha256.Size]byte
}

func newMacPool(key []byte) *macPool {
	k := append([]byte(nil), key...)
	p := &macPool{}
	p.New = func() any { return &macState{h: hmac.New(sha256.New, k), buf: make([]byte, 0, 512)} }
	return p
}

// ConfigError is a setting ValidateConfig refuses: Field is "key",
// "realm" or "ttl", so a config loader can name its own field.
type ConfigError struct {
	Field, Reason string
}

func (e *ConfigError) Error() string { return "mpp: " + e.Field + ": " + e.Reason }

// MaxTTL bounds a challenge's lifetime: an evm authorization may stay open
// as long, and facilitators take at most a day.
const MaxTTL = 24 * time.Hour

// ValidateConfig checks what NewChallenger is given, so a bad key or realm
// fails at load with a message naming the field. Errors are *ConfigError.
func ValidateConfig(key []byte, realm string, ttl time.Duration) error {
	if len(key) < MinKeyBytes {
		return &ConfigError{"key", "want at least 32 bytes"}
	}
	if realm == "" || !isHeaderText(realm) {
		return &ConfigError{"realm", "want printable ASCII (the draft: realm SHOULD be ASCII)"}
	}
	if ttl < time.Second || ttl > MaxTTL {
		return &ConfigError{"ttl", "want one second to 24 hours"}
	}
	return nil
}

// NewChallenger returns a Challenger that binds challenges with key, names
// realm as their protection space, lets them live ttl (the `expires`
// auth-param is now()+ttl, at whole seconds) and reads time from now. A
// configuration ValidateConfig refuses makes every Challenge and Check fail
// with that error.
func NewChallenger(key []byte, realm string, ttl time.Duration, now func() time.Time) *Challenger {
	if now == nil {
		now = time.Now
	}
	c := &Challenger{err: ValidateConfig(key, realm, ttl), realm: realm, ttl: ttl, now: now}
	c.realmAttr = `, realm="` + quoteText(realm) + `"`
	c.macs = []*macPool{newMacPool(key)}
	return c
}

// WithPreviousKeys returns a copy of c that issues with c's key but also
// accepts challenges bound with any of keys, so challenges issued before a
// key rotation stay valid until they expire (the draft,
// "Challenge-Binding Secret Management").
func (c *Challenger) WithPreviousKeys(keys ...[]byte) *Challenger {
	cp := *c
	cp.macs = append([]*macPool{c.macs[0]}, make([]*macPool, 0, len(keys))...)
	for _, k := range keys {
		if len(k) < MinKeyBytes {
			cp.err = errors.New("mpp: previous key: want at least 32 bytes")
		}
		cp.macs = append(cp.macs, newMacPool(k))
	}
	return &cp
}

// Realm is the protection space the challenges name.
func (c *Challenger) Realm() string { return c.realm }

// Challenge returns one `WWW-Authenticate` value offering to be paid with
// method and intent for request (an EncodedRequest, or a value EncodeRequest
// accepts), and its id:
//
//	Payment id="…", realm="…", method="…", intent="…", request="…", expires="…"
//
// Each method is its own challenge: a 402 offering several adds one
// WWW-Authenticate header per value (the draft, "Multiple Payment
// Options"). With an EncodedRequest it does no JSON work and allocates
// the header only (the id is a slice of it), beside boxing the request.
func (c *Challenger) Challenge(method, intent string, request any) (headerValue, id string, err error) {
	ch, h, err := c.issue(method, intent, request, Params{})
	return h, ch.ID, err
}

// Issue is Challenge with a description, a body digest or opaque data, and
// returns the parsed challenge beside its header value.
func (c *Challenger) Issue(method, intent string, request any, p Params) (Challenge, string, error) {
	ch, h, err := c.issue(method, intent, request, p)
	return ch, h, err
}

func (c *Challenger) issue(method, intent string, request any, p Params) (Challenge, string, error) {
	if c.err != nil {
		return Challenge{}, "", c.err
	}
	if !isMethodID(method) {
		return Challenge{}, "", errors.New("mpp: method: want lower-case letters a-z")
	}
	if !isIntent(intent) {
		return Challenge{}, "", errors.New("mpp: intent: want letters, digits and '-'")
	}
	var req string
	switch r := request.(type) {
	case EncodedRequest:
		if r == "" || !isBase64URL(string(r)) {
			return Challenge{}, "", errors.New("mpp: request: not base64url")
		}
		req = string(r)
	default:
		e, err := EncodeRequest(request)
		if err != nil {
			return Challenge{}, "", err
		}
		req = string(e)
	}
	if p.Description != "" && !isHeaderText(p.Description) {
		return Challenge{}, "", errors.New("mpp: description: want printable ASCII")
	}
	if p.Digest != "" && (!isHeaderText(p.Digest) || strings.ContainsAny(p.Digest, `"\`)) {
		return Challenge{}, "", errors.New("mpp: digest: want an RFC 9530 field value")
	}
	opaque, err := encodeOpaque(p.Opaque)
	if err != nil {
		return Challenge{}, "", err
	}

	var expBuf [len(expiresLayout)]byte
	exp := c.now().Add(c.ttl).UTC().AppendFormat(expBuf[:0], expiresLayout)

	st := c.macs[0].Get().(*macState)
	mac := st.compute(c.realm, method, intent, req, exp, p.Digest, opaque)
	var idBuf [43]byte // base64url of 32 bytes, no padding
	b64url.Encode(idBuf[:], mac)
	c.macs[0].Put(st)

	var b strings.Builder
	b.Grow(len(`Payment id=""`) + len(idBuf) + len(c.realmAttr) + len(`, method=""`) + len(method) +
		len(`, intent=""`) + len(intent) + len(`, request=""`) + len(req) + len(`, expires=""`) + len(exp) +
		optLen("digest", p.Digest) + optLen("opaque", opaque) + optLen("description", p.Description) + strings.Count(p.Description, `"`) + strings.Count(p.Description, `\`))
	b.WriteString(`Payment id="`)
	idStart := b.Len()
	b.Write(idBuf[:])
	idEnd := b.Len()
	b.WriteByte('"')
	b.WriteString(c.realmAttr)
	b.WriteString(`, method="`)
	b.WriteString(method)
	b.WriteString(`", intent="`)
	b.WriteString(intent)
	b.WriteString(`", request="`)
	b.WriteString(req)
	b.WriteByte('"')
	// mppx's order: the optional parameters alphabetically after request.
	if p.Description != "" {
		b.WriteString(`, description="` + quoteText(p.Description) + `"`)
	}
	if p.Digest != "" {
		b.WriteString(`, digest="` + p.Digest + `"`)
	}
	b.WriteString(`, expires="`)
	expStart := b.Len()
	b.Write(exp)
	expEnd := b.Len()
	b.WriteByte('"')
	if opaque != "" {
		b.WriteString(`, opaque="` + opaque + `"`)
	}
	h := b.String()
	return Challenge{
		ID: h[idStart:idEnd], Realm: c.realm, Method: method, Intent: intent, Request: req,
		Expires: h[expStart:expEnd], Digest: p.Digest, Opaque: opaque, Description: p.Description,
	}, h, nil
}

func optLen(name, v string) int {
	if v == "" {
		return 0
	}
	return len(`, ="`) + len(name) + len(v) + 1
}

// compute is the draft's HMAC input, seven fixed slots joined by '|'
// (§5.1.2.1.1, "Recommended: HMAC-SHA256 Binding"):
//
//	input = "|".join([realm, method, intent, request_b64url,
//	                  expires or "", digest or "", opaque_b64url or ""])
//	id = base64url(HMAC-SHA256(server_secret, input))
func (st *macState) compute(realm, method, intent, request string, expires []byte, digest, opaque string) []byte {
	b := st.buf[:0]
	b = append(b, realm...)
	b = append(b, '|')
	b = append(b, method...)
	b = append(b, '|')
	b = append(b, intent...)
	b = append(b, '|')
	b = append(b, request...)
	b = append(b, '|')
	b = append(b, expires...)
	b = append(b, '|')
	b = append(b, digest...)
	b = append(b, '|')
	b = append(b, opaque...)
	st.h.Reset()
	st.h.Write(b)
	if cap(b) <= 4096 { // keep the buffer; drop one a huge challenge grew
		st.buf = b
	}
	return st.h.Sum(st.sum[:0])
}

// Check verifies that the challenge a credential echoes was issued by this
// Challenger and is still valid: same realm; its id is the HMAC, under our
// key (or a previous key), of exactly the echoed realm, method, intent,
// request, expires, digest and opaque (compared in constant time); and its
// `expires` has not passed. A changed amount, method, realm or anything
// else bound fails the HMAC. Check keeps no state: it does not stop a
// challenge from being used twice (the method's proof must be single-use,
// the draft's "Replay Protection"), nor does it know which resource the
// challenge was for: use CheckOffer for that, or bind the resource in
// opaque. The digest, when echoed, must be compared by the caller with the
// body it came with.
func (c *Challenger) Check(cred Credential) error {
	if c.err != nil {
		return c.err
	}
	ch := &cred.Challenge
	if ch.Realm != c.realm {
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.realm", Detail: "not this server's realm"}
	}
	var id [sha256.Size]byte
	if len(ch.ID) != 43 {
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.id", Detail: "not issued here"}
	}
	if n, err := b64url.Decode(id[:], []byte(ch.ID)); err != nil || n != len(id) {
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.id", Detail: "not issued here"}
	}
	ok := false
	for _, p := range c.macs {
		st := p.Get().(*macState)
		mac := st.compute(ch.Realm, ch.Method, ch.Intent, ch.Request, []byte(ch.Expires), ch.Digest, ch.Opaque)
		ok = hmac.Equal(mac, id[:]) || ok
		p.Put(st)
	}
	if !ok {
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.id", Detail: "not bound to these parameters by our key"}
	}
	// Every challenge we issue has expires; one without was not ours
	// (or was issued by other code sharing the key), so it has no end.
	if ch.Expires == "" {
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.expires", Detail: "missing"}
	}
	exp, err := time.Parse(time.RFC3339, ch.Expires)
	if err != nil {
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.expires", Detail: "not RFC 3339"}
	}
	if !c.now().Before(exp) {
		return &Error{Code: CodePaymentExpired, Field: "challenge.expires", Detail: "the challenge has expired"}
	}
	return nil
}

// CheckOffer is Check, and then that the challenge offered this method,
// intent and request: the offer the caller would make for this resource
// now. It stops a challenge issued for a cheap resource from paying for a
// dear one.
func (c *Challenger) CheckOffer(cred Credential, method, intent string, request any) error {
	if err := c.Check(cred); err != nil {
		return err
	}
	var req string
	switch r := request.(type) {
	case EncodedRequest:
		req = string(r)
	default:
		e, err := EncodeRequest(request)
		if err != nil {
			return err
		}
		req = string(e)
	}
	ch := &cred.Challenge
	switch {
	case ch.Method != method:
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.method", Detail: "not the method offered for this resource"}
	case ch.Intent != intent:
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.intent", Detail: "not the intent offered for this resource"}
	case ch.Request != req:
		return &Error{Code: CodeInvalidChallenge, Field: "challenge.request", Detail: "not the request offered for this resource"}
	}
	return nil
}

// isMethodID is the draft's payment-method-id = 1*LOWERALPHA.
func isMethodID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 'a' || s[i] > 'z' {
			return false
		}
	}
	return true
}

// isIntent is the draft's intent = 1*( ALPHA / DIGIT / "-" ).
func isIntent(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isBase64URL is the draft's base64url-nopad = 1*( ALPHA / DIGIT / "-" / "_" ).
func isBase64URL(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// isHeaderText is printable ASCII and space: what can sit in a
// quoted-string without a client having to guess at a charset.
func isHeaderText(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// quoteText escapes '"' and '\' for a quoted-string (RFC 9110 §5.6.4).
func quoteText(s string) string {
	if !strings.ContainsAny(s, `"\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
