package reservation

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSignVerify(t *testing.T) {
	s, err := NewSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewSigner([]byte(strings.Repeat("o", 32)))
	r := &Reservation{ID: "req-1", Subject: "acme", Customer: "cus_1", Route: "chat", Meter: "tokens", Estimate: 500,
		Counter: "acme\x00tokens\x0020261201T000000", Reset: 1767225600, Start: 1764547200123}
	tok := s.Sign(r)
	got, err := s.Verify(tok)
	if err != nil || *got != *r {
		t.Fatalf("Verify(Sign(r)) = %+v, %v; want %+v", got, err, r)
	}
	payload, sig, _ := strings.Cut(strings.TrimPrefix(tok, "v1."), ".")
	tampered := func(old, new string) string { return strings.Replace(tok, old, new, 1) }
	tests := []struct {
		name string
		tok  string
		want error
	}{
		{"another key", other.Sign(r), ErrForged},
		{"payload changed", "v1." + payload[:len(payload)-2] + "AA." + sig, ErrForged},
		{"signature dropped", "v1." + payload, ErrMalformed},
		{"no version", strings.TrimPrefix(tok, "v1."), ErrMalformed},
		{"signature not base64", tampered("."+sig, ".%%%"), ErrMalformed},
		{"huge", "v1." + strings.Repeat("A", MaxTokenBytes) + "." + sig, ErrMalformed},
		{"empty", "", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Verify(tt.tok); !errors.Is(err, tt.want) {
				t.Errorf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := NewSigner([]byte("short")); err == nil {
		t.Error("a 5-byte key was accepted")
	}
}

func FuzzVerify(f *testing.F) {
	s, _ := NewSigner([]byte(strings.Repeat("k", 32)))
	f.Add(s.Sign(&Reservation{ID: "a", Subject: "b", Estimate: 1}))
	f.Add("v1..")
	f.Fuzz(func(t *testing.T, tok string) {
		r, err := s.Verify(tok)
		if err == nil && (r.Subject == "" || r.Estimate < 0) {
			t.Errorf("accepted %q as %+v", tok, r)
		}
	})
}

func BenchmarkSign(b *testing.B) {
	s, _ := NewSigner([]byte(strings.Repeat("k", 32)))
	r := &Reservation{ID: "0123456789abcdef", Subject: "acme", Route: "chat", Meter: "tokens", Estimate: 500,
		Counter: "acme\x00tokens\x0020261201T000000", Reset: 1767225600, Start: 1764547200123}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Sign(r)
	}
}

// FuzzSignRoundTrip: whatever the strings, Verify(Sign(r)) is r (with
// invalid UTF-8 read back as U+FFFD, as encoding/json reads it).
func FuzzSignRoundTrip(f *testing.F) {
	s, _ := NewSigner([]byte(strings.Repeat("k", 32)))
	f.Add("req-1", "acme", "cus_1", "chat", "tokens", "acme\x00tokens\x0020261201T000000", int64(5), int64(1767225600), int64(1764547200123))
	f.Add("\"\\\n\t\u2028", "ü\xff", "", "r", "m", "", int64(0), int64(0), int64(-1))
	f.Fuzz(func(t *testing.T, id, subject, customer, route, meter, counter string, est, reset, start int64) {
		if subject == "" || est < 0 {
			return
		}
		r := Reservation{ID: id, Subject: subject, Customer: customer, Route: route, Meter: meter, Estimate: est, Counter: counter, Reset: reset, Start: start}
		got, err := s.Verify(s.Sign(&r))
		if len(s.Sign(&r)) > MaxTokenBytes {
			return // too long to verify, by design
		}
		if err != nil {
			t.Fatalf("Verify(Sign(%+v)) = %v", r, err)
		}
		want := r
		for _, p := range []*string{&want.ID, &want.Subject, &want.Customer, &want.Route, &want.Meter, &want.Counter} {
			*p = strings.ToValidUTF8(*p, "\ufffd")
		}
		// encoding/json replaces each invalid byte; ToValidUTF8 a run of them.
		if *got != want && utf8.ValidString(id+subject+customer+route+meter+counter) {
			t.Errorf("round trip = %+v, want %+v", *got, want)
		}
	})
}
