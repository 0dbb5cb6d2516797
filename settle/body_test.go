package settle

import (
	"strings"
	"testing"

	"github.com/tollgate-authz/tollgate/policy"
)

func meterOf(t *testing.T, u policy.UnitsFromSpec) *policy.Meter {
	t.Helper()
	p, errs := policy.Compile(policy.Spec{Routes: []policy.RouteSpec{{Name: "m", Meter: &policy.MeterSpec{UnitsFrom: u}}}})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return p.Routes()[0].Meter
}

func TestBodyUnits(t *testing.T) {
	total := policy.UnitsFromSpec{Body: "usage.total_tokens"}
	split := policy.UnitsFromSpec{Input: "usage.prompt_tokens", Output: "usage.completion_tokens", OutputWeight: 3}
	small := policy.UnitsFromSpec{Body: "usage.total_tokens", MaxBodyBytes: 64}
	sse := func(events ...string) string {
		var b strings.Builder
		for _, e := range events {
			b.WriteString("data: " + e + "\n\n")
		}
		return b.String()
	}
	tests := []struct {
		name        string
		u           policy.UnitsFromSpec
		contentType string
		chunks      []string
		want        int64
		wantOK      bool
	}{
		{"plain json", total, "application/json", []string{`{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`}, 7, true},
		{"plain json in pieces", total, "application/json; charset=utf-8", []string{`{"usage":{"total`, `_tokens":1234}}`}, 1234, true},
		{"input and output priced apart", split, "application/json", []string{`{"usage":{"prompt_tokens":10,"completion_tokens":5}}`}, 25, true},
		{"no usage member", total, "application/json", []string{`{"id":"x"}`}, 0, false},
		{"fractional", total, "application/json", []string{`{"usage":{"total_tokens":1.5}}`}, 0, false},
		{"negative", total, "application/json", []string{`{"usage":{"total_tokens":-1}}`}, 0, false},
		{"not json", total, "application/json", []string{`<html>`}, 0, false},
		{"too large: at the reservation", small, "application/json", []string{`{"pad":"` + strings.Repeat("x", 80) + `","usage":{"total_tokens":5}}`}, 0, false},
		{"event stream, usage in the last chunk", total, "text/event-stream", []string{
			sse(`{"choices":[{"delta":{"content":"Hel"}}]}`, `{"choices":[{"delta":{"content":"lo"}}]}`),
			sse(`{"choices":[],"usage":{"total_tokens":42}}`, "[DONE]")}, 42, true},
		{"event stream split mid-line", total, "text/event-stream", []string{"data: {\"usage\":{\"tot", "al_tokens\":9}}\n\ndata: [DONE]\n\n"}, 9, true},
		{"event stream with CRLF and no final newline", total, "text/event-stream", []string{"data: {\"usage\":{\"total_tokens\":11}}\r\n\r\ndata: {\"usage\":{\"total_tokens\":12}}"}, 12, true},
		{"event stream with no usage", total, "text/event-stream", []string{sse(`{"choices":[]}`, "[DONE]")}, 0, false},
		{"event stream: a huge event is skipped, a later one read", small, "text/event-stream", []string{
			"data: {\"pad\":\"" + strings.Repeat("y", 100) + "\"}\n\n", sse(`{"usage":{"total_tokens":3}}`)}, 3, true},
		{"event stream: a huge event in pieces is skipped, a later one read", small, "text/event-stream", []string{
			"data: {\"pad\":\"" + strings.Repeat("y", 50), strings.Repeat("y", 50), "\"}\n\n", sse(`{"usage":{"total_tokens":4}}`)}, 4, true},
		{"overflowing weights", policy.UnitsFromSpec{Input: "a", Output: "b", InputWeight: 1 << 62, OutputWeight: 4}, "application/json",
			[]string{`{"a":4,"b":1}`}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBodyUnits(meterOf(t, tt.u), tt.contentType)
			for _, c := range tt.chunks {
				b.write([]byte(c))
			}
			got, ok := b.result()
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("units = %d, %v; want %d, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}
