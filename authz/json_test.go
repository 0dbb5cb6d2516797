package authz

import (
	"encoding/json"
	"strconv"
	"testing"
	"unicode/utf8"
)

func TestAppendJSONString(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"plain", `"plain"`},
		{`quote " and \ backslash`, `"quote \" and \\ backslash"`},
		{"line\nbreak\ttab\r", `"line\nbreak\ttab\r"`},
		{"\x00\x1f", `"\u0000\u001f"`},
		{"<script>&", `"\u003cscript\u003e\u0026"`},
		{"bad \xff utf8", `"bad \ufffd utf8"`},
		{"ünïcödé ✓", `"ünïcödé ✓"`},
		{"sep\u2028\u2029", `"sep\u2028\u2029"`},
		{"", `""`},
	}
	for _, tt := range tests {
		if got := string(appendJSONString(nil, tt.in)); got != tt.want {
			t.Errorf("appendJSONString(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// FuzzAppendJSONString checks that any input renders as valid JSON that
// decodes back to the input (with invalid UTF-8 replaced).
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\xff", "\u2028", "<>&", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%q rendered as invalid JSON %s: %v", s, b, err)
		}
		if utf8.ValidString(s) && back != s {
			t.Fatalf("round trip: %q became %q", s, back)
		}
	})
}

func TestAppendQuotedIsQuote(t *testing.T) {
	for _, s := range []string{"", "requests", "burst-1_x", "a\"b", `a\b`, "tab\t", "é", "\x7f", "\u2028"} {
		if got, want := string(appendQuoted(nil, s)), strconv.Quote(s); got != want {
			t.Errorf("appendQuoted(%q) = %s, want %s", s, got, want)
		}
	}
}
