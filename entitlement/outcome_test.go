package entitlement

import (
	"slices"
	"testing"
)

// TestCacheOutcomeLabels pins the label values: dashboards and alerts select
// on them, so a rename is a breaking change.
func TestCacheOutcomeLabels(t *testing.T) {
	var got []string
	for _, o := range CacheOutcomes {
		got = append(got, o.String())
	}
	want := []string{"hit", "negative_hit", "miss", "stale", "error", "suspect_not_found"}
	if !slices.Equal(got, want) {
		t.Errorf("labels = %q, want %q", got, want)
	}
	if got, want := CacheOutcome(len(want)).String(), "unknown"; got != want {
		t.Errorf("out of range: %q, want %q", got, want)
	}
}
