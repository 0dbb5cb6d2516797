// Pays for X402_URL with the real x402 client SDK (@x402/fetch + @x402/evm)
// and prints one JSON line: the final status, the body, the decoded
// PAYMENT-RESPONSE and the payment headers the SDK sent on each request.
// Usage: X402_URL=... X402_PRIVATE_KEY=0x... node client.mjs
import { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import { privateKeyToAccount } from "viem/accounts";

const url = process.env.X402_URL;
const account = privateKeyToAccount(process.env.X402_PRIVATE_KEY);

const sent = [];
const recordingFetch = async (input, init) => {
  const req = new Request(input, init);
  sent.push({
    paymentSignature: req.headers.get("PAYMENT-SIGNATURE"),
    xPayment: req.headers.get("X-PAYMENT"),
  });
  return fetch(req);
};

const fetchWithPayment = wrapFetchWithPaymentFromConfig(recordingFetch, {
  schemes: [{ network: "eip155:*", client: new ExactEvmScheme(account) }],
});

try {
  const res = await fetchWithPayment(url, { method: "GET" });
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
  console.log(JSON.stringify({ error: String((err && err.message) || err), requests: sent }));
  process.exitCode = 1;
}
