package authz

import (
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/tollgate-authz/tollgate/policy"
)

// retryAfter is the whole seconds until reset, at least 1.
func retryAfter(reset, now time.Time) int64 {
	s := int64((reset.Sub(now) + time.Second - 1) / time.Second)
	return max(s, 1)
}

// rateLimitHeaders describes the subject's quotas to the client with the
// IETF RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers):
//
//	RateLimit-Policy: "requests";q=1000;w=2592000
//	RateLimit: "requests";r=742;t=86400
//
// q is the limit, w the window in seconds, r what remains and t the seconds
// until the window resets. Credits are not a rate limit and are left out.
func rateLimitHeaders(d *policy.Decision, now time.Time) []*corev3.HeaderValueOption {
	var pol, cur strings.Builder
	for i := range d.Spends {
		sp := &d.Spends[i]
		if sp.Credits {
			continue
		}
		if pol.Len() > 0 {
			pol.WriteString(", ")
			cur.WriteString(", ")
		}
		name := strconv.Quote(sp.Quota)
		pol.WriteString(name)
		pol.WriteString(";q=")
		pol.WriteString(strconv.FormatInt(sp.Limit, 10))
		pol.WriteString(";w=")
		pol.WriteString(strconv.FormatInt(int64(sp.Reset.Sub(sp.Start)/time.Second), 10))
		cur.WriteString(name)
		cur.WriteString(";r=")
		cur.WriteString(strconv.FormatInt(max(sp.Limit-d.Used[i], 0), 10))
		cur.WriteString(";t=")
		cur.WriteString(strconv.FormatInt(retryAfter(sp.Reset, now), 10))
	}
	if pol.Len() == 0 {
		return nil
	}
	return []*corev3.HeaderValueOption{
		overwrite("ratelimit-policy", pol.String()),
		overwrite("ratelimit", cur.String()),
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
