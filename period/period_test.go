package period

import (
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	ts := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name       string
		p          Period
		now        string
		anchor     string
		start, end string
	}{
		{"second", Second, "2026-11-24T12:34:56.789Z", "", "2026-11-24T12:34:56Z", "2026-11-24T12:34:57Z"},
		{"minute", Minute, "2026-11-24T12:34:56Z", "", "2026-11-24T12:34:00Z", "2026-11-24T12:35:00Z"},
		{"hour", Hour, "2026-11-24T12:34:56Z", "", "2026-11-24T12:00:00Z", "2026-11-24T13:00:00Z"},
		{"day in UTC", Day, "2026-11-24T23:59:59+05:00", "", "2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z"},
		{"calendar month", Month, "2026-12-31T23:00:00Z", "", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"billing month", Month, "2026-11-24T00:00:00Z", "2026-01-15T08:00:00Z", "2026-11-15T08:00:00Z", "2026-12-15T08:00:00Z"},
		{"billing month before the anchor day", Month, "2026-11-10T00:00:00Z", "2026-01-15T08:00:00Z", "2026-10-15T08:00:00Z", "2026-11-15T08:00:00Z"},
		{"billing month at the boundary", Month, "2026-11-15T08:00:00Z", "2026-01-15T08:00:00Z", "2026-11-15T08:00:00Z", "2026-12-15T08:00:00Z"},
		{"billing month clamps to the last day", Month, "2027-02-28T12:00:00Z", "2026-01-31T00:00:00Z", "2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z"},
		{"billing month across a year", Month, "2027-01-03T00:00:00Z", "2026-06-20T00:00:00Z", "2026-12-20T00:00:00Z", "2027-01-20T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var anchor time.Time
			if tt.anchor != "" {
				anchor = ts(tt.anchor)
			}
			start, end := Window(tt.p, ts(tt.now), anchor)
			if !start.Equal(ts(tt.start)) || !end.Equal(ts(tt.end)) {
				t.Errorf("Window = [%s, %s), want [%s, %s)", start.Format(time.RFC3339), end.Format(time.RFC3339), tt.start, tt.end)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for _, p := range []Period{Second, Minute, Hour, Day, Month} {
		got, err := Parse(p.String())
		if err != nil || got != p {
			t.Errorf("Parse(%q) = %v, %v", p, got, err)
		}
	}
	if _, err := Parse("week"); err == nil {
		t.Error("week: want error")
	}
}
