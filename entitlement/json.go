package entitlement

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// JSON is an entitlement record in the JSON contract that the http source
// reads from the billing service and the redis source stores (see
// docs/openapi/entitlements.yaml). Unknown fields are ignored, so a writer
// can add fields before tollgate reads them.
type JSON struct {
	Subject      string           `json:"subject"`
	Customer     string           `json:"customer,omitempty"`
	Plan         string           `json:"plan"`
	Status       string           `json:"status"`
	Features     []string         `json:"features,omitempty"`
	Quotas       map[string]int64 `json:"quotas,omitempty"`
	Credits      *int64           `json:"credits,omitempty"`
	PeriodStart  time.Time        `json:"period_start,omitzero"`
	PeriodEnd    time.Time        `json:"period_end,omitzero"`
	PastDueSince time.Time        `json:"past_due_since,omitzero"`
}

// ToJSON is e in the JSON contract, with its times in UTC.
func ToJSON(e *Entitlement) JSON {
	return JSON{
		Subject: e.Subject, Customer: e.Customer, Plan: e.Plan, Status: string(e.Status),
		Features: e.Features, Quotas: e.Quotas, Credits: e.Credits,
		PeriodStart: e.PeriodStart.UTC(), PeriodEnd: e.PeriodEnd.UTC(), PastDueSince: e.PastDueSince.UTC(),
	}
}

// Entitlement is the record j holds, unchecked (see Validate).
func (j *JSON) Entitlement() *Entitlement {
	return &Entitlement{
		Subject: j.Subject, Customer: j.Customer, Plan: j.Plan, Status: Status(j.Status),
		Features: j.Features, Quotas: j.Quotas, Credits: j.Credits,
		PeriodStart: j.PeriodStart, PeriodEnd: j.PeriodEnd, PastDueSince: j.PastDueSince,
	}
}

// DecodeJSON parses one record in the JSON contract and checks it with
// Validate. Errors name the JSON field and never echo a value the record
// holds, except an unknown status.
func DecodeJSON(body []byte) (*Entitlement, error) {
	var j JSON
	if err := json.Unmarshal(body, &j); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, fmt.Errorf("%q: want %s, got a JSON %s", te.Field, te.Type, te.Value)
		}
		var pe *time.ParseError
		if errors.As(err, &pe) { // its message quotes the value: name the field instead
			return nil, fmt.Errorf("%s: a time is not RFC 3339", badTime(body))
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("malformed JSON at byte %d: %w", se.Offset, err)
		}
		return nil, fmt.Errorf("malformed JSON: %w", err)
	}
	e := j.Entitlement()
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

// badTime names the first time field of body that is not an RFC 3339 time.
func badTime(body []byte) string {
	var times struct {
		PeriodStart  json.RawMessage `json:"period_start"`
		PeriodEnd    json.RawMessage `json:"period_end"`
		PastDueSince json.RawMessage `json:"past_due_since"`
	}
	_ = json.Unmarshal(body, &times)
	for _, f := range []struct {
		name string
		v    json.RawMessage
	}{{"period_start", times.PeriodStart}, {"period_end", times.PeriodEnd}, {"past_due_since", times.PastDueSince}} {
		var t time.Time
		if len(f.v) > 0 && json.Unmarshal(f.v, &t) != nil {
			return `"` + f.name + `"`
		}
	}
	return "a time field"
}

// Validate checks what every record must hold: a subject, a plan, a known
// status, no negative credits or quota, a period that does not end before
// it starts, and times that can be written in RFC 3339 in UTC. Errors name
// the JSON field.
func (e *Entitlement) Validate() error {
	switch {
	case e.Subject == "":
		return errors.New(`"subject" is required`)
	case e.Plan == "":
		return errors.New(`"plan" is required`)
	case e.Status == "":
		return errors.New(`"status" is required`)
	case !e.Status.Valid():
		return fmt.Errorf(`"status": %q is not a subscription status (want one of active, trialing, past_due, unpaid, canceled, incomplete, incomplete_expired, paused)`, e.Status)
	case e.Credits != nil && *e.Credits < 0:
		return errors.New(`"credits" must not be negative`)
	case !e.PeriodStart.IsZero() && !e.PeriodEnd.IsZero() && e.PeriodEnd.Before(e.PeriodStart):
		return errors.New(`"period_end" is before "period_start"`)
	}
	for _, t := range []struct {
		name string
		t    time.Time
	}{{"period_start", e.PeriodStart}, {"period_end", e.PeriodEnd}, {"past_due_since", e.PastDueSince}} {
		// Written back in UTC (ToJSON), a time must stay in RFC 3339's years.
		if y := t.t.UTC().Year(); !t.t.IsZero() && (y < 0 || y > 9999) {
			return fmt.Errorf("%q is out of range: in UTC its year is not 0000 to 9999", t.name)
		}
	}
	for q, n := range e.Quotas {
		if n < 0 {
			return fmt.Errorf(`"quotas.%s" must not be negative`, q)
		}
	}
	return nil
}

// ParseKeyDigest reads an API key's SHA-256 digest as written in a file:
// 64 hex digits in either case, optionally after "sha256:". It returns the
// lower-case digits, the form tollgate looks keys up by.
func ParseKeyDigest(s string) (string, bool) {
	d := strings.ToLower(strings.TrimPrefix(s, "sha256:"))
	if b, err := hex.DecodeString(d); err != nil || len(b) != 32 {
		return "", false
	}
	return d, true
}
