package x402

import (
	"math/big"
	"strconv"
	"strings"
)

// maxUint256 is 2^256 - 1.
var maxUint256 = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1))

// v1Networks maps the v1 network names the reference SDK signs for to
// their EIP-155 chain ids.
var v1Networks = map[string]uint64{
	"ethereum":       1,
	"sepolia":        11155111,
	"base":           8453,
	"base-sepolia":   84532,
	"avalanche":      43114,
	"avalanche-fuji": 43113,
	"polygon":        137,
	"polygon-amoy":   80002,
}

func validateV2(p *PaymentPayload) error {
	if p.Scheme != "" || p.Network != "" {
		return invalid("scheme", "v2 payloads name scheme and network inside accepted")
	}
	if p.Accepted == nil {
		return invalid("accepted", "missing")
	}
	if err := ValidateRequirements(*p.Accepted, "accepted."); err != nil {
		return err
	}
	if p.Resource != nil && p.Resource.URL == "" {
		return invalid("resource.url", "missing")
	}
	return validateExact(&p.Payload)
}

func validateV1(p *PaymentPayload) error {
	if p.Accepted != nil {
		return invalid("accepted", "v1 payloads have no accepted member")
	}
	if p.Scheme != SchemeExact {
		return &Error{Reason: ReasonInvalidScheme, Field: "scheme", Detail: "only exact is supported"}
	}
	if _, err := chainIDOf(p.Network, true); err != nil {
		return err
	}
	return validateExact(&p.Payload)
}

// ValidateRequirements checks one PaymentRequirements for the EVM exact
// scheme; prefix is prepended to field names in errors. Use it on offers
// built from configuration, so a bad offer fails at load.
func ValidateRequirements(r PaymentRequirements, prefix string) error {
	if r.Scheme != SchemeExact {
		return &Error{Reason: ReasonInvalidScheme, Field: prefix + "scheme", Detail: "only exact is supported"}
	}
	if _, err := chainIDOf(r.Network, false); err != nil {
		return &Error{Reason: ReasonInvalidNetwork, Field: prefix + "network", Detail: "want eip155:<chain id>"}
	}
	if _, ok := parseUint256(r.Amount); !ok {
		return invalid(prefix+"amount", "want a decimal integer below 2^256")
	}
	if !isAddress(r.Asset) {
		return invalid(prefix+"asset", "want 0x and 40 hex digits (EIP-55 checksum if mixed case)")
	}
	if !isAddress(r.PayTo) {
		return invalid(prefix+"payTo", "want 0x and 40 hex digits (EIP-55 checksum if mixed case)")
	}
	if r.MaxTimeoutSeconds <= 0 || r.MaxTimeoutSeconds > maxTimeoutSecondsLimit {
		return invalid(prefix+"maxTimeoutSeconds", "want 1 to 86400")
	}
	if m := r.Extra.AssetTransferMethod; m != "" && m != "eip3009" {
		return &Error{Reason: ReasonInvalidScheme, Field: prefix + "extra.assetTransferMethod", Detail: "only eip3009 is supported"}
	}
	return nil
}

func validateExact(e *ExactEVMPayload) error {
	if _, ok := decodeHex(e.Signature, 65); !ok {
		return invalid("payload.signature", "want 0x and 130 hex digits (65 bytes)")
	}
	a := &e.Authorization
	if !isAddress(a.From) {
		return invalid("payload.authorization.from", "want 0x and 40 hex digits (EIP-55 checksum if mixed case)")
	}
	if !isAddress(a.To) {
		return invalid("payload.authorization.to", "want 0x and 40 hex digits (EIP-55 checksum if mixed case)")
	}
	for _, f := range []struct{ name, v string }{
		{"value", a.Value}, {"validAfter", a.ValidAfter}, {"validBefore", a.ValidBefore},
	} {
		if _, ok := parseUint256(f.v); !ok {
			return invalid("payload.authorization."+f.name, "want a decimal integer below 2^256")
		}
	}
	if _, ok := decodeHex(a.Nonce, 32); !ok {
		return invalid("payload.authorization.nonce", "want 0x and 64 hex digits")
	}
	return nil
}

// parseUint256 accepts canonical decimal: no sign, no leading zeros, < 2^256.
func parseUint256(s string) (*big.Int, bool) {
	if s == "" || len(s) > 78 || (len(s) > 1 && s[0] == '0') {
		return nil, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return nil, false
		}
	}
	n, ok := new(big.Int).SetString(s, 10)
	if !ok || n.Cmp(maxUint256) > 0 {
		return nil, false
	}
	return n, true
}

// decodeHex decodes 0x followed by exactly 2*n hex digits (either case).
func decodeHex(s string, n int) ([]byte, bool) {
	if len(s) != 2+2*n || s[0] != '0' || (s[1] != 'x' && s[1] != 'X') {
		return nil, false
	}
	b := make([]byte, n)
	for i := 0; i < n; i++ {
		hi, ok1 := unhex(s[2+2*i])
		lo, ok2 := unhex(s[3+2*i])
		if !ok1 || !ok2 {
			return nil, false
		}
		b[i] = hi<<4 | lo
	}
	return b, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// isAddress accepts 0x + 40 hex digits: all lower case, all upper case, or
// mixed case with a valid EIP-55 checksum (a wrong checksum is a typo).
func isAddress(s string) bool {
	if len(s) != 42 || s[0] != '0' || s[1] != 'x' {
		return false
	}
	if _, ok := decodeHex(s, 20); !ok {
		return false
	}
	hex := s[2:]
	if hex == strings.ToLower(hex) || hex == strings.ToUpper(hex) {
		return true
	}
	return ChecksumAddress(s) == s
}

// sameAddress compares two valid addresses ignoring case.
func sameAddress(a, b string) bool { return strings.EqualFold(a, b) }

// chainIDOf returns the EIP-155 chain id of a CAIP-2 network ("eip155:84532"),
// or with v1 also of a v1 network name ("base-sepolia").
func chainIDOf(network string, v1 bool) (uint64, error) {
	if rest, ok := strings.CutPrefix(network, "eip155:"); ok {
		if rest == "" || len(rest) > 19 || (len(rest) > 1 && rest[0] == '0') {
			return 0, &Error{Reason: ReasonInvalidNetwork, Field: "network", Detail: "want eip155:<chain id>"}
		}
		id, err := strconv.ParseUint(rest, 10, 64)
		if err != nil || id == 0 {
			return 0, &Error{Reason: ReasonInvalidNetwork, Field: "network", Detail: "want eip155:<chain id>"}
		}
		return id, nil
	}
	if v1 {
		if id, ok := v1Networks[network]; ok {
			return id, nil
		}
	}
	return 0, &Error{Reason: ReasonInvalidNetwork, Field: "network", Detail: "unsupported network"}
}
