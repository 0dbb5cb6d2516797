package filesource

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/sourcetest"
)

// TestSourceBehaviour runs the shared source table against the file source.
func TestSourceBehaviour(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T, recs []sourcetest.Record) entitlement.Source {
		var b strings.Builder
		b.WriteString("subjects:\n")
		for _, r := range recs {
			e := r.Entitlement
			fmt.Fprintf(&b, "  - id: %s\n    plan: %s\n    status: %s\n", e.Subject, e.Plan, e.Status)
			fmt.Fprintf(&b, "    api_key_sha256: [%s]\n", strings.Join(r.APIKeyDigests, ", "))
			if len(e.Features) > 0 {
				fmt.Fprintf(&b, "    features: [%s]\n", strings.Join(e.Features, ", "))
			}
			for q, n := range e.Quotas {
				fmt.Fprintf(&b, "    quotas: {%s: %d}\n", q, n)
			}
			if e.Credits != nil {
				fmt.Fprintf(&b, "    credits: %d\n", *e.Credits)
			}
			for name, ts := range map[string]time.Time{"period_start": e.PeriodStart, "period_end": e.PeriodEnd, "past_due_since": e.PastDueSince} {
				if !ts.IsZero() {
					fmt.Fprintf(&b, "    %s: %s\n", name, ts.Format(time.RFC3339))
				}
			}
		}
		path := filepath.Join(t.TempDir(), "e.yaml")
		if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, sourcetest.All)
}
