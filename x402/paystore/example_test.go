package paystore_test

import (
	"context"
	"fmt"
	"time"

	"github.com/tollgate-authz/tollgate/x402/paystore"
)

// The life of a payment at tollgate: claimed at the door, refused when
// replayed, and, when the settle's answer is lost, left to the Reconciler.
func Example() {
	ctx := context.Background()
	now := func() time.Time { return time.Unix(1_800_000_000, 0) }
	store := paystore.NewMemory(now, 10_000)

	header := "eyJ4NDAyVmVyc2lvbiI6Mn0=" // the PAYMENT-SIGNATURE value, as received
	rec := paystore.Record{
		Key:       paystore.KeyOf("0x036CbD53842c5426634e7929541eC2318f3dCF7e", "0x857b06519E91e3A54538791bDbb0E22373e36b66", "0x01"),
		PaymentID: "pay_7d5d747be160e280",
		Digest:    paystore.DigestOf(header),
		Route:     "search",
		Payload:   header,
		Expires:   now().Add(60*time.Second + 24*time.Hour), // validBefore plus a margin
	}
	_, claimed, err := store.Claim(ctx, rec)
	fmt.Println("first:", claimed, err)

	// The same payment again: not claimed; the existing record says why.
	existing, claimed, _ := store.Claim(ctx, rec)
	fmt.Println("replay:", claimed, existing.State, existing.Digest == rec.Digest)

	// The facilitator verified, the upstream answered. Before the settle is
	// sent, the write-ahead mark: a replica dying now leaves an Unknown
	// record, which the Reconciler finds.
	_, _ = store.Finish(ctx, rec.Key, paystore.Unknown, "", paystore.ReasonSettling)
	// The settle timed out: still Unknown, the same attempt.
	_, _ = store.Finish(ctx, rec.Key, paystore.Unknown, "", "settlement_outcome_unknown")
	unknown, _ := store.Unknowns(ctx, 10)
	fmt.Println("to reconcile:", len(unknown), unknown[0].State, unknown[0].Attempts)
	// Output:
	// first: true <nil>
	// replay: false pending true
	// to reconcile: 1 unknown 1
}
