package authz

import (
	"strconv"
	"time"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/tollgate-authz/tollgate/policy"
)

// retryAfter is the whole seconds until reset, at least 1.
func retryAfter(reset, now time.Time) int64 {
	s := int64((reset.Sub(now) + time.Second - 1) / time.Second)
	return max(s, 1)
}

// rateLimitFields describes the subject's quotas to the client with the
// IETF RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers):
//
//	RateLimit-Policy: "requests";q=1000;w=2592000
//	RateLimit: "requests";r=742;t=86400
//
// q is the limit, w the window in seconds, r what remains and t the seconds
// until the window resets. Credits are not a rate limit and are left out:
// with nothing else, both are "". Both values are written into buf's array
// (or a new one when it is too small) and share its memory.
func rateLimitFields(buf []byte, d *policy.Decision, now time.Time) (policyField, rateLimit string) {
	both, n := appendRateLimitFields(buf[:0], d, now)
	if n == 0 {
		return "", ""
	}
	s := unsafe.String(&both[0], len(both))
	return s[:n], s[n:]
}

// appendRateLimitFields appends the RateLimit-Policy value, then the
// RateLimit value, to b, and says where the second starts (0: neither).
func appendRateLimitFields(b []byte, d *policy.Decision, now time.Time) ([]byte, int) {
	var cbuf [128]byte
	cur := cbuf[:0]
	start := len(b)
	for i := range d.Spends {
		sp := &d.Spends[i]
		if sp.Credits {
			continue
		}
		if len(cur) > 0 {
			b = append(b, ", "...)
			cur = append(cur, ", "...)
		}
		b = appendQuoted(b, sp.Quota)
		b = append(b, ";q="...)
		b = strconv.AppendInt(b, sp.Limit, 10)
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, int64(sp.Reset.Sub(sp.Start)/time.Second), 10)
		cur = appendQuoted(cur, sp.Quota)
		cur = append(cur, ";r="...)
		cur = strconv.AppendInt(cur, max(sp.Limit-d.Used[i], 0), 10)
		cur = append(cur, ";t="...)
		cur = strconv.AppendInt(cur, retryAfter(sp.Reset, now), 10)
	}
	if len(cur) == 0 {
		return b[:start], 0
	}
	n := len(b) - start
	return append(b, cur...), n
}

// appendQuoted is strconv.AppendQuote, quick for the names a quota may
// have ([a-z0-9_-], see policy.validQuotaName): they need no escaping.
func appendQuoted(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return strconv.AppendQuote(b, s)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// quotaHeaders is a quota refusal's headers and the messages they point
// to, in one allocation.
type quotaHeaders struct {
	opts [3]corev3.HeaderValueOption
	vals [3]corev3.HeaderValue
	ptrs [3]*corev3.HeaderValueOption
	n    int
}

func (q *quotaHeaders) add(k, v string) {
	o, hv := &q.opts[q.n], &q.vals[q.n]
	hv.Key, hv.Value = k, v
	o.Header, o.AppendAction = hv, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	q.ptrs[q.n] = o
	q.n++
}

// quotaDenialHeaders adds Retry-After (when waiting helps) and the RateLimit
// fields to a quota refusal: the headers in x.quota, their values in x.text.
func (x *denyResponse) quotaDenialHeaders(d *policy.Decision, sp *policy.Spend, now time.Time) []*corev3.HeaderValueOption {
	start := len(x.text)
	b, n := appendRateLimitFields(x.text, d, now)
	rl := len(b) - start // where Retry-After's value begins
	if !sp.Credits {
		b = strconv.AppendInt(b, retryAfter(sp.Reset, now), 10)
	}
	x.text = b
	s := x.since(start)
	if s == "" {
		return nil
	}
	q := &x.quota
	if n > 0 {
		q.add("ratelimit-policy", s[:n])
		q.add("ratelimit", s[n:rl])
	}
	if !sp.Credits {
		q.add("retry-after", s[rl:])
	}
	return q.ptrs[:q.n]
}
