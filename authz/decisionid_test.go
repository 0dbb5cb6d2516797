package authz

import (
	"strings"
	"testing"
)

// testDecisionID is every decision's id in this package's tests: answers
// to the same request compare equal. TestDecisionIDs checks the real ids.
const testDecisionID = "0123456789abcdeffedcba9876543210"

func init() {
	idBits = func() (uint64, uint64) { return 0x0123456789abcdef, 0xfedcba9876543210 }
}

func TestDecisionIDs(t *testing.T) {
	var b decisionID
	if got := b.format(0x0123456789abcdef, 0xfedcba9876543210); got != testDecisionID {
		t.Errorf("format = %q, want %q", got, testDecisionID)
	}
	seen := map[string]bool{}
	for range 10000 {
		b := new(decisionID)
		id := b.format(randomIDBits())
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("id %q is not 32 lower-case hex digits", id)
		}
		if seen[id] {
			t.Fatalf("id %q repeated", id)
		}
		seen[id] = true
	}
}
