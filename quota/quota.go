package quota

import (
	"context"
	"errors"
	"math"
	"time"
	"unsafe"
)

// Item is one counter a request spends on.
type Item struct {
	// Key names the counter: subject, quota and window start. Build it with
	// Key, or with AppendKey into a buffer the caller reuses: a store keeps
	// no Key past the call that passed it (see Store), so Key may alias
	// memory that the caller overwrites once the call has returned.
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

// Key builds the counter key for a subject's quota in the window starting at start:
// the bytes AppendKey appends, in one allocation.
func Key(subject, quota string, start time.Time) string {
	b := AppendKey(make([]byte, 0, keyLen(subject, quota)), subject, quota, start)
	// b is new and never written again: the string may own it, as
	// strings.Builder's String does.
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// AppendKey appends the counter key for a subject's quota in the window
// starting at start to dst and returns the extended buffer: subject, a NUL
// byte, quota, a NUL byte and the window start, written as 20060102T150405
// in UTC. It writes the digits itself rather than going through
// time.Format, so it allocates nothing when dst has room: the Check path
// builds keys into a buffer it reuses (a store keeps no key past its call,
// see Store). Key returns the same bytes as a string.
func AppendKey(dst []byte, subject, quota string, start time.Time) []byte {
	dst = append(dst, subject...)
	dst = append(dst, 0)
	dst = append(dst, quota...)
	dst = append(dst, 0)
	return appendKeyStamp(dst, start)
}

// keyLen is the length of a key of subject and quota whose window start
// is written in keyStampLayout (a year within 0–9999).
func keyLen(subject, quota string) int {
	return len(subject) + len(quota) + 2 + len(keyStampLayout)
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
//
// Keys and groups are borrowed, not kept. A group or an Item's Key passed
// to Spend (and to Peek, Adjust and TopUp) may alias memory the caller
// reuses once the call returns (the Check path builds its keys with
// AppendKey into a buffer of its pooled request), so a store never retains
// the string itself: whatever outlives the call (a new map entry, a
// journal or queue entry, a goroutine or a reply that runs on, an error
// kept past the call) holds a copy (strings.Clone, or a substring of a new
// string such as the Redis key). Looking up an existing counter copies
// nothing: a spend on counters that exist allocates no key.
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
	// lets a store lock per subject. Neither group nor any Key is kept past
	// the call (see Store).
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
