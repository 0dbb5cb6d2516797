// Package stripesource reads entitlements from Stripe Billing, and keeps a
// cache in front of it honest with Stripe's webhooks.
//
// A credential map (Map) ties each subject and API-key digest to a Stripe
// customer. For a customer, Lookup lists its subscriptions and its active
// entitlements (two calls, made at once) and builds the record:
//   - status: the chosen subscription's status, spelled as Stripe spells it.
//     The chosen one is the best state (active or trialing, then past_due,
//     unpaid, paused, incomplete, then the rest), then the newest.
//   - plan: the first subscription item whose price has metadata
//     "tollgate_plan", else a lookup_key; failing both, the first item's
//     product metadata "tollgate_plan" (one more call).
//   - period: current_period_start/end of the subscription, or of the item
//     that named the plan (API versions from 2025-03-31.basil).
//   - features: the lookup_key of every active entitlement.
//
// A customer with no subscription at all is StatusCanceled with no plan
// (402 subscription_inactive), not unknown (401). Quotas, credits and
// past_due_since are not read from Stripe.
//
// Webhook verifies Stripe-Signature and, on customer.subscription.*,
// customer.deleted and entitlements.active_entitlement_summary.updated,
// hands the customer id to a callback that drops Source.Keys(customer) from
// the cache, so a payment or a plan change is seen at once rather than when
// the record expires.
//
// Costs: a Lookup is at least two Stripe calls (often 100-300 ms each, made
// in parallel), so it belongs behind the cache with a long TTL. Calls in
// flight are bounded by Options.MaxInFlight. Everything is safe for
// concurrent use.
package stripesource
