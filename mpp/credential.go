package mpp

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"
)

// MaxCredentialBytes bounds the base64url token of an `Authorization:
// Payment` value. The draft ("Size Considerations") asks servers to take
// credentials of at least 4 KiB; the mppx EVM credential is about 1.5 KiB.
const MaxCredentialBytes = 8 << 10

// maxJSONDepth bounds nesting in a credential (payloads are method-defined).
const maxJSONDepth = 16

// Credential is a parsed `Authorization: Payment` value (§5.2,
// "Credentials (Authorization)"): the echoed challenge, the optional payer
// identifier and the method-specific proof.
type Credential struct {
	Challenge Challenge
	Source    string          // payer, e.g. a DID; optional and unverified
	Payload   json.RawMessage // a JSON object, checked only for syntax here
}

// ParseCredential decodes an Authorization header value:
//
//	credentials     = "Payment" 1*SP base64url-nopad
//
// strictly: the scheme (any case), one or more spaces, and one token of at
// most MaxCredentialBytes in canonical unpadded base64url (no '=', no '+' or
// '/', no whitespace, no stray trailing bits); the JSON inside valid UTF-8,
// one object, nesting at most 16, no member name twice in an object,
// nothing after it. `challenge` (an object of strings with non-empty id,
// realm, method, intent and request) and `payload` (an object) are
// required; `source` is an optional string; members are matched by exact
// name and unknown ones ignored, as the draft's "Versioning" asks. Errors
// are *Error with CodeMalformedCredential and never contain the input.
func ParseCredential(authorization string) (Credential, error) {
	if len(authorization) < len(Scheme) || !strings.EqualFold(authorization[:len(Scheme)], Scheme) {
		return Credential{}, malformed("scheme", "not the Payment scheme")
	}
	token := authorization[len(Scheme):]
	if token == "" || token[0] != ' ' {
		return Credential{}, malformed("scheme", "want a space after Payment")
	}
	token = strings.TrimLeft(token, " ")
	if len(token) > MaxCredentialBytes {
		return Credential{}, malformed("credential", "larger than 8 KiB")
	}
	if !isBase64URL(token) {
		return Credential{}, malformed("credential", "not one unpadded base64url token")
	}
	raw, err := b64url.DecodeString(token)
	if err != nil {
		return Credential{}, malformed("credential", "not canonical base64url")
	}
	return parseCredentialJSON(raw)
}

func parseCredentialJSON(raw []byte) (Credential, error) {
	if err := checkJSON(raw); err != nil {
		return Credential{}, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil || top == nil {
		return Credential{}, malformed("credential", "not a JSON object")
	}
	var cred Credential
	chRaw, ok := top["challenge"]
	if !ok {
		return Credential{}, malformed("challenge", "missing")
	}
	var ch map[string]json.RawMessage
	if err := json.Unmarshal(chRaw, &ch); err != nil || ch == nil {
		return Credential{}, malformed("challenge", "not an object")
	}
	fields := []struct {
		name     string
		dst      *string
		required bool
	}{
		{"id", &cred.Challenge.ID, true},
		{"realm", &cred.Challenge.Realm, true},
		{"method", &cred.Challenge.Method, true},
		{"intent", &cred.Challenge.Intent, true},
		{"request", &cred.Challenge.Request, true},
		{"expires", &cred.Challenge.Expires, false},
		{"digest", &cred.Challenge.Digest, false},
		{"opaque", &cred.Challenge.Opaque, false},
		{"description", &cred.Challenge.Description, false},
	}
	for _, f := range fields {
		v, ok := ch[f.name]
		if !ok {
			if f.required {
				return Credential{}, malformed("challenge."+f.name, "missing")
			}
			continue
		}
		if err := unmarshalString(v, f.dst); err != nil {
			return Credential{}, malformed("challenge."+f.name, "want a string")
		}
		if f.required && *f.dst == "" {
			return Credential{}, malformed("challenge."+f.name, "empty")
		}
	}
	c := &cred.Challenge
	switch {
	case !isMethodID(c.Method):
		return Credential{}, malformed("challenge.method", "want lower-case letters a-z")
	case !isIntent(c.Intent):
		return Credential{}, malformed("challenge.intent", "want letters, digits and '-'")
	case !isBase64URL(c.Request):
		return Credential{}, malformed("challenge.request", "want base64url")
	case c.Opaque != "" && !isBase64URL(c.Opaque):
		return Credential{}, malformed("challenge.opaque", "want base64url")
	}
	if v, ok := top["source"]; ok {
		if err := unmarshalString(v, &cred.Source); err != nil {
			return Credential{}, malformed("source", "want a string")
		}
	}
	p, ok := top["payload"]
	if !ok {
		return Credential{}, malformed("payload", "missing")
	}
	if len(p) == 0 || p[0] != '{' {
		return Credential{}, malformed("payload", "not an object")
	}
	cred.Payload = p
	return cred, nil
}

// unmarshalString decodes a JSON string (not null, not another type).
func unmarshalString(raw json.RawMessage, dst *string) error {
	if len(raw) == 0 || raw[0] != '"' {
		return errors.New("not a string")
	}
	return json.Unmarshal(raw, dst)
}

// FromHeaders finds the Payment credential among a request's Authorization
// values. found is false when none uses the Payment scheme. More than one
// Payment credential is refused (the draft, "Multiple Payment Options":
// servers SHOULD reject them with 400).
func FromHeaders(h http.Header) (cred Credential, found bool, err error) {
	var payment []string
	for _, v := range h.Values(HeaderAuthorization) {
		if len(v) > len(Scheme) && strings.EqualFold(v[:len(Scheme)], Scheme) && v[len(Scheme)] == ' ' {
			payment = append(payment, v)
		}
	}
	switch len(payment) {
	case 0:
		return Credential{}, false, nil
	case 1:
		cred, err = ParseCredential(payment[0])
		return cred, true, err
	}
	return Credential{}, true, malformed("authorization", "more than one Payment credential")
}

// DecodeRequest decodes the challenge's request JSON into v, with the same
// strictness as a credential (no duplicate members, bounded nesting).
func (ch Challenge) DecodeRequest(v any) error {
	raw, err := b64url.DecodeString(ch.Request)
	if err != nil {
		return malformed("challenge.request", "not canonical base64url")
	}
	if err := checkJSON(raw); err != nil {
		return malformed("challenge.request", "not valid JSON")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return malformed("challenge.request", "does not fit the method's request")
	}
	return nil
}

// checkJSON accepts one JSON value in valid UTF-8, nested at most
// maxJSONDepth deep, with no member name twice in one object (compared
// exactly, as JavaScript's JSON.parse keys are), and nothing after it.
// Duplicates are refused because which one counts differs between parsers.
func checkJSON(raw []byte) error {
	if !utf8.Valid(raw) {
		return malformed("credential", "not UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	type frame struct {
		object    bool
		expectKey bool
		keys      map[string]struct{}
	}
	var stack []frame
	done := false // a whole top-level value has been read
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return malformed("credential", "not valid JSON")
		}
		if done {
			return malformed("credential", "data after the JSON value")
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].expectKey {
			if d, ok := tok.(json.Delim); !ok || d != '}' {
				k, _ := tok.(string)
				if _, dup := stack[n-1].keys[k]; dup {
					return malformed("credential", "a member name appears twice in one object")
				}
				stack[n-1].keys[k] = struct{}{}
				stack[n-1].expectKey = false
				continue
			}
		}
		switch d, _ := tok.(json.Delim); d {
		case '{', '[':
			if len(stack) >= maxJSONDepth {
				return malformed("credential", "nested too deep")
			}
			f := frame{object: d == '{', expectKey: d == '{'}
			if f.object {
				f.keys = map[string]struct{}{}
			}
			stack = append(stack, f)
			continue
		case '}', ']':
			stack = stack[:len(stack)-1]
		}
		// A complete value ended: the enclosing object wants a key next.
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].expectKey = true
		}
		done = len(stack) == 0
	}
	if len(stack) != 0 {
		return malformed("credential", "truncated JSON")
	}
	return nil
}
