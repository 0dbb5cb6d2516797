package mpp

import (
	"math"
	"testing"
)

func TestES6Number(t *testing.T) {
	// Values and expected text from RFC 8785 Appendix B and ECMAScript.
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"},
		{math.Copysign(0, -1), "0"},
		{1, "1"},
		{-1, "-1"},
		{84532, "84532"},
		{9007199254740992, "9007199254740992"},
		{1e21, "1e+21"},
		{1e20, "100000000000000000000"},
		{123456789012345680000, "123456789012345680000"},
		{0.000001, "0.000001"},
		{1e-7, "1e-7"},
		{1.5e-7, "1.5e-7"},
		{333333333.3333333, "333333333.3333333"},
		{4.5, "4.5"},
		{0.002, "0.002"},
		{5e-324, "5e-324"},
		{1.7976931348623157e308, "1.7976931348623157e+308"},
		{295147905179352830000, "295147905179352830000"},
		{-1.2345e25, "-1.2345e+25"},
	}
	for _, tt := range tests {
		if got := es6Number(tt.in); got != tt.want {
			t.Errorf("es6Number(%v) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestCanonicalJSON(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"members sorted, whitespace gone", `{ "b": 1, "a": [ true, null, "x" ] }`, `{"a":[true,null,"x"],"b":1}`},
		// RFC 8785 §3.2.3's example: UTF-16 order puts U+1F600 (D83D DE00)
		// before U+FB33, where UTF-8 byte order would not.
		{"UTF-16 key order", `{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}`,
			"{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"\u00f6\":\"Latin Small Letter O With Diaeresis\",\"\u20ac\":\"Euro Sign\",\"\U0001F600\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		{"string escapes", `["\u0001\b\t\n\f\r\"\\/<>&\u2028\u00e9"]`, "[\"\\u0001\\b\\t\\n\\f\\r\\\"\\\\/<>&\u2028é\"]"},
		{"numbers", `[1.0, 1e2, -0, 0.1e-6, 1E21]`, `[1,100,0,1e-7,1e+21]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := canonicalizeRaw([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestCanonicalJSONRefuses(t *testing.T) {
	for _, in := range []string{`1e400`, "\"\xff\"", `{`} {
		if _, err := canonicalizeRaw([]byte(in)); err == nil {
			t.Errorf("canonicalizeRaw(%q): got no error", in)
		}
	}
}

func TestReceipt(t *testing.T) {
	r := NewReceipt("evm", "0xabc", "id1", t0)
	r.ChainID = 84532
	got, err := EncodeReceipt(r)
	if err != nil {
		t.Fatal(err)
	}
	// JCS: members sorted, omitted when empty.
	if want := enc(`{"chainId":84532,"challengeId":"id1","method":"evm","reference":"0xabc","status":"success","timestamp":"2026-01-15T12:00:00Z"}`); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	back, err := ParseReceipt(got)
	if err != nil {
		t.Fatal(err)
	}
	if back != r {
		t.Errorf("round trip: got %+v, want %+v", back, r)
	}
	for name, bad := range map[string]Receipt{
		"failure status": {Status: "failed", Method: "evm", Reference: "x", Timestamp: "2026-01-15T12:00:00Z"},
		"no reference":   {Status: StatusSuccess, Method: "evm", Timestamp: "2026-01-15T12:00:00Z"},
		"bad timestamp":  {Status: StatusSuccess, Method: "evm", Reference: "x", Timestamp: "yesterday"},
	} {
		if _, err := EncodeReceipt(bad); err == nil {
			t.Errorf("%s: got no error", name)
		}
	}
}
