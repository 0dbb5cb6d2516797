// Package period owns the windows quotas are counted in: a second, a minute,
// an hour, a day, or a month that is either the calendar month or the
// subscription's billing month. It is a leaf: policy compiles plan quotas
// into periods, and quota stores count per window; neither imports the other.
package period

import (
	"fmt"
	"time"
)

// Period is the length of a quota window.
type Period uint8

// The periods. Second and Minute are rate limits (429 rate_limited); the
// others are allowances (402 quota_exhausted).
const (
	Second Period = iota + 1
	Minute
	Hour
	Day
	Month
)

var periodNames = map[Period]string{Second: "second", Minute: "minute", Hour: "hour", Day: "day", Month: "month"}

// Parse reads "second", "minute", "hour", "day" or "month".
func Parse(s string) (Period, error) {
	for p, n := range periodNames {
		if n == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("%q is not a period (want second, minute, hour, day or month)", s)
}

// String is the period's name.
func (p Period) String() string { return periodNames[p] }

// IsRateLimit reports whether exhausting the period is a rate limit (429)
// rather than a spent allowance (402).
func (p Period) IsRateLimit() bool { return p == Second || p == Minute }

// Seconds is the nominal window length, for the RateLimit-Policy header.
func (p Period) Seconds() int64 {
	switch p {
	case Second:
		return 1
	case Minute:
		return 60
	case Hour:
		return 3600
	case Day:
		return 86400
	case Month:
		return 30 * 86400
	}
	return 0
}

// Window returns the window [start, end) of period p that holds now, in UTC.
// A month window is the calendar month, unless anchor is set (the start of
// the subscription's billing period): then months run from anchor's day and
// time of month, clamped to the month's last day as billing systems do.
func Window(p Period, now, anchor time.Time) (start, end time.Time) {
	now = now.UTC()
	switch p {
	case Second:
		start = now.Truncate(time.Second)
		return start, start.Add(time.Second)
	case Minute:
		start = now.Truncate(time.Minute)
		return start, start.Add(time.Minute)
	case Hour:
		start = now.Truncate(time.Hour)
		return start, start.Add(time.Hour)
	case Day:
		start = time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 1)
	case Month:
		if anchor.IsZero() {
			start = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
			return start, start.AddDate(0, 1, 0)
		}
		return billingMonth(now, anchor.UTC())
	}
	return now, now
}

// billingMonth finds the billing month holding now for a period anchored at
// anchor: the k-th month after anchor, each starting on anchor's day (or the
// month's last day when shorter) at anchor's time of day.
func billingMonth(now, anchor time.Time) (time.Time, time.Time) {
	months := (now.Year()-anchor.Year())*12 + int(now.Month()-anchor.Month())
	start := addMonthsClamped(anchor, months)
	if start.After(now) {
		months--
		start = addMonthsClamped(anchor, months)
	} else if next := addMonthsClamped(anchor, months+1); !next.After(now) {
		months++
		start = next
	}
	return start, addMonthsClamped(anchor, months+1)
}

func addMonthsClamped(t time.Time, n int) time.Time {
	y, m := t.Year(), int(t.Month())-1+n
	y += m / 12
	m %= 12
	if m < 0 {
		m += 12
		y--
	}
	month := time.Month(m + 1)
	last := time.Date(y, month+1, 0, 0, 0, 0, 0, time.UTC).Day()
	d := t.Day()
	if d > last {
		d = last
	}
	return time.Date(y, month, d, t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
}
