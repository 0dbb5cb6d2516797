package x402

import "encoding/json"

// Version is the x402 protocol version this package speaks on PAYMENT-* headers.
const Version = 2

// VersionV1 is the legacy version carried on the X-PAYMENT header.
const VersionV1 = 1

// HTTP header names of the x402 HTTP transport (v2, and v1's X-PAYMENT).
const (
	HeaderPaymentRequired  = "PAYMENT-REQUIRED"
	HeaderPaymentSignature = "PAYMENT-SIGNATURE"
	HeaderPaymentResponse  = "PAYMENT-RESPONSE"
	HeaderXPayment         = "X-PAYMENT"
)

// SchemeExact is the only payment scheme this package verifies.
const SchemeExact = "exact"

// PaymentRequired is the challenge sent on a 402 (base64 JSON in PAYMENT-REQUIRED).
type PaymentRequired struct {
	X402Version int                        `json:"x402Version"`
	Error       string                     `json:"error,omitempty"`
	Resource    Resource                   `json:"resource"`
	Accepts     []PaymentRequirements      `json:"accepts"`
	Extensions  map[string]json.RawMessage `json:"extensions,omitempty"`
}

// Resource describes what the payment buys access to.
type Resource struct {
	URL         string `json:"url"`
	Description string `json:"description,omitempty"`
	MimeType    string `json:"mimeType,omitempty"`
}

// PaymentRequirements is one way to pay: scheme, network, price, token and payee.
type PaymentRequirements struct {
	Scheme            string `json:"scheme"`
	Network           string `json:"network"` // CAIP-2, e.g. eip155:84532
	Amount            string `json:"amount"`  // atomic units, decimal
	Asset             string `json:"asset"`   // token contract (EIP-712 verifyingContract)
	PayTo             string `json:"payTo"`
	MaxTimeoutSeconds int64  `json:"maxTimeoutSeconds"`
	Extra             Extra  `json:"extra"`
}

// Extra holds the scheme-specific part of requirements that this package uses:
// the token's EIP-712 domain name and version, and the transfer method.
// Unknown members are accepted on input and dropped.
type Extra struct {
	Name                string `json:"name,omitempty"`
	Version             string `json:"version,omitempty"`
	AssetTransferMethod string `json:"assetTransferMethod,omitempty"`
}

// PaymentPayload is what a client sends back: on PAYMENT-SIGNATURE (v2) the
// requirements it chose in Accepted; on X-PAYMENT (v1) Scheme and Network only.
type PaymentPayload struct {
	X402Version int                        `json:"x402Version"`
	Resource    *Resource                  `json:"resource,omitempty"`
	Accepted    *PaymentRequirements       `json:"accepted,omitempty"`
	Scheme      string                     `json:"scheme,omitempty"`  // v1 only
	Network     string                     `json:"network,omitempty"` // v1 only (e.g. base-sepolia)
	Payload     ExactEVMPayload            `json:"payload"`
	Extensions  map[string]json.RawMessage `json:"extensions,omitempty"`
}

// ExactEVMPayload is the `exact` scheme's EIP-3009 payload.
type ExactEVMPayload struct {
	Signature     string        `json:"signature"` // 0x + 130 hex (65 bytes)
	Authorization Authorization `json:"authorization"`
}

// Authorization is the EIP-3009 TransferWithAuthorization message, as strings.
type Authorization struct {
	From        string `json:"from"`
	To          string `json:"to"`
	Value       string `json:"value"`
	ValidAfter  string `json:"validAfter"`
	ValidBefore string `json:"validBefore"`
	Nonce       string `json:"nonce"` // 0x + 64 hex
}

// VerifyResponse is a facilitator's answer to /verify.
type VerifyResponse struct {
	IsValid       bool   `json:"isValid"`
	InvalidReason string `json:"invalidReason,omitempty"`
	Payer         string `json:"payer,omitempty"`
}

// SettleResponse is a facilitator's answer to /settle, and the receipt sent
// to the client in PAYMENT-RESPONSE.
type SettleResponse struct {
	Success     bool   `json:"success"`
	ErrorReason string `json:"errorReason,omitempty"`
	Payer       string `json:"payer,omitempty"`
	Transaction string `json:"transaction"`
	Network     string `json:"network"`
	Amount      string `json:"amount,omitempty"`
}

// SupportedKind is one (version, scheme, network) a facilitator handles.
type SupportedKind struct {
	X402Version int    `json:"x402Version"`
	Scheme      string `json:"scheme"`
	Network     string `json:"network"`
}

// SupportedResponse is a facilitator's answer to GET /supported.
type SupportedResponse struct {
	Kinds      []SupportedKind     `json:"kinds"`
	Extensions []string            `json:"extensions"`
	Signers    map[string][]string `json:"signers"`
}

// facilitatorRequest is the body of POST /verify and /settle.
type facilitatorRequest struct {
	X402Version         int                 `json:"x402Version"`
	PaymentPayload      PaymentPayload      `json:"paymentPayload"`
	PaymentRequirements PaymentRequirements `json:"paymentRequirements"`
}
