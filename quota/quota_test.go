package quota

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestKey(t *testing.T) {
	est := time.FixedZone("EST", -5*3600)
	cases := []struct {
		name  string
		start time.Time
		want  string
	}{
		{"utc", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), "acme\x00requests\x0020260301T000000"},
		{"every digit", time.Date(2019, 12, 31, 23, 59, 58, 999, time.UTC), "acme\x00requests\x0020191231T235958"},
		{"another zone is written in UTC", time.Date(2026, 3, 1, 21, 30, 5, 0, est), "acme\x00requests\x0020260302T023005"},
		{"a short year is padded", time.Date(987, 6, 5, 4, 3, 2, 0, time.UTC), "acme\x00requests\x0009870605T040302"},
		{"the zero time", time.Time{}, "acme\x00requests\x0000010101T000000"},
		{"a five-digit year", time.Date(12345, 1, 2, 3, 4, 5, 0, time.UTC), "acme\x00requests\x00123450102T030405"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Key("acme", "requests", c.start)
			if got != c.want {
				t.Errorf("Key = %q, want %q", got, c.want)
			}
			// The layout is time.Format's, whatever the year.
			if want := "acme\x00requests\x00" + c.start.UTC().Format(keyStampLayout); got != want {
				t.Errorf("Key = %q, time.Format gives %q", got, want)
			}
		})
	}
}

// TestAppendKey: AppendKey appends exactly what Key returns, whatever the
// subject (the Check path builds keys with one, tests and tools with the
// other, and both must name the same counter), and keeps what dst held.
func TestAppendKey(t *testing.T) {
	est := time.FixedZone("EST", -5*3600)
	long := strings.Repeat("d2a84f4b8b650937", 512)
	subjects := []struct{ name, subject string }{
		{"plain", "acme"},
		{"empty", ""},
		{"NUL bytes", "a\x00b\x00\x00"},
		{"only NUL", "\x00"},
		{"long", long},
		{"not UTF-8", "\xff\xfe\x80caf\xc3"},
		{"UTF-8", "caf\u00e9 \u65e5\u672c"},
	}
	quotas := []string{"requests", "", "per\x00second", "\xff"}
	starts := []struct {
		name  string
		start time.Time
	}{
		{"utc", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{"another zone", time.Date(2026, 3, 1, 21, 30, 5, 7, est)},
		{"the zero time", time.Time{}},
		{"year 9999", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)},
		{"year 10000", time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"year -1", time.Date(-1, 6, 5, 4, 3, 2, 0, time.UTC)},
		{"a huge year", time.Unix(1<<62, 0)},
		{"a year far back", time.Unix(-1<<62, 0)},
	}
	for _, sub := range subjects {
		for _, q := range quotas {
			for _, st := range starts {
				t.Run(fmt.Sprintf("%s/%q/%s", sub.name, q, st.name), func(t *testing.T) {
					want := Key(sub.subject, q, st.start)
					if got := string(AppendKey(nil, sub.subject, q, st.start)); got != want {
						t.Errorf("AppendKey(nil) = %q, Key = %q", got, want)
					}
					// Into a buffer with room: appended after what it holds.
					dst := append(make([]byte, 0, 20000), "held"...)
					got := AppendKey(dst, sub.subject, q, st.start)
					if string(got) != "held"+want {
						t.Errorf("AppendKey(\"held\") = %q, want %q", got, "held"+want)
					}
					if &got[0] != &dst[0] {
						t.Error("AppendKey into a buffer with room moved it")
					}
					// Into a buffer that must grow.
					if got := AppendKey([]byte("x"), sub.subject, q, st.start); string(got) != "x"+want {
						t.Errorf("AppendKey(\"x\") = %q, want %q", got, "x"+want)
					}
					// Both are what the layout says.
					if f := sub.subject + "\x00" + q + "\x00" + st.start.UTC().Format(keyStampLayout); want != f {
						t.Errorf("Key = %q, time.Format gives %q", want, f)
					}
				})
			}
		}
	}
}

// TestAppendKeyAllocs: the Check path builds its keys into a buffer it
// reuses; with room, AppendKey allocates nothing.
func TestAppendKeyAllocs(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.FixedZone("EST", -5*3600))
	buf := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(100, func() {
		buf = AppendKey(buf[:0], "d2a84f4b8b650937ec8f73cd8be2c74add5a911ba64df27458ed8229da804a26", "requests", start)
	})
	if allocs != 0 {
		t.Errorf("AppendKey into a buffer with room: %v allocations, want 0", allocs)
	}
}

// BenchmarkAppendKey is the Check path's key: into a reused buffer.
// Compare with BenchmarkKey (a new string each time).
func BenchmarkAppendKey(b *testing.B) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendKey(buf[:0], "d2a84f4b8b650937ec8f73cd8be2c74add5a911ba64df27458ed8229da804a26", "requests", start)
	}
}

func BenchmarkKey(b *testing.B) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	for b.Loop() {
		_ = Key("d2a84f4b8b650937ec8f73cd8be2c74add5a911ba64df27458ed8229da804a26", "requests", start)
	}
}

func TestFits(t *testing.T) {
	const maxI, minI = math.MaxInt64, math.MinInt64
	cases := []struct {
		name              string
		used, cost, limit int64
		want              bool
	}{
		{"room left", 3, 2, 5, true},
		{"exactly to the limit", 2, 3, 5, true},
		{"one past the limit", 4, 2, 5, false},
		{"cost 0 on a counter below its limit", 3, 0, 5, true},
		{"cost 0 on a counter at its limit", 5, 0, 5, true},
		{"cost 0 on a counter over its limit (limit lowered)", 6, 0, 5, false},
		{"negative cost on a counter over its limit", 6, -1, 5, false},
		{"the smallest cost on a counter over its limit", 6, minI, 5, false},
		{"negative cost on a counter within its limit", 5, -1, 5, true},
		{"cost 0 under a negative limit", 0, 0, -1, false},
		{"cost 0 under a zero limit", 0, 0, 0, true},
		{"huge cost never wraps", 2, maxI, 5, false},
		{"huge cost on a huge limit", 0, maxI, maxI, true},
		{"huge use over a small limit", maxI, 1, 5, false},
		{"negative use counts as 0", -3, 5, 5, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Fits(c.used, c.cost, c.limit); got != c.want {
				t.Errorf("Fits(%d, %d, %d) = %v, want %v", c.used, c.cost, c.limit, got, c.want)
			}
		})
	}
}
