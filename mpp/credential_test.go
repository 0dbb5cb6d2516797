package mpp

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// secret is planted in every refused input: no error may repeat it.
const secret = "SECRETPROOFxyz"

func enc(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

const validJSON = `{"challenge":{"id":"abc","realm":"api.example.com","method":"evm","intent":"charge","request":"eyJhIjoiMSJ9","expires":"2026-01-15T12:05:00Z"},"source":"did:pkh:eip155:1:0x0","payload":{"proof":"` + secret + `"}}`

func TestParseCredential(t *testing.T) {
	cred, err := ParseCredential("Payment " + enc(validJSON))
	if err != nil {
		t.Fatal(err)
	}
	want := Challenge{ID: "abc", Realm: "api.example.com", Method: "evm", Intent: "charge", Request: "eyJhIjoiMSJ9", Expires: "2026-01-15T12:05:00Z"}
	if cred.Challenge != want {
		t.Errorf("challenge = %+v, want %+v", cred.Challenge, want)
	}
	if got, want := cred.Source, "did:pkh:eip155:1:0x0"; got != want {
		t.Errorf("source = %q, want %q", got, want)
	}
	if got, want := string(cred.Payload), `{"proof":"`+secret+`"}`; got != want {
		t.Errorf("payload = %s, want %s", got, want)
	}
}

func TestParseCredentialAccepts(t *testing.T) {
	tests := []struct{ name, header string }{
		{"lower-case scheme", "payment " + enc(validJSON)},
		{"upper-case scheme", "PAYMENT " + enc(validJSON)},
		{"several spaces", "Payment   " + enc(validJSON)},
		{"unknown members ignored", "Payment " + enc(`{"x":1,"challenge":{"id":"a","realm":"r","method":"evm","intent":"charge","request":"e30","future":"y"},"payload":{}}`)},
		{"opaque echoed", "Payment " + enc(`{"challenge":{"id":"a","realm":"r","method":"evm","intent":"charge","request":"e30","opaque":"e30"},"payload":{}}`)},
		{"member names differing in case are distinct", "Payment " + enc(`{"Payload":1,"challenge":{"id":"a","realm":"r","method":"evm","intent":"charge","request":"e30"},"payload":{}}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseCredential(tt.header); err != nil {
				t.Fatalf("got %v, want no error", err)
			}
		})
	}
}

func TestParseCredentialRefuses(t *testing.T) {
	ch := `"challenge":{"id":"a","realm":"r","method":"evm","intent":"charge","request":"e30"}`
	pl := `"payload":{"p":"` + secret + `"}`
	valid := enc(validJSON)
	tests := []struct {
		name   string
		header string
		field  string
	}{
		{"empty", "", "scheme"},
		{"other scheme", "Bearer " + valid, "scheme"},
		{"no space", "Payment" + valid, "scheme"},
		{"tab instead of space", "Payment\t" + valid, "scheme"},
		{"scheme only", "Payment ", "credential"},
		{"padded", "Payment " + base64.URLEncoding.EncodeToString([]byte(validJSON+"  ")), "credential"},
		{"standard alphabet", "Payment " + strings.NewReplacer("-", "+", "_", "/").Replace(enc(validJSON+"???>>>")), "credential"},
		{"trailing space", "Payment " + valid + " ", "credential"},
		{"two tokens", "Payment " + valid + " " + valid, "credential"},
		{"comma-joined", "Payment " + valid + ", Payment " + valid, "credential"},
		{"stray trailing bits", "Payment " + valid[:len(valid)-1] + flipBits(valid[len(valid)-1]), "credential"},
		{"oversized", "Payment " + enc(`{"challenge":{},"payload":{"p":"`+secret+strings.Repeat("a", MaxCredentialBytes)+`"}}`), "credential"},
		{"not JSON", "Payment " + enc("not json "+secret), "credential"},
		{"truncated JSON", "Payment " + enc(`{`+ch+`,`+pl), "credential"},
		{"trailing data", "Payment " + enc(`{`+ch+`,`+pl+`}x`), "credential"},
		{"two values", "Payment " + enc(`{`+ch+`,`+pl+`} {}`), "credential"},
		{"invalid UTF-8", "Payment " + enc("{\"challenge\":{},\"payload\":{\"p\":\"\xff"+secret+"\"}}"), "credential"},
		{"duplicate top-level member", "Payment " + enc(`{`+ch+`,`+pl+`,"payload":{}}`), "credential"},
		{"duplicate challenge member", "Payment " + enc(`{"challenge":{"id":"a","id":"b","realm":"r","method":"evm","intent":"charge","request":"e30"},`+pl+`}`), "credential"},
		{"duplicate member deep in payload", "Payment " + enc(`{`+ch+`,"payload":{"a":{"b":1,"b":2,"s":"`+secret+`"}}}`), "credential"},
		{"nested too deep", "Payment " + enc(`{`+ch+`,"payload":`+strings.Repeat(`{"a":`, 20)+`"`+secret+`"`+strings.Repeat("}", 20)+`}`), "credential"},
		{"array", "Payment " + enc(`[`+secret+`]`), "credential"},
		{"no challenge", "Payment " + enc(`{`+pl+`}`), "challenge"},
		{"challenge not an object", "Payment " + enc(`{"challenge":"`+secret+`",`+pl+`}`), "challenge"},
		{"challenge null", "Payment " + enc(`{"challenge":null,`+pl+`}`), "challenge"},
		{"id missing", "Payment " + enc(`{"challenge":{"realm":"r","method":"evm","intent":"charge","request":"e30"},`+pl+`}`), "challenge.id"},
		{"id empty", "Payment " + enc(`{"challenge":{"id":"","realm":"r","method":"evm","intent":"charge","request":"e30"},`+pl+`}`), "challenge.id"},
		{"id a number", "Payment " + enc(`{"challenge":{"id":1,"realm":"r","method":"evm","intent":"charge","request":"e30"},`+pl+`}`), "challenge.id"},
		{"realm null", "Payment " + enc(`{"challenge":{"id":"a","realm":null,"method":"evm","intent":"charge","request":"e30"},`+pl+`}`), "challenge.realm"},
		{"method upper-case", "Payment " + enc(`{"challenge":{"id":"a","realm":"r","method":"EVM","intent":"charge","request":"e30"},`+pl+`}`), "challenge.method"},
		{"intent with a slash", "Payment " + enc(`{"challenge":{"id":"a","realm":"r","method":"evm","intent":"a/b","request":"e30"},`+pl+`}`), "challenge.intent"},
		{"request padded", "Payment " + enc(`{"challenge":{"id":"a","realm":"r","method":"evm","intent":"charge","request":"e30="},`+pl+`}`), "challenge.request"},
		{"request missing", "Payment " + enc(`{"challenge":{"id":"a","realm":"r","method":"evm","intent":"charge"},`+pl+`}`), "challenge.request"},
		{"expires a number", "Payment " + enc(`{"challenge":{"id":"a","realm":"r","method":"evm","intent":"charge","request":"e30","expires":1},`+pl+`}`), "challenge.expires"},
		{"opaque an object (old mppx)", "Payment " + enc(`{"challenge":{"id":"a","realm":"r","method":"evm","intent":"charge","request":"e30","opaque":{"a":"b"}},`+pl+`}`), "challenge.opaque"},
		{"source a number", "Payment " + enc(`{`+ch+`,"source":1,`+pl+`}`), "source"},
		{"no payload", "Payment " + enc(`{`+ch+`}`), "payload"},
		{"payload a string", "Payment " + enc(`{`+ch+`,"payload":"`+secret+`"}`), "payload"},
		{"payload null", "Payment " + enc(`{`+ch+`,"payload":null}`), "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCredential(tt.header)
			if !errors.Is(err, &Error{Code: CodeMalformedCredential, Field: tt.field}) {
				t.Fatalf("got %v, want malformed-credential at %s", err, tt.field)
			}
			if strings.Contains(err.Error(), secret) || (len(tt.header) > 8 && strings.Contains(err.Error(), tt.header[8:])) {
				t.Errorf("error repeats the input: %v", err)
			}
		})
	}
}

// flipBits returns a base64url character with the same high bits as c but
// different low bits, so the last group decodes to non-zero padding bits.
func flipBits(c byte) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, c)
	return string(alphabet[i^1])
}

func TestFromHeaders(t *testing.T) {
	valid := "Payment " + enc(validJSON)
	tests := []struct {
		name      string
		values    []string
		wantFound bool
		wantErr   bool
	}{
		{"none", nil, false, false},
		{"bearer only", []string{"Bearer abc"}, false, false},
		{"one payment", []string{valid}, true, false},
		{"bearer and payment", []string{"Bearer abc", valid}, true, false},
		{"two payments", []string{valid, valid}, true, true},
		{"bad payment", []string{"Payment !!"}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tt.values {
				h.Add("Authorization", v)
			}
			_, found, err := FromHeaders(h)
			if found != tt.wantFound || (err != nil) != tt.wantErr {
				t.Fatalf("found=%v err=%v, want found=%v err=%v", found, err, tt.wantFound, tt.wantErr)
			}
		})
	}
}

// TestIssueParseCheck goes the whole way: issue, echo in a credential as a
// client does, parse, check.
func TestIssueParseCheck(t *testing.T) {
	c := newTestChallenger(&fakeClock{t0})
	ch, _, err := c.Issue("evm", "charge", vectorRequest, Params{Description: `say "hi"`, Opaque: map[string]string{"route": "/v1/x"}})
	if err != nil {
		t.Fatal(err)
	}
	echo := map[string]any{
		"challenge": map[string]string{
			"id": ch.ID, "realm": ch.Realm, "method": ch.Method, "intent": ch.Intent,
			"request": ch.Request, "expires": ch.Expires, "opaque": ch.Opaque, "description": ch.Description,
		},
		"payload": map[string]string{"proof": "x"},
	}
	b, _ := json.Marshal(echo)
	cred, err := ParseCredential("Payment " + enc(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if cred.Challenge != ch {
		t.Errorf("parsed %+v, issued %+v", cred.Challenge, ch)
	}
	if err := c.CheckOffer(cred, "evm", "charge", vectorRequest); err != nil {
		t.Fatal(err)
	}
	var req map[string]any
	if err := cred.Challenge.DecodeRequest(&req); err != nil {
		t.Fatal(err)
	}
	if got, want := req["amount"], "1000"; got != want {
		t.Errorf("amount = %v, want %v", got, want)
	}
}
