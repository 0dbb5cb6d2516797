package httpsource_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/httpsource"
)

// A billing service answers the contract: a record as JSON, or 404 for a
// subject it does not know.
func Example() {
	billing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/entitlements/subjects/acme" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{
		  "subject": "acme", "plan": "pro", "status": "active",
		  "features": ["export"], "quotas": {"requests": 5000}, "credits": 250,
		  "period_start": "2026-11-01T00:00:00Z", "period_end": "2026-12-01T00:00:00Z"
		}`)
	}))
	defer billing.Close()

	src, err := httpsource.New(httpsource.Options{BaseURL: billing.URL, Token: "from-a-secret"})
	if err != nil {
		panic(err)
	}
	defer src.Close()

	e, err := src.Lookup(context.Background(), entitlement.Key{Kind: entitlement.BySubject, ID: "acme"})
	fmt.Println(e.Plan, e.Status, e.Features, e.Quotas["requests"], *e.Credits, e.PeriodEnd.Format("2006-01-02"), err)

	_, err = src.Lookup(context.Background(), entitlement.Key{Kind: entitlement.BySubject, ID: "nobody"})
	fmt.Println(errors.Is(err, entitlement.ErrNotFound))
	// Output:
	// pro active [export] 5000 250 2026-12-01 <nil>
	// true
}
