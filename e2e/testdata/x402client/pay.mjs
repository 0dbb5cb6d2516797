// Pays for X402_URL with the real x402 client SDK (@x402/fetch + @x402/evm,
// and @x402/extensions for payment-identifier) and prints one JSON line:
// the final status and body, the PAYMENT-RESPONSE decoded by the SDK's own
// decoder, and the payment header the SDK sent on each request.
//
//   X402_URL=...            the resource
//   X402_PRIVATE_KEY=0x...  the payer's key (a viem local account)
//   X402_METHOD=GET         the request's method
//   X402_HEADERS={...}      more request headers, as a JSON object
//   X402_PAYMENT_ID=...     send this payment-identifier id
import { wrapFetchWithPayment, x402Client, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import { appendPaymentIdentifierToExtensions } from "@x402/extensions/payment-identifier";
import { privateKeyToAccount } from "viem/accounts";

const url = process.env.X402_URL;
const account = privateKeyToAccount(process.env.X402_PRIVATE_KEY);
const headers = JSON.parse(process.env.X402_HEADERS || "{}") || {};
const paymentId = process.env.X402_PAYMENT_ID || "";

const sent = [];
const recordingFetch = async (input, init) => {
  const req = new Request(input, init);
  sent.push({
    paymentSignature: req.headers.get("PAYMENT-SIGNATURE"),
    status: 0,
  });
  const res = await fetch(req);
  sent[sent.length - 1].status = res.status;
  return res;
};

const client = x402Client.fromConfig({
  schemes: [{ network: "eip155:*", client: new ExactEvmScheme(account) }],
});
if (paymentId) {
  // The SDK's helper adds the id only when the 402 declared the extension.
  client.registerExtension({
    key: "payment-identifier",
    enrichPaymentPayload: async (payload, required) => {
      const ext = structuredClone(required.extensions || {});
      appendPaymentIdentifierToExtensions(ext, paymentId);
      return { ...payload, extensions: { ...(payload.extensions || {}), ...ext } };
    },
  });
}
const fetchWithPayment = wrapFetchWithPayment(recordingFetch, client);

try {
  const res = await fetchWithPayment(url, { method: process.env.X402_METHOD || "GET", headers });
  const body = await res.text();
  const header = res.headers.get("PAYMENT-RESPONSE");
  console.log(JSON.stringify({
    status: res.status,
    body,
    paymentResponse: header ? decodePaymentResponseHeader(header) : null,
    requests: sent,
    payer: account.address,
  }));
} catch (err) {
  console.log(JSON.stringify({ error: String((err && err.message) || err), requests: sent, payer: account.address }));
  process.exitCode = 1;
}
