package main

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// Histogram counts latencies in log-linear buckets: 64 sub-buckets per
// power of two, so any reported value is within 1.6% of the true one, in
// fixed memory however many requests are recorded.
type Histogram struct {
	counts [64 * 64]int64
	n      int64
	max    int64
}

const subBits = 6 // 64 sub-buckets

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram { return &Histogram{} }

func bucket(ns int64) int {
	if ns < 1<<subBits {
		return int(max(ns, 0))
	}
	exp := 63 - bits.LeadingZeros64(uint64(ns)) // ≥ subBits
	shift := exp - subBits
	return (shift+1)<<subBits + int(ns>>shift) - 1<<subBits
}

// lower is the smallest value in bucket b.
func lower(b int) int64 {
	if b < 1<<subBits {
		return int64(b)
	}
	shift := b>>subBits - 1
	return (int64(b&(1<<subBits-1)) + 1<<subBits) << shift
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	ns := int64(d)
	b := bucket(ns)
	if b >= len(h.counts) {
		b = len(h.counts) - 1
	}
	h.counts[b]++
	h.n++
	h.max = max(h.max, ns)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Count is the number of values recorded.
func (h *Histogram) Count() int64 { return h.n }

// Quantile returns the q-quantile (0 < q ≤ 1): the middle of its bucket.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(h.n)))
	var seen int64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := lower(b), lower(b+1)
			return time.Duration(min((lo+hi)/2, h.max))
		}
	}
	return time.Duration(h.max)
}

// Summary is a histogram's percentiles in µs.
type Summary struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
	// Quantiles are the whole curve, for plots: quantile → µs.
	Quantiles []QV `json:"quantiles"`
}

// QV is one point of the latency curve.
type QV struct {
	Q  float64 `json:"q"`
	Us float64 `json:"us"`
}

// plotQuantiles are evenly spaced on a "number of nines" axis.
var plotQuantiles = func() []float64 {
	qs := []float64{0.01, 0.1, 0.25, 0.5, 0.75}
	for i := 4; i <= 40; i++ {
		qs = append(qs, 1-math.Pow(10, -float64(i)/10)) // 0.602, …, 0.9999
	}
	slices.Sort(qs)
	return qs
}()

func us(d time.Duration) float64 { return float64(d) / 1e3 }

// Summary computes the percentiles.
func (h *Histogram) Summary() Summary {
	s := Summary{
		P50: us(h.Quantile(0.5)), P90: us(h.Quantile(0.9)),
		P99: us(h.Quantile(0.99)), P999: us(h.Quantile(0.999)),
		Max: us(time.Duration(h.max)),
	}
	for _, q := range plotQuantiles {
		s.Quantiles = append(s.Quantiles, QV{Q: q, Us: us(h.Quantile(q))})
	}
	return s
}
