package authz

import (
	"strconv"
	"time"

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
// with nothing else, both are "". Both values share one allocation.
func rateLimitFields(d *policy.Decision, now time.Time) (policyField, rateLimit string) {
	var pbuf, cbuf [128]byte
	pol, cur := pbuf[:0], cbuf[:0]
	for i := range d.Spends {
		sp := &d.Spends[i]
		if sp.Credits {
			continue
		}
		if len(pol) > 0 {
			pol = append(pol, ", "...)
			cur = append(cur, ", "...)
		}
		pol = appendQuoted(pol, sp.Quota)
		pol = append(pol, ";q="...)
		pol = strconv.AppendInt(pol, sp.Limit, 10)
		pol = append(pol, ";w="...)
		pol = strconv.AppendInt(pol, int64(sp.Reset.Sub(sp.Start)/time.Second), 10)
		cur = appendQuoted(cur, sp.Quota)
		cur = append(cur, ";r="...)
		cur = strconv.AppendInt(cur, max(sp.Limit-d.Used[i], 0), 10)
		cur = append(cur, ";t="...)
		cur = strconv.AppendInt(cur, retryAfter(sp.Reset, now), 10)
	}
	if len(pol) == 0 {
		return "", ""
	}
	both := string(append(pol, cur...))
	return both[:len(pol)], both[len(pol):]
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

// rateLimitHeaders is rateLimitFields as headers, nil when there are none.
func rateLimitHeaders(d *policy.Decision, now time.Time) []*corev3.HeaderValueOption {
	pol, cur := rateLimitFields(d, now)
	if pol == "" {
		return nil
	}
	return []*corev3.HeaderValueOption{
		overwrite("ratelimit-policy", pol),
		overwrite("ratelimit", cur),
	}
}

// quotaDenialHeaders adds Retry-After (when waiting helps) and the RateLimit
// fields to a quota refusal.
func quotaDenialHeaders(d *policy.Decision, sp *policy.Spend, now time.Time) []*corev3.HeaderValueOption {
	hs := rateLimitHeaders(d, now)
	if !sp.Credits {
		hs = append(hs, overwrite("retry-after", strconv.FormatInt(retryAfter(sp.Reset, now), 10)))
	}
	return hs
}
