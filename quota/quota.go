package quota

import (
	"context"
	"errors"
	"math"
	"strings"
	"time"
)

// Item is one counter a request spends on.
type Item struct {
	// Key names the counter: subject, quota and window start. Build it with Key.
	Key string
	// Cost is what this request spends; a negative cost counts as 0.
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
// The window start is written as 20060102T150405 in UTC. Key runs on every
// spend, so it writes the digits itself into one allocation rather than
// going through time.Format and a concatenation.
func Key(subject, quota string, start time.Time) string {
	var b strings.Builder
	b.Grow(len(subject) + len(quota) + 2 + len(keyStampLayout))
	b.WriteString(subject)
	b.WriteByte(0)
	b.WriteString(quota)
	b.WriteByte(0)
	var stamp [len(keyStampLayout)]byte
	b.Write(appendKeyStamp(stamp[:0], start))
	return b.String()
}

// keyStampLayout is the layout of a window start inside a key.
const keyStampLayout = "20060102T150405"

// appendKeyStamp appends t in UTC as keyStampLayout. Years outside 0–9999
// are written by time.Format, which is what the layout means for them.
func appendKeyStamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, keyStampLayout)
	}
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = appendDigits(b, int(month), 2)
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = appendDigits(b, minute, 2)
	return appendDigits(b, sec, 2)
}

// appendDigits appends v, 0 ≤ v < 10^width, zero-padded to width digits.
func appendDigits(b []byte, v, width int) []byte {
	n := len(b)
	for range width {
		b = append(b, 0)
	}
	for i := len(b) - 1; i >= n; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return b
}

// Store spends on counters.
type Store interface {
	// Spend adds each item's Cost to its counter if every counter stays
	// within its Limit; otherwise it changes nothing. It writes each
	// counter's use (after the spend, or as it stands when refused) to
	// used, which has len(items). It returns the index of the first item
	// that did not fit, or -1 when everything was spent. A counter never
	// goes past the Limit of any item spent on it, whatever the costs: the
	// arithmetic is checked, never wrapped, and items of one Spend that name
	// the same counter are summed before the check. group is the subject:
	// every key of one subject must always be spent with the same group, which
	// lets a store lock per subject.
	Spend(ctx context.Context, group string, items []Item, used []int64) (denied int, err error)
}

// ErrUnavailable wraps a store's failure to answer (for example Redis is
// down). The caller applies the quota's failure policy.
var ErrUnavailable = errors.New("quota store unavailable")

// Fits reports whether cost more units fit a counter at used within limit:
// used + cost ≤ limit, computed without overflow. A negative cost counts as
// 0, and a cost of 0 fits only while used ≤ limit: a counter already over
// its limit (the limit was lowered, or spends counted while Redis was down
// were written back) refuses every cost, as used + 0 ≤ limit says. A
// negative use (a top-up, see TopUpper) leaves that much more room.
func Fits(used, cost, limit int64) bool {
	cost = max(cost, 0)
	if used < 0 {
		return used+cost <= limit // cost ≥ 0 > used: cannot overflow
	}
	// used ≤ limit first, so limit − used cannot overflow.
	return used <= limit && cost <= limit-used
}

// addSat is a + b for a, b ≥ 0, saturating at math.MaxInt64.
func addSat(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
}

// keyCost is what the items of one Spend cost on items[i]'s counter
// together: items[i].Cost plus the cost of every other item naming the same
// key, saturating. With distinct keys (the usual case) it is items[i].Cost.
func keyCost(items []Item, i int) int64 {
	c := max(items[i].Cost, 0)
	for j := range items {
		if j != i && items[j].Key == items[i].Key {
			c = addSat(c, max(items[j].Cost, 0))
		}
	}
	return c
}
