package metrics

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestObserveQuota(t *testing.T) {
	m := New("test", nil)
	calls := []struct{ quota, outcome string }{
		{"requests", "allowed"}, {"requests", "allowed"}, {"requests", "exhausted"},
		{"tokens", "allowed"}, {"tokens", "error"}, {"requests", "error"},
		{"requests", "something_new"}, // not a known outcome: still counted
	}
	for _, c := range calls {
		m.ObserveQuota(c.quota, c.outcome)
	}
	cases := []struct {
		quota, outcome string
		want           float64
	}{
		{"requests", "allowed", 2},
		{"requests", "exhausted", 1},
		{"requests", "error", 1},
		{"requests", "something_new", 1},
		{"tokens", "allowed", 1},
		{"tokens", "exhausted", 0},
		{"tokens", "error", 1},
	}
	for _, c := range cases {
		if got := counterValue(t, m.quotas.WithLabelValues(c.quota, c.outcome)); got != c.want {
			t.Errorf("tollgate_quota_spends_total{quota=%q,outcome=%q} = %v, want %v", c.quota, c.outcome, got, c.want)
		}
	}
}

func TestSourceCall(t *testing.T) {
	m := New("test", nil)
	m.SourceCall("http", "ok", time.Millisecond)
	m.SourceCall("http", "not_found", 2*time.Millisecond)
	m.SourceCall("http", "ok", 3*time.Millisecond)
	m.SourceCall("redis", "error", time.Second)
	m.SourceCall("redis", "timeout", time.Second) // not a known outcome
	cases := []struct {
		source, outcome string
		want            float64
	}{
		{"http", "ok", 2},
		{"http", "not_found", 1},
		{"http", "error", 0},
		{"redis", "error", 1},
		{"redis", "timeout", 1},
	}
	for _, c := range cases {
		if got := counterValue(t, m.srcCalls.WithLabelValues(c.source, c.outcome)); got != c.want {
			t.Errorf("source calls {source=%q,outcome=%q} = %v, want %v", c.source, c.outcome, got, c.want)
		}
	}
	for source, want := range map[string]uint64{"http": 3, "redis": 2} {
		if got := histogramCount(t, m, "tollgate_entitlement_source_call_duration_seconds", "source", source); got != want {
			t.Errorf("source call durations {source=%q} counted %d, want %d", source, got, want)
		}
	}
}

func TestQuotaWriteBack(t *testing.T) {
	m := New("test", nil)
	m.QuotaWriteBack(20, nil)
	m.QuotaWriteBack(5, errors.New("redis: connection refused"))
	m.QuotaWriteBack(3, nil)
	for result, want := range map[string]float64{"ok": 23, "error": 5} {
		if got := counterValue(t, m.qBack.WithLabelValues(result)); got != want {
			t.Errorf("write-back units {result=%q} = %v, want %v", result, got, want)
		}
	}
}

// TestChildrenConcurrent has many goroutines observe new and known quotas
// at once: every call must be counted once (run it with -race).
func TestChildrenConcurrent(t *testing.T) {
	m := New("test", nil)
	quotas := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	const perQuota = 200
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perQuota * len(quotas) / 8 {
				m.ObserveQuota(quotas[(w+i)%len(quotas)], "allowed")
			}
		}()
	}
	wg.Wait()
	for _, q := range quotas {
		if got := counterValue(t, m.quotas.WithLabelValues(q, "allowed")); got != perQuota {
			t.Errorf("quota %q counted %v, want %v", q, got, perQuota)
		}
	}
}

// histogramCount is the sample count of the histogram name{label=value}.
func histogramCount(t *testing.T, m *Metrics, name, label, value string) uint64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return s.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}

func BenchmarkObserveQuota(b *testing.B) {
	m := New("test", nil)
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveQuota("requests", "allowed")
		m.ObserveQuota("per_second", "allowed")
	}
}

// counterValue is a counter's current value.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var out dto.Metric
	if err := c.Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}
