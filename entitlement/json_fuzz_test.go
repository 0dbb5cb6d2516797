package entitlement

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// FuzzDecodeJSON: any bytes give a valid record or one error line, never
// a panic. A record decoded is valid and survives ToJSON and DecodeJSON
// unchanged (times in UTC). An error never quotes a string value the
// record holds, other than the status it names: the seeds mark values
// with "SECRET", which no error text holds of its own.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{
		`{"subject":"acme","plan":"pro","status":"active"}`,
		`{"subject":"acme","plan":"pro","status":"past_due","features":["chat"],"quotas":{"requests":5},"credits":3,"period_start":"2026-03-01T00:00:00Z","period_end":"2026-04-01T00:00:00+02:00","past_due_since":"2026-03-20T00:00:00Z"}`,
		`{"subject":"acme","plan":"pro","status":"active","period_end":"SECRET-1"}`,
		`{"subject":"acme","plan":"pro","status":"active","credits":"SECRET-2"}`,
		`{"subject":"acme","plan":"pro","status":"active","quotas":{"requests":"SECRET-3"}}`,
		`{"subject":"SECRET-4","plan":"pro","status":"gold"}`,
		`{"subject":"acme","plan":"SECRET-5","features":[1]}`,
		`{"subject":"acme","plan":"pro","status":"active","period_start":"0000-01-01T00:00:00+01:00"}`,
		`{"subject":"acme",}`,
		`[1,2,3]`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		e, err := DecodeJSON(body)
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Fatalf("error is not one line: %q", msg)
			}
			values, named := stringValues(body)
			for _, v := range values {
				if strings.Contains(v, "SECRET") && strings.Contains(msg, v) &&
					!slices.ContainsFunc(named, func(n string) bool { return strings.Contains(n, v) }) {
					t.Fatalf("error %q quotes the value %q", msg, v)
				}
			}
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("decoded an invalid record: %v", err)
		}
		b, err := json.Marshal(ToJSON(e))
		if err != nil {
			t.Fatalf("record does not encode: %v", err)
		}
		back, err := DecodeJSON(b)
		if err != nil {
			t.Fatalf("record %s does not decode again: %v", b, err)
		}
		again, _ := json.Marshal(ToJSON(back))
		if !reflect.DeepEqual(b, again) {
			t.Fatalf("round trip changed the record:\n%s\n%s", b, again)
		}
	})
}

// stringValues are the string values in a JSON document, apart from the
// statuses; named are the statuses and the keys, which errors may name.
func stringValues(body []byte) (out, named []string) {
	var doc any
	if json.Unmarshal(body, &doc) != nil {
		return nil, nil
	}
	var walk func(key string, v any)
	walk = func(key string, v any) {
		switch v := v.(type) {
		case string:
			if strings.EqualFold(key, "status") { // encoding/json matches keys in any case
				named = append(named, v)
			} else {
				out = append(out, v)
			}
		case []any:
			for _, x := range v {
				walk(key, x)
			}
		case map[string]any:
			for k, x := range v {
				named = append(named, k)
				walk(k, x)
			}
		}
	}
	walk("", doc)
	return out, named
}
