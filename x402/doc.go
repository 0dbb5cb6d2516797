// Package x402 is the protocol layer of machine-payable 402s: x402 version 2
// over HTTP (and version 1's X-PAYMENT), for the EVM `exact` scheme with
// EIP-3009 transferWithAuthorization. It knows nothing of Envoy or of
// tollgate's billing; the decision server wires it in.
//
// The pieces, in the order a request meets them:
//
//   - Encoding. EncodePaymentRequired builds the PAYMENT-REQUIRED challenge,
//     EncodePaymentResponse the PAYMENT-RESPONSE receipt (base64 of JSON).
//     FromHeaders, DecodePaymentSignature and DecodeXPayment decode what a
//     client sends, strictly: at most MaxHeaderBytes, canonical standard
//     base64 only, one JSON object without duplicate members, every number
//     a canonical decimal below 2^256, addresses 0x + 40 hex (EIP-55 checked
//     when mixed case), nonce 0x + 64 hex, signature 65 bytes. Unknown
//     members are ignored (the SDK adds resource and extensions). Errors are
//     *Error values with a Reason from the x402 error codes and the field at
//     fault; they never contain the input.
//   - Match ties a payload to an offer we made for this resource and checks
//     the authorization's payee, value and time window against it. It is
//     pure: no I/O, the clock is a parameter.
//   - VerifySignature recomputes the EIP-712 digest of the authorization
//     under the domain of our offer (name and version from extra, chain id
//     from the CAIP-2 network, the asset as verifying contract) and recovers
//     the signer with secp256k1; it must be authorization.from.
//   - Facilitator verifies and settles. HTTPFacilitator is a client for any
//     facilitator's /verify, /settle and /supported; a settle with no answer
//     after it was sent is ErrSettleOutcomeUnknown, to be reconciled, never
//     blindly retried. LocalFacilitator verifies signatures for real, keeps
//     balances in memory and settles each nonce once; FacilitatorHandler
//     serves any Facilitator over HTTP.
//
// What is checked where: the resource server (tollgate) decodes, matches
// and may verify the signature itself, so a forged or mismatched payment
// costs no facilitator round trip. Balance, nonce freshness and the
// transfer are the facilitator's: only it (or the chain) knows them.
//
// Cost: decoding is one base64 pass and two JSON passes over at most 8 KiB;
// a signature check is one secp256k1 recovery (tens of microseconds).
// Everything here is safe for concurrent use; LocalFacilitator holds one
// mutex per call.
package x402
