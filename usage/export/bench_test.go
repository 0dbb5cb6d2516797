package export

import (
	"testing"
)

// BenchmarkStripeForm is the cost of encoding one meter event's form into
// a buffer (Export gives each request a new 192-byte one: one allocation).
func BenchmarkStripeForm(b *testing.B) {
	s := NewStripe(StripeOptions{SecretKey: testStripeKey})
	e := makeEvents("bench", 1)[0]
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = s.appendForm(buf[:0], e, t0)
	}
	b.ReportMetric(float64(len(buf)), "bytes/event")
}

// BenchmarkOpenMeterBatch100 is the cost of encoding one batch of 100
// CloudEvents, one OpenMeter request.
func BenchmarkOpenMeterBatch100(b *testing.B) {
	m := NewOpenMeter(OpenMeterOptions{URL: "https://openmeter.example.com"})
	events := makeEvents("bench", 100)
	var body []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		body, err = m.encode(body[:0], events)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(body))/100, "bytes/event")
}
