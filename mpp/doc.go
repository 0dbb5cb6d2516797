// Package mpp is the protocol layer of the `Payment` HTTP authentication
// scheme ("MPP", draft-ryan-httpauth-payment by Tempo Labs and Stripe; the
// editors' copy is draft-httpauth-payment-00 in the mpp-specs repository),
// beside x402 on the same 402. It knows nothing of Envoy or of tollgate's
// billing; the decision server wires it in.
//
// The pieces, in the order a request meets them:
//
//   - Challenger issues `WWW-Authenticate: Payment id, realm, method,
//     intent, request, expires` values. The id is the draft's stateless
//     HMAC-SHA256 binding of the seven slots realm|method|intent|request|
//     expires|digest|opaque; request (and opaque) are JCS (RFC 8785) JSON in
//     unpadded base64url. One value per payment method on the same 402.
//   - ParseCredential and FromHeaders decode `Authorization: Payment
//     <base64url JSON>` strictly: at most MaxCredentialBytes, canonical
//     unpadded base64url only, one JSON object in UTF-8 without duplicate
//     members, nesting at most 16. Errors are *Error values with a Code from
//     the draft's problem types; they never contain the input.
//   - Challenger.Check proves the echoed challenge is ours (HMAC, compared
//     in constant time), of our realm, and unexpired; CheckOffer adds that
//     it offered what this resource costs now. Neither keeps state: replay
//     protection is the payment method's single-use proof (and the
//     caller's consume-once record).
//   - Method verifies a method's proof and settles. EVMCharge implements
//     draft-evm-charge's `authorization` credential (an EIP-3009
//     transferWithAuthorization signed off-chain, its nonce the challenge
//     hash): the EIP-712 signature is checked here with x402's code, and
//     the transfer goes through any x402.Facilitator.
//   - EncodeReceipt builds the `Payment-Receipt` header of a 2xx.
//
// Cost: Challenge with an EncodedRequest is one HMAC-SHA256 over the
// parameters (HMAC states are pooled) and two small allocations: the header
// (the id is a slice of it) and the request boxed into `any`. With a
// request value it adds a JSON marshal and a JCS pass (about 60
// allocations): build requests once with EncodeRequest. ParseCredential is
// one base64 pass and two JSON passes over at most 8 KiB; EVMCharge adds one
// secp256k1 recovery and the facilitator's round trips. Everything here is
// safe for concurrent use.
package mpp
