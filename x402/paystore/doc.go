// Package paystore remembers the x402 payments tollgate accepted, so that
// a payment is settled at most once and money is never lost or taken twice.
//
// A payment authorization (EIP-3009) is named by its token, payer and
// nonce (KeyOf). At the door, Claim stores it as Pending, atomically, unless
// a record with the same key, or with the same payment-identifier id, is
// already there: then the caller gets that record (a replay, or a retry
// whose first result it returns; Digest tells a reuse of the key or id
// with another payload apart). Just before a settle is sent, Finish
// writes a mark (Unknown, ReasonSettling), so that a replica dying with
// the settle sent leaves a record the Reconciler finds; after it, Finish
// records Settled (the receipt), Failed, or Unknown: no answer back.
// Release forgets a Pending claim that will never be settled (refused at
// verify, or the upstream failed), so the same authorization may be
// presented again; it never forgets any other. The Reconciler settles
// Unknown records again, which is safe because the chain uses a nonce once.
// Settled is final: a later Finish does not overwrite the first receipt.
//
// Memory is for one replica: bounded by a number of records, dropping
// expired and then finished records first, and refusing new payments with
// ErrFull rather than forget one that is Pending or Unknown. Its calls take
// one mutex; Claim, Get, Finish and Release cost O(log n), Unknowns a pass
// over the open records.
//
// Redis is shared by replicas: one Lua script per call (one round trip),
// records expiring at their Expires by PEXPIREAT. Give it a Redis with
// maxmemory-policy noeviction (or one that evicts no volatile keys): an
// evicted record is a forgotten payment.
//
// A Redis restarted empty (or failed over to a replica that missed the last
// writes) loses what the records held:
//   - a replay of an already settled authorization is claimed again; the
//     facilitator then refuses it (the nonce is used on chain), at verify or
//     at settle, so no money is taken twice, but a request may be served
//     before the settle is refused;
//   - a retry with a payment-identifier no longer gets the first result;
//   - a payment in flight finds its record gone: Finish returns ErrNotFound;
//   - an Unknown record is no longer reconciled: that settlement's outcome
//     has to be looked up on chain by an operator.
//
// Persistence (AOF with fsync every second) narrows this to the last second.
//
// Everything here is safe for concurrent use.
package paystore
