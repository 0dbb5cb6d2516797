// Prints EIP-3009 signatures made by viem (the signer @x402/evm uses) for
// fixed inputs, as JSON. Its output is committed as ../eip3009_vectors.json;
// re-run with `node vectors.mjs > ../eip3009_vectors.json` after an upgrade.
import { privateKeyToAccount } from "viem/accounts";
import { hashTypedData } from "viem";

const types = {
  TransferWithAuthorization: [
    { name: "from", type: "address" },
    { name: "to", type: "address" },
    { name: "value", type: "uint256" },
    { name: "validAfter", type: "uint256" },
    { name: "validBefore", type: "uint256" },
    { name: "nonce", type: "bytes32" },
  ],
};

const keys = [
  "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
  "0x0000000000000000000000000000000000000000000000000000000000000001",
];
const cases = [
  { name: "USDC", version: "2", chainId: 84532, asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", value: "10000", validAfter: "0", validBefore: "1740672154",
    nonce: "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480" },
  { name: "Token With Spaces", version: "1", chainId: 8453, asset: "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913",
    to: "0x000000000000000000000000000000000000dEaD", value: "115792089237316195423570985008687907853269984665640564039457584007913129639935",
    validAfter: "1", validBefore: "18446744073709551616",
    nonce: "0x0000000000000000000000000000000000000000000000000000000000000000" },
];

const out = [];
for (const key of keys) {
  const account = privateKeyToAccount(key);
  for (const c of cases) {
    const domain = { name: c.name, version: c.version, chainId: c.chainId, verifyingContract: c.asset };
    const message = { from: account.address, to: c.to, value: BigInt(c.value), validAfter: BigInt(c.validAfter),
      validBefore: BigInt(c.validBefore), nonce: c.nonce };
    const args = { domain, types, primaryType: "TransferWithAuthorization", message };
    out.push({
      privateKey: key, from: account.address, domain: { name: c.name, version: c.version, chainId: c.chainId, verifyingContract: c.asset },
      authorization: { from: account.address, to: c.to, value: c.value, validAfter: c.validAfter, validBefore: c.validBefore, nonce: c.nonce },
      digest: hashTypedData(args),
      signature: await account.signTypedData(args),
    });
  }
}
console.log(JSON.stringify(out, null, 2));
