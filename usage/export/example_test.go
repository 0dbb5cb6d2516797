package export_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
	"github.com/tollgate-authz/tollgate/usage/export"
)

// Example wires a Stripe exporter to an outbox: validate the options,
// build the exporter, and run the loop until shutdown, with a Nudge that
// the code appending events notifies. (Compiled, not run: it needs a key.)
func Example() {
	opts := export.StripeOptions{
		SecretKey:  os.Getenv("STRIPE_SECRET_KEY"),
		EventNames: map[string]string{"llm_tokens": "llm_tokens"},
	}
	if err := opts.Validate(); err != nil {
		fmt.Println(err)
		return
	}
	exp := export.NewStripe(opts)

	var box usage.Outbox // the store from usage/outbox
	nudge := export.NewNudge()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = export.Run(ctx, box, exp, export.RunOptions{Wake: nudge.C(), DrainTimeout: 5 * time.Second})
	}()

	// After each successful box.Append: nudge.Notify().
	nudge.Notify()

	// On shutdown: stop, then wait for the final drain.
	stop()
	<-done
}
