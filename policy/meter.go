package policy

import (
	"strconv"
	"strings"
)

// MeterSpec makes a route metered: what its requests really used is
// settled when the response ends, and reported to billing as a usage
// event. See docs/metering.md.
type MeterSpec struct {
	// Event names the meter (a Stripe meter's event_name); default: the
	// route's quota name, or the route's name.
	Event string `yaml:"event"`
	// UnitsFrom says where the actual units come from. Nothing set: the
	// request is billed what its Check reserved.
	UnitsFrom UnitsFromSpec `yaml:"units_from"`
	// Overage is what happens when the actual units exceed the
	// reservation: "allow" (default) charges and bills them all; "cap"
	// charges and bills the reservation only.
	Overage string `yaml:"overage"`
	// Billable lists the upstream statuses that are billed: classes such
	// as "2xx" or exact codes such as "404"; default ["2xx"]. A response
	// outside them is not billed, and its reservation is released.
	Billable []string `yaml:"billable"`
}

// UnitsFromSpec names the source of a response's actual units. Set one of
// Header or Body.
type UnitsFromSpec struct {
	// Header is a response header or trailer the upstream sets, such as
	// x-usage-units: a whole number.
	Header string `yaml:"header"`
	// Body is a member of an OpenAI-compatible JSON body, or of the last
	// event of a text/event-stream body, that holds the units, such as
	// usage.total_tokens. The body is read by tollgate's ext_proc server.
	Body string `yaml:"body"`
	// Input and Output price input and output tokens apart: units =
	// input × InputWeight + output × OutputWeight, read from the members
	// Input and Output (usage.prompt_tokens, usage.completion_tokens).
	Input        string `yaml:"input"`
	Output       string `yaml:"output"`
	InputWeight  int64  `yaml:"input_weight"`
	OutputWeight int64  `yaml:"output_weight"`
	// MaxBodyBytes bounds what is kept of a body while looking for usage
	// (default 1 MiB): a larger JSON body is billed at its reservation; of
	// an event stream, only the events are kept.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
}

// Meter is a route's compiled MeterSpec.
type Meter struct {
	Event  string
	Header string // lower-case; "" when the units come from the body
	// Body members, as paths of object keys; nil when not from the body.
	Body, Input, Output       []string
	InputWeight, OutputWeight int64
	MaxBodyBytes              int64
	CapOverage                bool
	billable                  []statusMatch
}

type statusMatch struct{ lo, hi int }

// Billable reports whether an upstream status is billed.
func (m *Meter) Billable(status int) bool {
	for _, b := range m.billable {
		if status >= b.lo && status <= b.hi {
			return true
		}
	}
	return false
}

// FromBody reports whether the units are read from the response body.
func (m *Meter) FromBody() bool { return m.Body != nil || m.Input != nil }

// DefaultMaxBodyBytes bounds a metered body kept while looking for usage.
const DefaultMaxBodyBytes = 1 << 20

func compileMeter(r *Route, ms *MeterSpec, fail func(path, msg string, args ...any)) {
	if ms == nil {
		return
	}
	m := &Meter{Event: ms.Event, Header: strings.ToLower(ms.UnitsFrom.Header), MaxBodyBytes: ms.UnitsFrom.MaxBodyBytes}
	if m.Event == "" {
		m.Event = r.Quota
	}
	if m.Event == "" {
		m.Event = r.Name
	}
	if m.Event == "" {
		fail("meter.event", "is required for a route without a name or quota")
	}
	u := ms.UnitsFrom
	set := 0
	for _, s := range []string{u.Header, u.Body, u.Input + u.Output} {
		if s != "" {
			set++
		}
	}
	if set > 1 {
		fail("meter.units_from", "set one of header, body, or input and output")
	}
	if m.Header != "" && (strings.ContainsAny(m.Header, " :") || strings.HasPrefix(m.Header, ":")) {
		fail("meter.units_from.header", "%q is not a header name", u.Header)
	}
	path := func(field, p string) []string {
		if p == "" {
			return nil
		}
		parts := strings.Split(p, ".")
		for _, s := range parts {
			if s == "" {
				fail("meter.units_from."+field, "%q is not a member path such as usage.total_tokens", p)
				return nil
			}
		}
		return parts
	}
	m.Body = path("body", u.Body)
	m.Input, m.Output = path("input", u.Input), path("output", u.Output)
	if (u.Input == "") != (u.Output == "") {
		fail("meter.units_from", "set input and output together")
	}
	m.InputWeight, m.OutputWeight = u.InputWeight, u.OutputWeight
	if m.Input != nil {
		if m.InputWeight == 0 {
			m.InputWeight = 1
		}
		if m.OutputWeight == 0 {
			m.OutputWeight = 1
		}
	}
	if m.InputWeight < 0 || m.OutputWeight < 0 {
		fail("meter.units_from", "weights must not be negative")
	}
	if m.MaxBodyBytes < 0 {
		fail("meter.units_from.max_body_bytes", "must not be negative")
	}
	if m.MaxBodyBytes == 0 {
		m.MaxBodyBytes = DefaultMaxBodyBytes
	}
	switch ms.Overage {
	case "", "allow":
	case "cap":
		m.CapOverage = true
	default:
		fail("meter.overage", "%q is not allow or cap", ms.Overage)
	}
	billable := ms.Billable
	if len(billable) == 0 {
		billable = []string{"2xx"}
	}
	for _, b := range billable {
		if lo, hi, ok := parseStatusMatch(b); ok {
			m.billable = append(m.billable, statusMatch{lo, hi})
		} else {
			fail("meter.billable", "%q is not a status class (2xx) or code (404)", b)
		}
	}
	if r.Public {
		fail("meter", "a public route has no subject to bill")
	}
	r.Meter = m
}

func parseStatusMatch(s string) (lo, hi int, ok bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) == 3 && s[1:] == "xx" && s[0] >= '1' && s[0] <= '5' {
		c := int(s[0]-'0') * 100
		return c, c + 99, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 100 || n > 599 {
		return 0, 0, false
	}
	return n, n, true
}

// Units reads a whole number of units from a header or member value; ok
// is false for anything else (negative, fractional, not a number).
func Units(v string) (int64, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
