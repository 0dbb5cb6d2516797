package quota

import (
	"context"
	"errors"
	"time"
)

// Item is one counter a request spends on.
type Item struct {
	// Key names the counter: subject, quota and window start. Build it with Key.
	Key string
	// Cost is what this request spends (≥ 0).
	Cost int64
	// Limit is the window's allowance.
	Limit int64
	// Reset is when the window ends and the counter expires.
	Reset time.Time
	// FailOpen lets a store that shares counters (Redis) count this item
	// locally while the shared store is down, instead of failing the spend.
	FailOpen bool
}

// Key builds the counter key for a subject's quota in the window starting at start.
func Key(subject, quota string, start time.Time) string {
	return subject + "\x00" + quota + "\x00" + start.UTC().Format("20060102T150405")
}

// Store spends on counters.
type Store interface {
	// Spend adds each item's Cost to its counter if every counter stays
	// within its Limit; otherwise it changes nothing. It writes each
	// counter's use (after the spend, or as it stands when refused) to
	// used, which has len(items). It returns the index of the first item
	// that did not fit, or -1 when everything was spent. group is the subject:
	// every key of one subject must always be spent with the same group, which
	// lets a store lock per subject.
	Spend(ctx context.Context, group string, items []Item, used []int64) (denied int, err error)
}

// ErrUnavailable wraps a store's failure to answer (for example Redis is
// down). The caller applies the quota's failure policy.
var ErrUnavailable = errors.New("quota store unavailable")
