package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// Request is the view of a request that extractors read.
type Request interface {
	// Header returns the value of a lower-case header name.
	Header(name string) (string, bool)
	// Claim returns a claim of the JWT that Envoy's jwt_authn verified, looked
	// up by dotted path under the named payload_in_metadata key ("" for any).
	// ok is false when absent; isString is false when present but not a string.
	Claim(payloadKey, path string) (value string, ok, isString bool)
	// Principal is the peer's mTLS / SPIFFE identity, "" when none.
	Principal() string
}

// Kind says what a credential is.
type Kind uint8

const (
	// None: no extractor found a credential.
	None Kind = iota
	// APIKey: Value is the hex SHA-256 digest of the key.
	APIKey
	// Subject: Value is a subject id taken from a claim, principal or header.
	Subject
	// Malformed: a credential was present but unusable (for example a claim of the wrong type).
	Malformed
)

// Credential is what an extractor found.
type Credential struct {
	Kind Kind
	// Value is a digest for APIKey, the subject id for Subject, "" otherwise.
	Value string
	// From names the extractor, for logs: "header:x-api-key", "bearer", "jwt:sub", "principal".
	From string
}

// KeyID is a short, non-reversible handle on an API-key digest for logs and
// support tickets: the first 12 hex digits.
func (c Credential) KeyID() string {
	if c.Kind == APIKey && len(c.Value) >= 12 {
		return c.Value[:12]
	}
	return ""
}

// Extractor finds one kind of credential.
type Extractor interface {
	Extract(r Request) Credential
}

// Chain tries extractors in order; the first credential found wins.
// One exception: two different API keys in one request (say x-api-key and
// a Bearer key that disagree) are refused as Malformed rather than
// resolved by order, because a client that sends both cannot be sure which
// account it is charged to, and a proxy that adds one must not be
// silently overridden by the other.
type Chain []Extractor

// Extract implements Extractor.
func (ch Chain) Extract(r Request) Credential {
	for i, x := range ch {
		c := x.Extract(r)
		if c.Kind == None {
			continue
		}
		if c.Kind == APIKey {
			for _, y := range ch[i+1:] {
				if d := y.Extract(r); d.Kind == APIKey && d.Value != c.Value {
					return Credential{Kind: Malformed, From: c.From + "+" + d.From}
				}
			}
		}
		return c
	}
	return Credential{}
}

// HashKey returns the lower-case hex SHA-256 digest of an API key: the only
// form in which tollgate holds, compares and looks up keys.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	var buf [2 * sha256.Size]byte
	hex.Encode(buf[:], sum[:])
	return string(buf[:])
}

// HeaderKey reads an API key from a header.
type HeaderKey struct {
	Name string // lower-case, for example "x-api-key"
	from string
}

// NewHeaderKey returns an extractor for the API key in header name.
func NewHeaderKey(name string) *HeaderKey {
	name = strings.ToLower(name)
	return &HeaderKey{Name: name, from: "header:" + name}
}

// Extract implements Extractor.
func (h *HeaderKey) Extract(r Request) Credential {
	v, ok := r.Header(h.Name)
	if v = strings.TrimSpace(v); !ok || v == "" {
		return Credential{}
	}
	return Credential{Kind: APIKey, Value: HashKey(v), From: h.from}
}

// Bearer reads an API key from "Authorization: Bearer <key>". A token
// shaped like a JWT (eyJ….….…) is not an API key and is left to the jwt
// extractor, so the order of the two does not matter and a forwarded JWT
// never conflicts with an x-api-key.
type Bearer struct{}

// looksLikeJWT reports a compact JWS: base64url JSON header, payload, signature.
func looksLikeJWT(tok string) bool {
	return strings.HasPrefix(tok, "eyJ") && strings.Count(tok, ".") == 2
}

// Extract implements Extractor.
func (Bearer) Extract(r Request) Credential {
	v, ok := r.Header("authorization")
	if !ok {
		return Credential{}
	}
	v = strings.TrimSpace(v)
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return Credential{}
	}
	tok := strings.TrimSpace(v[len(scheme):])
	if tok == "" || looksLikeJWT(tok) {
		return Credential{}
	}
	return Credential{Kind: APIKey, Value: HashKey(tok), From: "bearer"}
}

// JWTClaim reads the subject from a claim of a JWT that Envoy's jwt_authn
// filter already verified and put in metadata (payload_in_metadata).
type JWTClaim struct {
	PayloadKey string // the payload_in_metadata name; "" accepts any
	Claim      string // dotted path, default "sub"
	from       string
}

// NewJWTClaim returns an extractor for claim under payloadKey.
func NewJWTClaim(payloadKey, claim string) *JWTClaim {
	if claim == "" {
		claim = "sub"
	}
	return &JWTClaim{PayloadKey: payloadKey, Claim: claim, from: "jwt:" + claim}
}

// Extract implements Extractor.
func (j *JWTClaim) Extract(r Request) Credential {
	v, ok, isString := r.Claim(j.PayloadKey, j.Claim)
	switch {
	case !ok:
		return Credential{}
	case !isString || v == "":
		return Credential{Kind: Malformed, From: j.from}
	}
	return Credential{Kind: Subject, Value: v, From: j.from}
}

// Principal takes the subject from the mTLS peer identity (for example a SPIFFE id).
type Principal struct{}

// Extract implements Extractor.
func (Principal) Extract(r Request) Credential {
	if p := r.Principal(); p != "" {
		return Credential{Kind: Subject, Value: p, From: "principal"}
	}
	return Credential{}
}

// TrustedHeader takes the subject id from a header that an earlier hop set,
// for example Istio's RequestAuthentication outputClaimToHeaders. Anyone can
// send a header, so use it only behind a hop that overwrites it.
type TrustedHeader struct {
	Name string
	from string
}

// NewTrustedHeader returns an extractor for a subject id in header name.
func NewTrustedHeader(name string) *TrustedHeader {
	name = strings.ToLower(name)
	return &TrustedHeader{Name: name, from: "trusted_header:" + name}
}

// Extract implements Extractor.
func (t *TrustedHeader) Extract(r Request) Credential {
	v, ok := r.Header(t.Name)
	if v = strings.TrimSpace(v); !ok || v == "" {
		return Credential{}
	}
	return Credential{Kind: Subject, Value: v, From: t.from}
}

// Spec is one entry of the identity list in the config file. It is written
// either as a bare name ("- bearer") or as a one-key mapping with options
// ("- api_key: {header: x-api-key}").
type Spec struct {
	Kind    string // api_key, bearer, jwt, principal, trusted_header
	Header  string // api_key, trusted_header
	Claim   string // jwt; default "sub"
	Payload string // jwt: the payload_in_metadata name; "" accepts any
}

// specOptions are the option keys each kind accepts.
var specOptions = map[string][]string{
	"api_key":        {"header"},
	"bearer":         nil,
	"jwt":            {"claim", "payload"},
	"principal":      nil,
	"trusted_header": {"header"},
}

// UnmarshalYAML accepts both spellings and rejects unknown kinds and options.
func (s *Spec) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		s.Kind = n.Value
	case yaml.MappingNode:
		if len(n.Content) != 2 {
			return fmt.Errorf("line %d: an identity entry has exactly one kind", n.Line)
		}
		s.Kind = n.Content[0].Value
		opts := n.Content[1]
		if opts.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(opts.Content); i += 2 {
				k, v := opts.Content[i], opts.Content[i+1]
				if !slices.Contains(specOptions[s.Kind], k.Value) {
					return fmt.Errorf("line %d: field %s not valid for identity %s", k.Line, k.Value, s.Kind)
				}
				switch k.Value {
				case "header":
					s.Header = v.Value
				case "claim":
					s.Claim = v.Value
				case "payload":
					s.Payload = v.Value
				}
			}
		} else if opts.Tag != "!!null" {
			return fmt.Errorf("line %d: options of identity %s must be a mapping", opts.Line, s.Kind)
		}
	default:
		return fmt.Errorf("line %d: an identity entry is a name or a one-key mapping", n.Line)
	}
	if _, ok := specOptions[s.Kind]; !ok {
		return fmt.Errorf("line %d: unknown identity kind %q (want api_key, bearer, jwt, principal or trusted_header)", n.Line, s.Kind)
	}
	return nil
}

// DefaultSpecs is the list used when the config gives none: an API key in
// x-api-key, then a Bearer key.
func DefaultSpecs() []Spec {
	return []Spec{{Kind: "api_key", Header: "x-api-key"}, {Kind: "bearer"}}
}

// Build turns the config list into a Chain. The error names the entry's index.
func Build(specs []Spec) (Chain, error) {
	ch := make(Chain, 0, len(specs))
	for i, s := range specs {
		switch s.Kind {
		case "api_key":
			h := s.Header
			if h == "" {
				h = "x-api-key"
			}
			ch = append(ch, NewHeaderKey(h))
		case "bearer":
			ch = append(ch, Bearer{})
		case "jwt":
			ch = append(ch, NewJWTClaim(s.Payload, s.Claim))
		case "principal":
			ch = append(ch, Principal{})
		case "trusted_header":
			if s.Header == "" {
				return nil, fmt.Errorf("[%d].trusted_header.header: is required", i)
			}
			ch = append(ch, NewTrustedHeader(s.Header))
		default:
			return nil, fmt.Errorf("[%d]: unknown identity kind %q", i, s.Kind)
		}
	}
	return ch, nil
}
