package mpp

import (
	"testing"
	"time"
)

// BenchmarkChallenge is the cost added to each 402 of a paid route.
func BenchmarkChallenge(b *testing.B) {
	c := NewChallenger([]byte(testKey), "api.example.com", 5*time.Minute, time.Now)
	encoded, err := EncodeRequest(vectorRequest)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encoded request", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := c.Challenge("evm", "charge", encoded); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("request value", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := c.Challenge("evm", "charge", vectorRequest); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkParseAndCheck is the cost of reading a credential before the
// method's own verification.
func BenchmarkParseAndCheck(b *testing.B) {
	c := NewChallenger([]byte(testKey), "api.example.com", 5*time.Minute, func() time.Time { return t0 })
	ch, _, err := c.Issue("evm", "charge", vectorRequest, Params{})
	if err != nil {
		b.Fatal(err)
	}
	h := "Payment " + enc(`{"challenge":{"id":"`+ch.ID+`","realm":"`+ch.Realm+`","method":"evm","intent":"charge","request":"`+ch.Request+`","expires":"`+ch.Expires+`"},"payload":{"type":"authorization","signature":"0x00"}}`)
	b.ReportAllocs()
	for b.Loop() {
		cred, err := ParseCredential(h)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Check(cred); err != nil {
			b.Fatal(err)
		}
	}
}
