package redissource_test

import (
	"context"
	"log"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
)

// How a replica wires the source: a cache in front, and a subscriber that
// drops a changed subject at once and, after a reconnect, marks everything
// for revalidation (keeping it to serve if Redis cannot answer yet).
// (Not run: it needs a Redis.)
func ExampleSource_Subscribe() {
	ctx := context.Background()
	client := redis.NewClient(&redis.Options{
		Addr:                  "127.0.0.1:6379",
		ContextTimeoutEnabled: true, // so that Options.Timeout bounds each lookup
	})
	src, err := redissource.New(redissource.Options{Client: client})
	if err != nil {
		log.Fatal(err)
	}
	entitlements := cache.New(src, cache.Options{})

	go func() {
		_ = src.Subscribe(ctx,
			func(subject string, digests []string) {
				entitlements.InvalidateSubject(subject)
				for _, d := range digests {
					entitlements.InvalidateKey(d) // a key cached as unknown may just have been issued
				}
			},
			entitlements.Revalidate, // messages published while disconnected are lost
		)
	}()

	// A billing job, or `tollgate entitlements set`, writes a record; every
	// replica's cache drops its copy.
	err = src.Put(ctx, redissource.Record{
		Entitlement:   entitlement.Entitlement{Subject: "acme", Plan: "pro", Status: entitlement.StatusActive},
		APIKeyDigests: []string{"5c4ab0a5e1a8a9b5f7b2a0ad0f4b0c53f3a5e51f8f1c0e0b2c3d4e5f60718293"},
	})
	if err != nil {
		log.Fatal(err)
	}
}
