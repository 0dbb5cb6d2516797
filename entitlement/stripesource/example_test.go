package stripesource_test

import (
	"log"
	"net/http"
	"os"
	"time"

	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/entitlement/stripesource"
)

// Wiring the Stripe source behind the cache, with the webhook that keeps the
// cache honest.
func ExampleNewWebhook() {
	var c *cache.Cache
	customers, err := stripesource.OpenMap("stripe-customers.yaml", stripesource.MapOptions{
		OnReload: func(err error) {
			if err == nil && c != nil {
				c.Revalidate() // a key may have moved: ask again, keep serving meanwhile
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	src, err := stripesource.New(stripesource.Options{
		SecretKey: os.Getenv("STRIPE_SECRET_KEY"),
		Customers: customers,
	})
	if err != nil {
		log.Fatal(err)
	}
	c = cache.New(src, cache.Options{TTL: 10 * time.Minute, StaleIfError: 24 * time.Hour, Timeout: 190 * time.Millisecond})

	webhook, err := stripesource.NewWebhook(stripesource.WebhookOptions{
		Secrets: []string{os.Getenv("STRIPE_WEBHOOK_SECRET")},
		Invalidate: func(customerID string) {
			for _, k := range src.Keys(customerID) {
				c.Invalidate(k)
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	admin := http.NewServeMux()
	admin.Handle("POST /webhooks/stripe", webhook)
}
