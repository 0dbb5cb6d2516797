package entitlement

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDecodeJSON(t *testing.T) {
	cases := []struct {
		name string
		body string
		want string // an error substring, or "" for a good record
	}{
		{"minimal", `{"subject":"acme","plan":"pro","status":"active"}`, ""},
		{"every field", `{"subject":"acme","plan":"pro","status":"past_due","features":["chat"],"quotas":{"requests":5},"credits":3,
			"period_start":"2026-03-01T00:00:00Z","period_end":"2026-04-01T00:00:00Z","past_due_since":"2026-03-20T00:00:00Z","extra":1}`, ""},
		{"no subject", `{"plan":"pro","status":"active"}`, `"subject" is required`},
		{"no plan", `{"subject":"acme","status":"active"}`, `"plan" is required`},
		{"no status", `{"subject":"acme","plan":"pro"}`, `"status" is required`},
		{"unknown status", `{"subject":"acme","plan":"pro","status":"gold"}`, `"status": "gold" is not a subscription status`},
		{"negative credits", `{"subject":"acme","plan":"pro","status":"active","credits":-1}`, `"credits" must not be negative`},
		{"negative quota", `{"subject":"acme","plan":"pro","status":"active","quotas":{"requests":-5}}`, `"quotas.requests" must not be negative`},
		{"period backwards", `{"subject":"acme","plan":"pro","status":"active","period_start":"2026-04-01T00:00:00Z","period_end":"2026-03-01T00:00:00Z"}`, `"period_end" is before "period_start"`},
		{"wrong type", `{"subject":"acme","plan":"pro","status":"active","credits":"lots"}`, `"credits": want int64, got a JSON string`},
		{"bad time", `{"subject":"acme","plan":"pro","status":"active","period_end":"tomorrow"}`, "a time is not RFC 3339"},
		{"syntax", `{"subject":"acme",}`, "malformed JSON at byte 19"},
		{"truncated", `{"subject":"acme","plan":`, "malformed JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := DecodeJSON([]byte(c.body))
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("err = %v, want a record", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			case c.want == "" && e.Subject != "acme":
				t.Errorf("subject = %q, want acme", e.Subject)
			}
		})
	}
}

func TestJSONRoundTrip(t *testing.T) {
	credits := int64(7)
	est := time.FixedZone("EST", -5*3600)
	in := &Entitlement{
		Subject: "acme", Customer: "cus_123", Plan: "pro", Status: StatusPastDue, Features: []string{"chat"},
		Quotas: map[string]int64{"requests": 10}, Credits: &credits,
		PeriodStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), PeriodEnd: time.Date(2026, 3, 31, 19, 0, 0, 0, est),
		PastDueSince: time.Date(2026, 3, 20, 0, 0, 0, 0, time.UTC),
	}
	b, err := json.Marshal(ToJSON(in))
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	want := *in
	want.PeriodEnd = in.PeriodEnd.UTC() // written in UTC
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", *got, want)
	}
	// Zero times and empty lists are left out.
	b, _ = json.Marshal(ToJSON(&Entitlement{Subject: "a", Plan: "free", Status: StatusActive}))
	if got, want := string(b), `{"subject":"a","plan":"free","status":"active"}`; got != want {
		t.Errorf("minimal record = %s, want %s", got, want)
	}
}

func TestParseKeyDigest(t *testing.T) {
	const d = "d2a84f4b8b650937ec8f73cd8be2c74add5a911ba64df27458ed8229da804a26"
	cases := []struct {
		in     string
		want   string
		wantOK bool
	}{
		{d, d, true},
		{strings.ToUpper(d), d, true},
		{"sha256:" + d, d, true},
		{"sha256:" + strings.ToUpper(d), d, true},
		{"SHA256:" + d, "", false},
		{d[:62], "", false},
		{d + "00", "", false},
		{"zz" + d[2:], "", false},
		{"", "", false},
	}
	for _, c := range cases {
		got, ok := ParseKeyDigest(c.in)
		if got != c.want || ok != c.wantOK {
			t.Errorf("ParseKeyDigest(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.wantOK)
		}
	}
}
