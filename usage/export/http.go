package export

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// Bounds shared by the HTTP exporters.
const (
	// DefaultHTTPTimeout is the default client's timeout: a backstop for
	// a provider that never answers, under the loop's ExportTimeout.
	DefaultHTTPTimeout = 30 * time.Second
	// MaxRetryAfter caps a provider's Retry-After: a longer (or garbled)
	// one is read as this, so no answer can stop exports for days.
	MaxRetryAfter = time.Hour
	// maxAnswer bounds what is read of one answer.
	maxAnswer = 64 << 10
)

var defaultClient = &http.Client{Timeout: DefaultHTTPTimeout}

// poster sends one request body to one URL with a bearer token.
type poster struct {
	provider string
	url      string
	shown    string // url without userinfo and query: safe in errors
	token    string
	client   *http.Client
	now      func() time.Time
	header   http.Header // extra headers, set on every request
}

func newPoster(provider, rawURL, token string, client *http.Client, now func() time.Time) *poster {
	if client == nil {
		client = defaultClient
	}
	if now == nil {
		now = time.Now
	}
	return &poster{provider: provider, url: rawURL, shown: redactURL(rawURL), token: token, client: client, now: now, header: http.Header{}}
}

// answer is a provider's response, read whole (up to maxAnswer).
type answer struct {
	status int
	header http.Header
	body   []byte
}

// post sends body. A request that got no answer is an *Error of
// KindUnavailable; any answer, whatever its status, is returned for the
// caller to judge.
func (p *poster) post(ctx context.Context, contentType string, body []byte) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return answer{}, &Error{Provider: p.provider, Kind: KindEndpoint, Message: "POST " + p.shown + ": cannot build the request"}
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "tollgate")
	for k, v := range p.header {
		req.Header[k] = v
	}
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		// url.Error repeats the URL, which may hold a secret: keep the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return answer{}, &Error{Provider: p.provider, Kind: KindUnavailable, Message: "POST " + p.shown, Err: p.scrubErr(err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	// What is left is drained so the connection is reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if err != nil && resp.StatusCode/100 == 2 {
		// The provider said yes before the body broke: it holds the events.
		err = nil
	}
	if err != nil {
		return answer{}, &Error{Provider: p.provider, Kind: KindUnavailable, Status: resp.StatusCode, Message: "POST " + p.shown + ": reading the answer", Err: p.scrubErr(err)}
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// refusal is the *Error for a non-2xx answer, its Kind read from the status
// alone, wrapped in a *usage.RetryAfterError when the provider asks to
// wait (429, or 503 with Retry-After).
func (p *poster) refusal(a answer, code, message string) error {
	e := &Error{Provider: p.provider, Kind: statusKind(a.status), Status: a.status, Code: p.scrubWord(code), Message: p.scrub(message)}
	if a.status == http.StatusTooManyRequests || a.status == http.StatusServiceUnavailable {
		if d, ok := parseRetryAfter(a.header.Get("Retry-After"), p.now()); ok {
			return &usage.RetryAfterError{After: d, Err: e}
		}
	}
	return e
}

// statusKind is what a status says, for a request about the events it
// carried.
func statusKind(status int) Kind {
	switch {
	case status == http.StatusTooManyRequests:
		return KindRateLimited
	case status >= 500, status == http.StatusRequestTimeout, status == http.StatusConflict, status == http.StatusTooEarly:
		return KindUnavailable
	case status == http.StatusUnauthorized, status == http.StatusForbidden, status == http.StatusProxyAuthRequired:
		return KindAuth
	case status == http.StatusNotFound, status == http.StatusMethodNotAllowed, status == http.StatusGone,
		status == http.StatusUnsupportedMediaType, status == http.StatusNotAcceptable, status < 200, status/100 == 3:
		return KindEndpoint
	case status/100 == 4:
		return KindRejected
	}
	return KindUnavailable
}

// parseRetryAfter reads Retry-After as seconds or an HTTP date, capped at
// MaxRetryAfter. A date in the past is zero wait, which is still an answer.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		if n > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter, true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	return min(max(d, 0), MaxRetryAfter), true
}

// keyLike matches tokens shaped like Stripe keys and secrets: a refusal
// may echo part of the key ("sk_test_****abcd").
var keyLike = regexp.MustCompile(`\b(sk|rk|pk|whsec)_[A-Za-z0-9_*]+`)

// scrub makes a provider's words safe to keep in an error: no token, no
// key-shaped word, at most 200 bytes.
func (p *poster) scrub(msg string) string {
	msg = strings.ToValidUTF8(p.clean(msg), "?")
	if len(msg) > 200 {
		msg = strings.ToValidUTF8(msg[:200], "") + "…"
	}
	return msg
}

// clean replaces the token and key-shaped words in msg.
func (p *poster) clean(msg string) string {
	if p.token != "" {
		msg = strings.ReplaceAll(msg, p.token, "[redacted]")
	}
	return keyLike.ReplaceAllString(msg, "[redacted]")
}

var word = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)

// scrubWord is an error code fit to print: a plain word, else "".
func (p *poster) scrubWord(s string) string {
	if s == "" || !word.MatchString(s) || p.scrub(s) != s {
		return ""
	}
	return s
}

// scrubErr keeps an error's text but not a secret in it.
func (p *poster) scrubErr(err error) error {
	if err == nil {
		return nil
	}
	if msg := err.Error(); p.clean(msg) != msg {
		return errors.New(p.clean(msg))
	}
	return err
}

// redactURL is u as it may appear in an error or a log: scheme, host and
// path, without userinfo, query or fragment.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}

// checkURL accepts an absolute http(s) URL; with a secret to send, it must
// be https unless the host is a loopback address (a test, or a sidecar).
func checkURL(field, raw string, secret bool) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("%s %q is not an absolute http(s) URL", field, redactURL(raw))
	}
	if u.User != nil {
		return fmt.Errorf("%s %q holds userinfo: pass the token in its own setting", field, redactURL(raw))
	}
	if secret && u.Scheme == "http" && !loopback(u.Hostname()) {
		return fmt.Errorf("%s %q must use https: the token would travel in clear", field, redactURL(raw))
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sendSplit posts events with send; when the provider refuses a batch
// for good, it splits it in halves to find the events it refuses, so one
// bad event never holds back the others (a 413 is found the same way).
// After a retryable failure it sends nothing more: the rest is retried.
func sendSplit(ctx context.Context, events []usage.Event, send func(context.Context, []usage.Event) error, o *outcome, stopped *bool) {
	if len(events) == 0 {
		return
	}
	if *stopped {
		o.fail(nil, ids(events)...)
		return
	}
	err := send(ctx, events)
	switch {
	case err == nil:
		o.deliver(len(events))
	case KindOf(err).Permanent() && len(events) > 1:
		mid := len(events) / 2
		sendSplit(ctx, events[:mid], send, o, stopped)
		sendSplit(ctx, events[mid:], send, o, stopped)
	case KindOf(err).Permanent():
		o.refuse(events[0].ID, err)
	default:
		o.fail(err, ids(events)...)
		*stopped = true
	}
}

func ids(events []usage.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}
