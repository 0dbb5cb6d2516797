package quota

import (
	"context"
	"testing"
	"time"
)

// TestMemorySameKeyTwice: two items on one counter both count, whether the
// counter is new, live or expired.
func TestMemorySameKeyTwice(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	m := NewMemory(func() time.Time { return now })
	it := Item{Key: "k", Cost: 2, Limit: 100, Reset: now.Add(time.Minute)}
	used := make([]int64, 2)
	for _, want := range []int64{4, 8} {
		if d, err := m.Spend(context.Background(), "g", []Item{it, it}, used); d != -1 || err != nil {
			t.Fatal(d, err)
		}
		if used[1] != want {
			t.Errorf("used = %v, want %d after the second item", used, want)
		}
	}
	now = now.Add(time.Minute) // the counter expires
	it.Reset = now.Add(time.Minute)
	if _, err := m.Spend(context.Background(), "g", []Item{it, it}, used); err != nil || used[1] != 4 {
		t.Errorf("after the window: used = %v, %v, want 4", used, err)
	}
}
