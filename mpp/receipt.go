package mpp

import (
	"encoding/json"
	"errors"
	"time"
)

// Receipt is the `Payment-Receipt` response header (§5.3, "Payment-Receipt
// Header"): base64url-nopad of a JSON object. The core draft defines
// status, method, timestamp and reference; the method drafts add
// challengeId (lightning, evm), chainId (evm) and externalId.
type Receipt struct {
	Status      string `json:"status"`    // always "success": receipts are only sent on 2xx
	Method      string `json:"method"`    // payment method used
	Timestamp   string `json:"timestamp"` // RFC 3339 settlement time
	Reference   string `json:"reference"` // method-specific: transaction hash, payment hash, …
	ChallengeID string `json:"challengeId,omitempty"`
	ExternalID  string `json:"externalId,omitempty"`
	ChainID     uint64 `json:"chainId,omitempty"`
}

// StatusSuccess is the only receipt status (§5.3.1, "Receipt Status
// Semantics"): failures are 402s with a problem body, never receipts.
const StatusSuccess = "success"

// NewReceipt is a success receipt for method at time t.
func NewReceipt(method, reference, challengeID string, t time.Time) Receipt {
	return Receipt{
		Status: StatusSuccess, Method: method, Reference: reference, ChallengeID: challengeID,
		Timestamp: t.UTC().Format(time.RFC3339),
	}
}

// EncodeReceipt returns the Payment-Receipt header value: the receipt as
// JCS JSON, base64url without padding. Send it only on a 2xx response, with
// `Cache-Control: private` (the draft, "Caching").
func EncodeReceipt(r Receipt) (string, error) {
	if r.Status != StatusSuccess {
		return "", errors.New("mpp: receipt: status must be \"success\"")
	}
	if !isMethodID(r.Method) || r.Reference == "" {
		return "", errors.New("mpp: receipt: method and reference are required")
	}
	if _, err := time.Parse(time.RFC3339, r.Timestamp); err != nil {
		return "", errors.New("mpp: receipt: timestamp must be RFC 3339")
	}
	b, err := canonicalJSON(r)
	if err != nil {
		return "", err
	}
	return b64url.EncodeToString(b), nil
}

// ParseReceipt decodes a Payment-Receipt value, for clients and tests.
func ParseReceipt(v string) (Receipt, error) {
	if len(v) > MaxCredentialBytes || !isBase64URL(v) {
		return Receipt{}, malformed("receipt", "not one unpadded base64url token")
	}
	raw, err := b64url.DecodeString(v)
	if err != nil {
		return Receipt{}, malformed("receipt", "not canonical base64url")
	}
	if err := checkJSON(raw); err != nil {
		return Receipt{}, err
	}
	var r Receipt
	if err := json.Unmarshal(raw, &r); err != nil {
		return Receipt{}, malformed("receipt", "not a receipt object")
	}
	if r.Status != StatusSuccess {
		return Receipt{}, malformed("receipt.status", "not success")
	}
	return r, nil
}
