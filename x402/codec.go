package x402

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
)

// MaxHeaderBytes bounds an encoded PAYMENT-SIGNATURE or X-PAYMENT header.
// The reference SDK's v2 payload for the EVM exact scheme is about 1.3 KiB
// encoded; 8 KiB leaves room for a resource description and extensions.
const MaxHeaderBytes = 8 << 10

// maxJSONDepth bounds nesting inside a payload (extensions are free-form).
const maxJSONDepth = 16

// maxTimeoutSecondsLimit bounds maxTimeoutSeconds on input (one day).
const maxTimeoutSecondsLimit = 86400

// b64 is the only accepted header encoding: RFC 4648 standard alphabet with
// padding, canonical (no stray bits, no whitespace, no line breaks). The
// reference SDK encodes with btoa, which produces exactly this. URL-safe
// base64 is refused: nothing in the specification sends it.
var b64 = base64.StdEncoding.Strict()

// EncodeHeader returns base64(JSON(v)), the encoding of every x402 header.
func EncodeHeader(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return b64.EncodeToString(b), nil
}

// EncodePaymentRequired encodes the PAYMENT-REQUIRED challenge header.
func EncodePaymentRequired(pr PaymentRequired) (string, error) { return EncodeHeader(pr) }

// EncodePaymentResponse encodes the PAYMENT-RESPONSE receipt header.
func EncodePaymentResponse(sr SettleResponse) (string, error) { return EncodeHeader(sr) }

// DecodePaymentSignature decodes and validates a v2 PAYMENT-SIGNATURE header:
// x402Version 2, an `accepted` requirements object and an EVM exact payload.
func DecodePaymentSignature(header string) (PaymentPayload, error) {
	p, err := decodePayload(header)
	if err != nil {
		return PaymentPayload{}, err
	}
	if p.X402Version != Version {
		return PaymentPayload{}, &Error{Reason: ReasonInvalidVersion, Field: "x402Version", Detail: "PAYMENT-SIGNATURE carries version 2"}
	}
	if err := validateV2(&p); err != nil {
		return PaymentPayload{}, err
	}
	return p, nil
}

// DecodeXPayment decodes and validates a v1 X-PAYMENT header: x402Version 1,
// top-level scheme and network (a v1 network name such as base-sepolia, or
// CAIP-2), and an EVM exact payload.
func DecodeXPayment(header string) (PaymentPayload, error) {
	p, err := decodePayload(header)
	if err != nil {
		return PaymentPayload{}, err
	}
	if p.X402Version != VersionV1 {
		return PaymentPayload{}, &Error{Reason: ReasonInvalidVersion, Field: "x402Version", Detail: "X-PAYMENT carries version 1"}
	}
	if err := validateV1(&p); err != nil {
		return PaymentPayload{}, err
	}
	return p, nil
}

// FromHeaders finds and decodes the payment on a request: PAYMENT-SIGNATURE
// (v2) or X-PAYMENT (v1). found is false when neither is present. Both at
// once, or either repeated, is refused: which one counts would be a guess.
func FromHeaders(h http.Header) (p PaymentPayload, found bool, err error) {
	v2 := h.Values(HeaderPaymentSignature)
	v1 := h.Values(HeaderXPayment)
	switch {
	case len(v2) == 0 && len(v1) == 0:
		return PaymentPayload{}, false, nil
	case len(v2)+len(v1) > 1:
		return PaymentPayload{}, true, invalid("header", "exactly one PAYMENT-SIGNATURE or X-PAYMENT header")
	case len(v2) == 1:
		p, err = DecodePaymentSignature(v2[0])
	default:
		p, err = DecodeXPayment(v1[0])
	}
	return p, true, err
}

func decodePayload(header string) (PaymentPayload, error) {
	if len(header) == 0 {
		return PaymentPayload{}, invalid("header", "empty")
	}
	if len(header) > MaxHeaderBytes {
		return PaymentPayload{}, invalid("header", "larger than 8 KiB")
	}
	raw, err := b64.DecodeString(header)
	if err != nil {
		return PaymentPayload{}, invalid("header", "not canonical standard base64")
	}
	return decodeJSON(raw)
}

// decodePayloadJSON decodes a payload already out of its header (as a
// facilitator receives it) and validates it for its version.
func decodePayloadJSON(raw []byte) (PaymentPayload, error) {
	if len(raw) > MaxHeaderBytes {
		return PaymentPayload{}, invalid("payload", "larger than 8 KiB")
	}
	p, err := decodeJSON(raw)
	if err != nil {
		return PaymentPayload{}, err
	}
	switch p.X402Version {
	case Version:
		err = validateV2(&p)
	case VersionV1:
		err = validateV1(&p)
	default:
		err = &Error{Reason: ReasonInvalidVersion, Field: "x402Version"}
	}
	if err != nil {
		return PaymentPayload{}, err
	}
	return p, nil
}

func decodeJSON(raw []byte) (PaymentPayload, error) {
	if err := checkJSON(raw); err != nil {
		return PaymentPayload{}, err
	}
	var p PaymentPayload
	if err := json.Unmarshal(raw, &p); err != nil {
		return PaymentPayload{}, invalid(jsonField(err), "wrong JSON type")
	}
	return p, nil
}

// jsonField names the member an UnmarshalTypeError is about, without input.
func jsonField(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return te.Field
	}
	return "payload"
}

// checkJSON accepts one JSON object with no duplicate member names (compared
// case-insensitively, as encoding/json matches them), nesting at most
// maxJSONDepth, and nothing after it. A duplicate would let two parsers of
// the same header see two different payments.
func checkJSON(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var stack []*jsonFrame
	first := true
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			if len(stack) != 0 || first {
				return invalid("payload", "truncated JSON")
			}
			return nil
		}
		if err != nil {
			return invalid("payload", "not valid JSON")
		}
		if first {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return invalid("payload", "not a JSON object")
			}
		} else if len(stack) == 0 {
			return invalid("payload", "data after the JSON object")
		}
		first = false
		var top *jsonFrame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.expect {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				markValueDone(stack)
				continue
			}
			k, _ := tok.(string)
			lk := strings.ToLower(k)
			if top.keys[lk] {
				return invalid("payload", "duplicate JSON member")
			}
			top.keys[lk] = true
			top.expect = false
			continue
		}
		switch d := tok.(type) {
		case json.Delim:
			switch d {
			case '{', '[':
				if len(stack) >= maxJSONDepth {
					return invalid("payload", "JSON nested too deeply")
				}
				stack = append(stack, &jsonFrame{object: d == '{', keys: map[string]bool{}, expect: d == '{'})
			case ']', '}':
				stack = stack[:len(stack)-1]
				markValueDone(stack)
			}
		default:
			markValueDone(stack)
		}
	}
}

type jsonFrame struct {
	object bool
	keys   map[string]bool
	expect bool // the next token in this object is a member name
}

// markValueDone records that a value ended inside the innermost container.
func markValueDone(stack []*jsonFrame) {
	if n := len(stack); n > 0 && stack[n-1].object {
		stack[n-1].expect = true
	}
}
