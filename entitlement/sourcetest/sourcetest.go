// Package sourcetest is the behaviour table every entitlement.Source must
// pass. A source's test supplies a Seed that stores records in its backend
// (a file, a fake service, a real Redis, a fake Stripe) and returns a Source
// reading them.
package sourcetest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
)

// Record is one subject as the table seeds it.
type Record struct {
	Entitlement entitlement.Entitlement
	// APIKeyDigests are hex SHA-256 digests that identify the subject.
	APIKeyDigests []string
}

// Seed stores records in a fresh backend and returns a source over it.
type Seed func(t *testing.T, records []Record) entitlement.Source

// Caps says which optional fields a backend can carry; the table skips
// comparing the others.
type Caps struct {
	Quotas       bool
	Credits      bool
	Period       bool // period_start and period_end
	PastDueSince bool
}

// All is every capability.
var All = Caps{Quotas: true, Credits: true, Period: true, PastDueSince: true}

// Digests used by the table: two fixed, made-up 64-hex-digit API-key digests.
const (
	DigestAcme    = "5c4ab0a5e1a8a9b5f7b2a0ad0f4b0c53f3a5e51f8f1c0e0b2c3d4e5f60718293"
	DigestInitech = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0"
)

// Records is the table's data: one record with every field, one minimal.
func Records() []Record {
	credits := int64(250)
	return []Record{
		{
			Entitlement: entitlement.Entitlement{
				Subject: "acme", Plan: "pro", Status: entitlement.StatusPastDue,
				Features:     []string{"export", "sso"},
				Quotas:       map[string]int64{"requests": 5000},
				Credits:      &credits,
				PeriodStart:  time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
				PeriodEnd:    time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
				PastDueSince: time.Date(2026, 11, 20, 8, 30, 0, 0, time.UTC),
			},
			APIKeyDigests: []string{DigestAcme},
		},
		{
			Entitlement:   entitlement.Entitlement{Subject: "initech", Plan: "free", Status: entitlement.StatusActive},
			APIKeyDigests: []string{DigestInitech},
		},
	}
}

// Run checks src's lookups against Records.
func Run(t *testing.T, seed Seed, caps Caps) {
	t.Helper()
	recs := Records()
	src := seed(t, recs)
	ctx := context.Background()
	tests := []struct {
		name    string
		key     entitlement.Key
		want    *entitlement.Entitlement
		wantErr error
	}{
		{"by subject, every field", entitlement.Key{Kind: entitlement.BySubject, ID: "acme"}, &recs[0].Entitlement, nil},
		{"by api key digest", entitlement.Key{Kind: entitlement.ByAPIKey, ID: DigestAcme}, &recs[0].Entitlement, nil},
		{"minimal record", entitlement.Key{Kind: entitlement.ByAPIKey, ID: DigestInitech}, &recs[1].Entitlement, nil},
		{"unknown subject", entitlement.Key{Kind: entitlement.BySubject, ID: "nobody"}, nil, entitlement.ErrNotFound},
		{"unknown digest", entitlement.Key{Kind: entitlement.ByAPIKey, ID: "00" + DigestAcme[2:]}, nil, entitlement.ErrNotFound},
		{"a digest is not a subject", entitlement.Key{Kind: entitlement.BySubject, ID: DigestAcme}, nil, entitlement.ErrNotFound},
		{"a subject is not a digest", entitlement.Key{Kind: entitlement.ByAPIKey, ID: "acme"}, nil, entitlement.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := src.Lookup(ctx, tt.key)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			Compare(t, got, tt.want, caps)
		})
	}
}

// Compare reports every field of got that differs from want, within caps.
func Compare(t *testing.T, got, want *entitlement.Entitlement, caps Caps) {
	t.Helper()
	if got == nil {
		t.Fatal("nil entitlement")
	}
	if got.Subject != want.Subject || got.Plan != want.Plan || got.Status != want.Status {
		t.Errorf("subject/plan/status = %s/%s/%s, want %s/%s/%s", got.Subject, got.Plan, got.Status, want.Subject, want.Plan, want.Status)
	}
	gf, wf := slices.Sorted(slices.Values(got.Features)), slices.Sorted(slices.Values(want.Features))
	if !slices.Equal(gf, wf) {
		t.Errorf("features = %v, want %v", gf, wf)
	}
	if caps.Quotas && len(got.Quotas)+len(want.Quotas) > 0 {
		if len(got.Quotas) != len(want.Quotas) {
			t.Errorf("quotas = %v, want %v", got.Quotas, want.Quotas)
		}
		for k, v := range want.Quotas {
			if got.Quotas[k] != v {
				t.Errorf("quotas[%s] = %d, want %d", k, got.Quotas[k], v)
			}
		}
	}
	if caps.Credits && (got.Credits == nil) != (want.Credits == nil) || got.Credits != nil && want.Credits != nil && *got.Credits != *want.Credits {
		t.Errorf("credits = %v, want %v", deref(got.Credits), deref(want.Credits))
	}
	if caps.Period && (!got.PeriodStart.Equal(want.PeriodStart) || !got.PeriodEnd.Equal(want.PeriodEnd)) {
		t.Errorf("period = %v..%v, want %v..%v", got.PeriodStart, got.PeriodEnd, want.PeriodStart, want.PeriodEnd)
	}
	if caps.PastDueSince && !got.PastDueSince.Equal(want.PastDueSince) {
		t.Errorf("past_due_since = %v, want %v", got.PastDueSince, want.PastDueSince)
	}
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}
