package x402

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// specPaymentSignature is the PAYMENT-SIGNATURE example of the x402 v2 HTTP
// transport specification, byte for byte.
const specPaymentSignature = "eyJ4NDAyVmVyc2lvbiI6MiwicmVzb3VyY2UiOnsidXJsIjoiaHR0cHM6Ly9hcGkuZXhhbXBsZS5jb20vcHJlbWl1bS1kYXRhIiwiZGVzY3JpcHRpb24iOiJBY2Nlc3MgdG8gcHJlbWl1bSBtYXJrZXQgZGF0YSIsIm1pbWVUeXBlIjoiYXBwbGljYXRpb24vanNvbiJ9LCJhY2NlcHRlZCI6eyJzY2hlbWUiOiJleGFjdCIsIm5ldHdvcmsiOiJlaXAxNTU6ODQ1MzIiLCJhbW91bnQiOiIxMDAwMCIsImFzc2V0IjoiMHgwMzZDYkQ1Mzg0MmM1NDI2NjM0ZTc5Mjk1NDFlQzIzMThmM2RDRjdlIiwicGF5VG8iOiIweDIwOTY5M0JjNmFmYzBDNTMyOGJBMzZGYUYwM0M1MTRFRjMxMjI4N0MiLCJtYXhUaW1lb3V0U2Vjb25kcyI6NjAsImV4dHJhIjp7Im5hbWUiOiJVU0RDIiwidmVyc2lvbiI6IjIifX0sInBheWxvYWQiOnsic2lnbmF0dXJlIjoiMHgyZDZhNzU4OGQ2YWNjYTUwNWNiZjBkOWE0YTIyN2UwYzUyYzZjMzQwMDhjOGU4OTg2YTEyODMyNTk3NjQxNzM2MDhhMmNlNjQ5NjY0MmUzNzdkNmRhOGRiYmY1ODM2ZTliZDE1MDkyZjllY2FiMDVkZWQzZDYyOTNhZjE0OGI1NzFjIiwiYXV0aG9yaXphdGlvbiI6eyJmcm9tIjoiMHg4NTdiMDY1MTlFOTFlM0E1NDUzODc5MWJEYmIwRTIyMzczZTM2YjY2IiwidG8iOiIweDIwOTY5M0JjNmFmYzBDNTMyOGJBMzZGYUYwM0M1MTRFRjMxMjI4N0MiLCJ2YWx1ZSI6IjEwMDAwIiwidmFsaWRBZnRlciI6IjE3NDA2NzIwODkiLCJ2YWxpZEJlZm9yZSI6IjE3NDA2NzIxNTQiLCJub25jZSI6IjB4ZjM3NDY2MTNjMmQ5MjBiNWZkYWJjMDg1NmYyYWViMmQ0Zjg4ZWU2MDM3YjhjYzVkMDRhNzFhNDQ2MmYxMzQ4MCJ9fX0="

// specXPayment is the X-PAYMENT example of the v1 HTTP transport specification.
const specXPayment = "eyJ4NDAyVmVyc2lvbiI6MSwic2NoZW1lIjoiZXhhY3QiLCJuZXR3b3JrIjoiYmFzZS1zZXBvbGlhIiwicGF5bG9hZCI6eyJzaWduYXR1cmUiOiIweDJkNmE3NTg4ZDZhY2NhNTA1Y2JmMGQ5YTRhMjI3ZTBjNTJjNmMzNDAwOGM4ZTg5ODZhMTI4MzI1OTc2NDE3MzYwOGEyY2U2NDk2NjQyZTM3N2Q2ZGE4ZGJiZjU4MzZlOWJkMTUwOTJmOWVjYWIwNWRlZDNkNjI5M2FmMTQ4YjU3MWMiLCJhdXRob3JpemF0aW9uIjp7ImZyb20iOiIweDg1N2IwNjUxOUU5MWUzQTU0NTM4NzkxYkRiYjBFMjIzNzNlMzZiNjYiLCJ0byI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsInZhbHVlIjoiMTAwMDAiLCJ2YWxpZEFmdGVyIjoiMTc0MDY3MjA4OSIsInZhbGlkQmVmb3JlIjoiMTc0MDY3MjE1NCIsIm5vbmNlIjoiMHhmMzc0NjYxM2MyZDkyMGI1ZmRhYmMwODU2ZjJhZWIyZDRmODhlZTYwMzdiOGNjNWQwNGE3MWE0NDYyZjEzNDgwIn19fQ=="

func TestDecodeSpecExamples(t *testing.T) {
	p, err := DecodePaymentSignature(specPaymentSignature)
	if err != nil {
		t.Fatalf("PAYMENT-SIGNATURE: %v", err)
	}
	if got, want := p.Accepted.Amount, "10000"; got != want {
		t.Errorf("accepted.amount = %q, want %q", got, want)
	}
	if got, want := p.Payload.Authorization.Nonce, "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"; got != want {
		t.Errorf("nonce = %q, want %q", got, want)
	}
	v1, err := DecodeXPayment(specXPayment)
	if err != nil {
		t.Fatalf("X-PAYMENT: %v", err)
	}
	if got, want := v1.Network, "base-sepolia"; got != want {
		t.Errorf("network = %q, want %q", got, want)
	}
	// Each header carries its own version only.
	if _, err := DecodeXPayment(specPaymentSignature); !errors.Is(err, ErrInvalidVersion) {
		t.Errorf("v2 payload on X-PAYMENT: err = %v, want ErrInvalidVersion", err)
	}
	if _, err := DecodePaymentSignature(specXPayment); !errors.Is(err, ErrInvalidVersion) {
		t.Errorf("v1 payload on PAYMENT-SIGNATURE: err = %v, want ErrInvalidVersion", err)
	}
}

// mutate decodes the spec example to a generic map, applies f, re-encodes.
func mutate(t *testing.T, f func(m map[string]any)) string {
	t.Helper()
	raw, _ := base64.StdEncoding.DecodeString(specPaymentSignature)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, _ := json.Marshal(m)
	return base64.StdEncoding.EncodeToString(b)
}

// urlSafe re-spells a standard base64 header in the URL-safe alphabet.
func urlSafe(t *testing.T, h string) string {
	t.Helper()
	u := strings.NewReplacer("+", "-", "/", "_").Replace(h)
	if u == h {
		t.Fatal("test header has no + or /")
	}
	if _, err := DecodePaymentSignature(h); err != nil {
		t.Fatalf("standard spelling refused: %v", err)
	}
	return u
}

func auth(m map[string]any) map[string]any {
	return m["payload"].(map[string]any)["authorization"].(map[string]any)
}

func TestDecodePaymentSignatureRefusals(t *testing.T) {
	raw, _ := base64.StdEncoding.DecodeString(specPaymentSignature)
	secret := "0xSECRETSECRETSECRET"
	tests := []struct {
		name   string
		header string
		want   error
		field  string
	}{
		{"empty", "", ErrInvalidPayload, "header"},
		{"too large", strings.Repeat("A", MaxHeaderBytes+4), ErrInvalidPayload, "header"},
		{"url-safe base64", urlSafe(t, mutate(t, func(m map[string]any) { m["resource"].(map[string]any)["description"] = "???>>>??>>?>" })), ErrInvalidPayload, "header"},
		{"unpadded base64", strings.TrimRight(specPaymentSignature, "="), ErrInvalidPayload, "header"},
		{"whitespace in base64", specPaymentSignature[:10] + " " + specPaymentSignature[10:], ErrInvalidPayload, "header"},
		{"not JSON", base64.StdEncoding.EncodeToString([]byte("hello")), ErrInvalidPayload, "payload"},
		{"array", base64.StdEncoding.EncodeToString([]byte("[1]")), ErrInvalidPayload, "payload"},
		{"trailing data", base64.StdEncoding.EncodeToString(append(append([]byte(nil), raw...), []byte(" {}")...)), ErrInvalidPayload, "payload"},
		{"duplicate member", base64.StdEncoding.EncodeToString(bytes.Replace(raw, []byte(`"x402Version":2,`), []byte(`"x402Version":2,"X402VERSION":2,`), 1)), ErrInvalidPayload, "payload"},
		{"deep nesting", mutate(t, func(m map[string]any) {
			var v any = 1
			for range 20 {
				v = []any{v}
			}
			m["extensions"] = map[string]any{"x": v}
		}), ErrInvalidPayload, "payload"},
		{"version 3", mutate(t, func(m map[string]any) { m["x402Version"] = 3 }), ErrInvalidVersion, ""},
		{"version as string", mutate(t, func(m map[string]any) { m["x402Version"] = "2" }), ErrInvalidPayload, ""},
		{"no accepted", mutate(t, func(m map[string]any) { delete(m, "accepted") }), ErrInvalidPayload, "accepted"},
		{"v1 fields on v2", mutate(t, func(m map[string]any) { m["network"] = "base-sepolia" }), ErrInvalidPayload, ""},
		{"scheme upto", mutate(t, func(m map[string]any) { m["accepted"].(map[string]any)["scheme"] = "upto" }), ErrInvalidScheme, "accepted.scheme"},
		{"permit2", mutate(t, func(m map[string]any) {
			m["accepted"].(map[string]any)["extra"].(map[string]any)["assetTransferMethod"] = "permit2"
		}), ErrInvalidScheme, "accepted.extra.assetTransferMethod"},
		{"solana", mutate(t, func(m map[string]any) {
			m["accepted"].(map[string]any)["network"] = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"
		}), ErrInvalidNetwork, "accepted.network"},
		{"amount as number", mutate(t, func(m map[string]any) { m["accepted"].(map[string]any)["amount"] = 10000 }), ErrInvalidPayload, ""},
		{"amount leading zero", mutate(t, func(m map[string]any) { m["accepted"].(map[string]any)["amount"] = "010000" }), ErrInvalidPayload, "accepted.amount"},
		{"amount negative", mutate(t, func(m map[string]any) { m["accepted"].(map[string]any)["amount"] = "-1" }), ErrInvalidPayload, "accepted.amount"},
		{"amount 2^256", mutate(t, func(m map[string]any) {
			m["accepted"].(map[string]any)["amount"] = "115792089237316195423570985008687907853269984665640564039457584007913129639936"
		}), ErrInvalidPayload, "accepted.amount"},
		{"maxTimeoutSeconds 0", mutate(t, func(m map[string]any) { m["accepted"].(map[string]any)["maxTimeoutSeconds"] = 0 }), ErrInvalidPayload, "accepted.maxTimeoutSeconds"},
		{"payTo short", mutate(t, func(m map[string]any) { m["accepted"].(map[string]any)["payTo"] = "0x209693" }), ErrInvalidPayload, "accepted.payTo"},
		{"from bad checksum", mutate(t, func(m map[string]any) { auth(m)["from"] = "0x857B06519E91e3A54538791bDbb0E22373e36b66" }), ErrInvalidPayload, "payload.authorization.from"},
		{"to not hex", mutate(t, func(m map[string]any) { auth(m)["to"] = secret + "SECRETSECRETSECRET12" }), ErrInvalidPayload, "payload.authorization.to"},
		{"value hex", mutate(t, func(m map[string]any) { auth(m)["value"] = "0x2710" }), ErrInvalidPayload, "payload.authorization.value"},
		{"validBefore empty", mutate(t, func(m map[string]any) { auth(m)["validBefore"] = "" }), ErrInvalidPayload, "payload.authorization.validBefore"},
		{"nonce 31 bytes", mutate(t, func(m map[string]any) { auth(m)["nonce"] = "0x" + strings.Repeat("ab", 31) }), ErrInvalidPayload, "payload.authorization.nonce"},
		{"nonce without 0x", mutate(t, func(m map[string]any) { auth(m)["nonce"] = strings.Repeat("ab", 33) }), ErrInvalidPayload, "payload.authorization.nonce"},
		{"signature 64 bytes", mutate(t, func(m map[string]any) { m["payload"].(map[string]any)["signature"] = "0x" + strings.Repeat("11", 64) }), ErrInvalidPayload, "payload.signature"},
		{"signature ERC-6492 wrapped", mutate(t, func(m map[string]any) { m["payload"].(map[string]any)["signature"] = "0x" + strings.Repeat("11", 200) }), ErrInvalidPayload, "payload.signature"},
		{"no payload", mutate(t, func(m map[string]any) { delete(m, "payload") }), ErrInvalidPayload, "payload.signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodePaymentSignature(tt.header)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T is not *Error", err)
			}
			if tt.field != "" && e.Field != tt.field {
				t.Errorf("field = %q, want %q", e.Field, tt.field)
			}
			if strings.Contains(err.Error(), "SECRET") || len(err.Error()) > 200 {
				t.Errorf("error echoes input: %q", err.Error())
			}
		})
	}
}

func TestDecodeToleratesUnknownMembers(t *testing.T) {
	// The SDK adds extensions and resource; extra may carry more than we read.
	h := mutate(t, func(m map[string]any) {
		m["extensions"] = map[string]any{"payment-identifier": map[string]any{"info": map[string]any{"id": "abc"}}}
		m["future"] = true
		m["accepted"].(map[string]any)["extra"].(map[string]any)["feePayer"] = "x"
	})
	p, err := DecodePaymentSignature(h)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Extensions["payment-identifier"]; !ok {
		t.Errorf("extensions dropped: %v", p.Extensions)
	}
}

func TestFromHeaders(t *testing.T) {
	tests := []struct {
		name      string
		h         http.Header
		wantFound bool
		wantErr   bool
		wantVer   int
	}{
		{"none", http.Header{}, false, false, 0},
		{"v2", http.Header{"Payment-Signature": {specPaymentSignature}}, true, false, 2},
		{"v1", http.Header{"X-Payment": {specXPayment}}, true, false, 1},
		{"both", http.Header{"Payment-Signature": {specPaymentSignature}, "X-Payment": {specXPayment}}, true, true, 0},
		{"repeated", http.Header{"Payment-Signature": {specPaymentSignature, specPaymentSignature}}, true, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, found, err := FromHeaders(tt.h)
			if found != tt.wantFound || (err != nil) != tt.wantErr {
				t.Fatalf("found, err = %v, %v; want %v, error %v", found, err, tt.wantFound, tt.wantErr)
			}
			if err == nil && p.X402Version != tt.wantVer {
				t.Errorf("version = %d, want %d", p.X402Version, tt.wantVer)
			}
		})
	}
}

func TestEncodePaymentRequiredMatchesSpec(t *testing.T) {
	// The v2 HTTP transport's example challenge, byte for byte.
	const want = "eyJ4NDAyVmVyc2lvbiI6MiwiZXJyb3IiOiJQQVlNRU5ULVNJR05BVFVSRSBoZWFkZXIgaXMgcmVxdWlyZWQiLCJyZXNvdXJjZSI6eyJ1cmwiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS9wcmVtaXVtLWRhdGEiLCJkZXNjcmlwdGlvbiI6IkFjY2VzcyB0byBwcmVtaXVtIG1hcmtldCBkYXRhIiwibWltZVR5cGUiOiJhcHBsaWNhdGlvbi9qc29uIn0sImFjY2VwdHMiOlt7InNjaGVtZSI6ImV4YWN0IiwibmV0d29yayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNvbmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fV19"
	got, err := EncodePaymentRequired(PaymentRequired{
		X402Version: Version, Error: "PAYMENT-SIGNATURE header is required",
		Resource: Resource{URL: "https://api.example.com/premium-data", Description: "Access to premium market data", MimeType: "application/json"},
		Accepts:  []PaymentRequirements{{Scheme: "exact", Network: "eip155:84532", Amount: "10000", Asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", PayTo: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", MaxTimeoutSeconds: 60, Extra: Extra{Name: "USDC", Version: "2"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("EncodePaymentRequired =\n%s\nwant\n%s", got, want)
	}
}

// roundTrip checks the fuzz property: what decodes re-encodes to a header
// that decodes to the same value, and re-encoding is then a fixed point.
func roundTrip(t *testing.T, decode func(string) (PaymentPayload, error), header string) {
	p, err := decode(header)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %T is not *Error", err)
		}
		if len(err.Error()) > 200 {
			t.Fatalf("error too long, may echo input: %d bytes", len(err.Error()))
		}
		return
	}
	enc1, err := EncodeHeader(p)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := decode(enc1)
	if err != nil {
		t.Fatalf("re-encoded payload does not decode: %v", err)
	}
	enc2, _ := EncodeHeader(p2)
	if enc1 != enc2 {
		t.Fatalf("re-encoding not stable:\n%s\n%s", enc1, enc2)
	}
}

func FuzzDecodePaymentSignature(f *testing.F) {
	f.Add(specPaymentSignature)
	f.Add(specXPayment)
	f.Add("")
	f.Add("e30=")
	raw, _ := base64.StdEncoding.DecodeString(specPaymentSignature)
	f.Add(base64.StdEncoding.EncodeToString(bytes.Replace(raw, []byte(`}}}`), []byte(`}},"extensions":{"a":[1,{"b":null}]}}`), 1)))
	f.Fuzz(func(t *testing.T, header string) { roundTrip(t, DecodePaymentSignature, header) })
}

func FuzzDecodeXPayment(f *testing.F) {
	f.Add(specXPayment)
	f.Add(specPaymentSignature)
	f.Add("")
	f.Add("e30=")
	f.Fuzz(func(t *testing.T, header string) { roundTrip(t, DecodeXPayment, header) })
}
