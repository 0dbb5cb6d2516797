package settle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/reservation"
	"github.com/tollgate-authz/tollgate/usage"
)

// memBox is an in-memory usage.Outbox.
type memBox struct {
	mu     sync.Mutex
	events []usage.Event
	err    error
}

func (b *memBox) Append(_ context.Context, evs []usage.Event) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	b.events = append(b.events, evs...)
	return nil
}
func (b *memBox) Pending(context.Context, int) ([]usage.Event, error) { return nil, nil }
func (b *memBox) Ack(context.Context, []string) error                 { return nil }
func (b *memBox) Stats(context.Context) (usage.Stats, error)          { return usage.Stats{}, nil }
func (b *memBox) Close() error                                        { return nil }
func (b *memBox) all() []usage.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]usage.Event(nil), b.events...)
}

// adjusts records Adjust calls as "key delta".
type adjusts struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (a *adjusts) Adjust(_ context.Context, group, key string, delta int64, _ time.Time) (int64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, fmt.Sprintf("%s/%s %+d", group, key, delta))
	return 0, a.err
}

var testKey = []byte(strings.Repeat("k", 32))

// meteredPolicy has one route per way of reading units.
func meteredPolicy(t testing.TB) *policy.Policy {
	t.Helper()
	p, errs := policy.Compile(policy.Spec{Routes: []policy.RouteSpec{
		{Name: "header", Meter: &policy.MeterSpec{Event: "units", UnitsFrom: policy.UnitsFromSpec{Header: "X-Usage-Units"}}},
		{Name: "capped", Meter: &policy.MeterSpec{UnitsFrom: policy.UnitsFromSpec{Header: "x-usage-units"}, Overage: "cap"}},
		{Name: "body", Meter: &policy.MeterSpec{Event: "tokens", UnitsFrom: policy.UnitsFromSpec{Body: "usage.total_tokens"}}},
		{Name: "fixed", Meter: &policy.MeterSpec{Billable: []string{"2xx", "404"}}},
	}})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return p
}

func newSettler(t testing.TB, box usage.Outbox, adj Adjuster) (*Settler, *reservation.Signer) {
	t.Helper()
	signer, err := reservation.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	p := meteredPolicy(t)
	s, err := New(Options{Signer: signer, Outbox: box, Quotas: adj, Policy: func() *policy.Policy { return p }})
	if err != nil {
		t.Fatal(err)
	}
	return s, signer
}

func token(s *reservation.Signer, id, route string, estimate int64) string {
	return s.Sign(&reservation.Reservation{ID: id, Subject: "acme", Customer: "cus_1", Route: route, Meter: route + "-meter",
		Estimate: estimate, Counter: "acme/c", Reset: 1767225600, Start: 1764547200000})
}

func TestSettle(t *testing.T) {
	tests := []struct {
		name        string
		route       string
		estimate    int64
		entry       Entry
		wantOutcome Outcome
		wantUnits   int64 // -1: no event
		wantAdjust  string
	}{
		{"header under the estimate releases the rest", "header", 100, Entry{Status: 200, Headers: map[string]string{"x-usage-units": "40"}}, Settled, 40, "acme/acme/c -60"},
		{"header in any case", "header", 100, Entry{Status: 200, Headers: map[string]string{"X-USAGE-UNITS": "100"}}, Settled, 100, ""},
		{"trailer", "header", 100, Entry{Status: 200, Trailers: map[string]string{"x-usage-units": "130"}}, Settled, 130, "acme/acme/c +30"},
		{"overage capped", "capped", 100, Entry{Status: 200, Headers: map[string]string{"x-usage-units": "130"}}, Settled, 100, ""},
		{"capped under the estimate", "capped", 100, Entry{Status: 200, Headers: map[string]string{"x-usage-units": "30"}}, Settled, 30, "acme/acme/c -70"},
		{"no header: at the reservation", "header", 100, Entry{Status: 200}, AtEstimate, 100, ""},
		{"garbage header: at the reservation", "header", 100, Entry{Status: 200, Headers: map[string]string{"x-usage-units": "-5"}}, AtEstimate, 100, ""},
		{"upstream 5xx: released, not billed", "header", 100, Entry{Status: 503, Headers: map[string]string{"x-usage-units": "40"}}, NotBillable, -1, "acme/acme/c -100"},
		{"abandoned before a response: at the reservation", "header", 100, Entry{Status: 0}, AtEstimate, 100, ""},
		{"body units", "body", 50, Entry{Status: 200, BodyUnits: 75, HasBodyUnits: true}, Settled, 75, "acme/acme/c +25"},
		{"body route ignores the header", "body", 50, Entry{Status: 200, Headers: map[string]string{"x-usage-units": "1"}}, AtEstimate, 50, ""},
		{"exact billable code", "fixed", 1, Entry{Status: 404}, AtEstimate, 1, ""},
		{"a route removed from the config: defaults", "gone", 7, Entry{Status: 200}, AtEstimate, 7, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			box, adj := &memBox{}, &adjusts{}
			s, signer := newSettler(t, box, adj)
			tt.entry.Token = token(signer, fmt.Sprint("req-", i), tt.route, tt.estimate)
			got, ev, err := s.Settle(context.Background(), tt.entry)
			if err != nil || got != tt.wantOutcome {
				t.Fatalf("Settle = %s, %v; want %s", got, err, tt.wantOutcome)
			}
			evs := box.all()
			switch {
			case tt.wantUnits < 0 && len(evs) != 0:
				t.Errorf("events = %+v, want none", evs)
			case tt.wantUnits >= 0 && (len(evs) != 1 || evs[0].Units != tt.wantUnits || ev == nil || ev.ID != evs[0].ID):
				t.Errorf("events = %+v, want one of %d units", evs, tt.wantUnits)
			}
			if got := strings.Join(adj.calls, ","); got != tt.wantAdjust {
				t.Errorf("adjustments = %q, want %q", got, tt.wantAdjust)
			}
		})
	}
}

func TestSettleRefusesForgedAndDuplicates(t *testing.T) {
	box, adj := &memBox{}, &adjusts{}
	s, signer := newSettler(t, box, adj)
	other, _ := reservation.NewSigner([]byte(strings.Repeat("x", 32)))
	forged := Entry{Token: token(other, "r1", "header", 100), Status: 200, Headers: map[string]string{"x-usage-units": "0"}}
	if got, _, err := s.Settle(context.Background(), forged); got != Forged || err == nil {
		t.Errorf("forged token: %s, %v; want forged", got, err)
	}
	e := Entry{Token: token(signer, "r1", "header", 100), Status: 200, Headers: map[string]string{"x-usage-units": "10"}}
	for i, want := range []Outcome{Settled, Duplicate, Duplicate} {
		if got, _, _ := s.Settle(context.Background(), e); got != want {
			t.Errorf("settlement %d: %s, want %s", i, got, want)
		}
	}
	if n, calls := len(box.all()), strings.Join(adj.calls, ","); n != 1 || calls != "acme/acme/c -90" {
		t.Errorf("events %d, adjustments %q; want one event and one release", n, calls)
	}
}

func TestSettleOutboxFailure(t *testing.T) {
	box, adj := &memBox{err: usage.ErrFull}, &adjusts{}
	s, signer := newSettler(t, box, adj)
	e := Entry{Token: token(signer, "r1", "header", 100), Status: 200, Headers: map[string]string{"x-usage-units": "30"}}
	if got, _, err := s.Settle(context.Background(), e); got != Failed || !errors.Is(err, usage.ErrFull) {
		t.Errorf("Settle with a full outbox = %s, %v; want failed, ErrFull", got, err)
	}
	box.err = nil // not remembered as settled: a retry stores the event
	if got, _, err := s.Settle(context.Background(), e); got != Settled || err != nil {
		t.Errorf("retry = %s, %v; want settled", got, err)
	}
	// ... without adjusting the counter a second time.
	if got := strings.Join(adj.calls, ","); got != "acme/acme/c -70" {
		t.Errorf("adjustments = %q, want one release of 70", got)
	}
}

// memAdjuster is a quota.Adjuster that only adds.
type memAdjuster struct{ n atomic.Int64 }

func (m *memAdjuster) Adjust(_ context.Context, _, _ string, delta int64, _ time.Time) (int64, error) {
	return m.n.Add(delta), nil
}

// BenchmarkSettle is one settlement: verify the token, adjust the counter,
// append the event (to memory: the outbox's own cost is its benchmark's).
func BenchmarkSettle(b *testing.B) {
	box := &memBox{}
	s, signer := newSettler(b, box, &memAdjuster{})
	toks := make([]string, 1024)
	for i := range toks {
		toks[i] = token(signer, fmt.Sprint("req-", i), "header", 100)
	}
	h := map[string]string{"x-usage-units": "40"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%len(toks) == 0 {
			s.seen.Purge() // the same tokens again: not duplicates for the benchmark
			box.mu.Lock()
			box.events = box.events[:0]
			box.mu.Unlock()
		}
		if o, _, err := s.Settle(context.Background(), Entry{Token: toks[i%len(toks)], Status: 200, Headers: h}); o != Settled || err != nil {
			b.Fatal(o, err)
		}
		i++
	}
}
