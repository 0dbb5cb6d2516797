// Package entitlement owns the domain record that says what a subject bought —
// plan, subscription status, add-on features, quota overrides, prepaid credits
// and the billing period — and the Source interface every backend implements.
//
// A Source returns a pointer to an Entitlement that callers must treat as
// immutable: sources and the cache share one record between many concurrent
// requests instead of copying it on every Check.
package entitlement
