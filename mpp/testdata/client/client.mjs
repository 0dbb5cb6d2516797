// Pays one request with mppx, the Payment scheme's TypeScript SDK, and
// prints what happened as JSON. Run by mpp/interop_test.go with
// URL, PRIVATE_KEY, TOKEN_NAME and TOKEN_VERSION in the environment.
import { Receipt } from 'mppx'
import { Mppx } from 'mppx/client'
import { charge } from 'mppx/evm/client'
import { privateKeyToAccount } from 'viem/accounts'

const seen = []
const recordingFetch = async (input, init) => {
  const headers = new Headers(init?.headers)
  const res = await globalThis.fetch(input, init)
  seen.push({
    authorization: headers.get('authorization'),
    status: res.status,
    wwwAuthenticate: res.headers.get('www-authenticate'),
  })
  return res
}

const out = { requests: seen }
try {
  const account = privateKeyToAccount(process.env.PRIVATE_KEY)
  out.payer = account.address
  const mppx = Mppx.create({
    polyfill: false,
    fetch: recordingFetch,
    methods: [charge({ account, authorization: { name: process.env.TOKEN_NAME, version: process.env.TOKEN_VERSION } })],
  })
  const res = await mppx.fetch(process.env.URL)
  out.status = res.status
  out.body = await res.text()
  if (res.headers.get('payment-receipt')) out.receipt = Receipt.fromResponse(res)
  out.cacheControl = res.headers.get('cache-control')
} catch (e) {
  out.error = String(e?.stack ?? e)
}
console.log(JSON.stringify(out))
