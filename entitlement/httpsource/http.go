package httpsource

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/envvar"
)

// MaxBodyBytes bounds a response body. A record is a few hundred bytes; a
// larger body is a fault, not an answer.
const MaxBodyBytes = 64 << 10

// Defaults for zero Options fields.
const (
	DefaultTimeout         = 50 * time.Millisecond
	DefaultMaxInFlight     = 64
	DefaultIdleConnTimeout = 90 * time.Second
	DefaultFailures        = 5
	DefaultCooldown        = 5 * time.Second
	DefaultMaxRetryAfter   = 30 * time.Second
)

// Options configure a Source. Zero values take the defaults, and so do
// negative ones where they mean nothing. New trusts the rest: config checks
// the url (http or https, a host, no credentials, query or fragment), the
// token (visible ASCII) and the timeout (under server.envoy_timeout).
type Options struct {
	// BaseURL is the service's root, http or https, optionally with a path
	// prefix: "https://billing.internal:8443" or "http://127.0.0.1:8081/billing".
	BaseURL string
	// Token, when set, is sent as "Authorization: Bearer <Token>".
	Token string
	// TokenEnv, when Token is empty, names an environment variable holding
	// the token, read once by New; surrounding white space (a trailing
	// newline) is trimmed, and an unset or empty variable is an error.
	TokenEnv string
	// Timeout bounds each call: dial, TLS, request and body. Default 50ms.
	// Keep it under Envoy's ext_authz timeout, or Envoy answers
	// status_on_error before tollgate decides: config checks it against
	// server.envoy_timeout, and New trusts that.
	Timeout time.Duration
	// MaxInFlight bounds concurrent calls; a Lookup over the bound fails at
	// once with ErrTooManyInFlight instead of queueing. Default 64.
	MaxInFlight int
	// MaxIdleConns is how many keep-alive connections are kept for reuse.
	// Default MaxInFlight, so a burst at the bound reuses every connection.
	MaxIdleConns int
	// IdleConnTimeout closes a keep-alive connection unused this long. Default 90s.
	IdleConnTimeout time.Duration
	// TLS configures https, for example a private CA or a client certificate
	// for mTLS. Nil uses the system roots.
	TLS *tls.Config
	// Breaker stops calling a failing service for a while.
	Breaker BreakerOptions
	// Version is sent as "User-Agent: tollgate/<Version>". Default "dev".
	Version string
	// Logger gets credential rejections and breaker transitions. Default slog.Default().
	Logger *slog.Logger
	// Observer, when set, is told about every call and breaker transition.
	Observer Observer
	// Now is the breaker's clock. Default time.Now.
	Now func() time.Time
}

// BreakerOptions configure the circuit breaker.
type BreakerOptions struct {
	// Failures is how many consecutive failed calls open the breaker.
	// Default 5; negative disables the breaker.
	Failures int
	// Cooldown is how long the breaker stays open before one probe call is
	// let through. Default 5s.
	Cooldown time.Duration
	// MaxRetryAfter caps how long a Retry-After on 429 or 503 keeps the
	// breaker open. Such an answer opens the breaker at once, for
	// max(Cooldown, min(Retry-After, MaxRetryAfter)). Default 30s; negative
	// ignores Retry-After.
	MaxRetryAfter time.Duration
}

func (o *Options) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxIdleConns <= 0 {
		o.MaxIdleConns = o.MaxInFlight
	}
	if o.IdleConnTimeout <= 0 {
		o.IdleConnTimeout = DefaultIdleConnTimeout
	}
	if o.Breaker.Failures == 0 {
		o.Breaker.Failures = DefaultFailures
	}
	if o.Breaker.Cooldown <= 0 {
		o.Breaker.Cooldown = DefaultCooldown
	}
	if o.Breaker.MaxRetryAfter == 0 {
		o.Breaker.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Observer is told what the source does, for metrics. Calls come from many
// goroutines at once; implementations must be safe for that, and fast.
type Observer interface {
	// Call reports one Lookup: kind is the key kind ("subject", "api_key"),
	// outcome one of Outcomes, d the time it took. For OutcomeBreakerOpen and
	// OutcomeOverloaded no request was sent.
	Call(kind, outcome string, d time.Duration)
	// BreakerState reports the breaker's state: once from New (closed), then
	// on every transition, in order.
	BreakerState(state string)
}

type nopObserver struct{}

func (nopObserver) Call(string, string, time.Duration) {}
func (nopObserver) BreakerState(string)                {}

// Call outcomes, as reported to Observer.Call and in LookupError.Outcome.
const (
	OutcomeOK               = "ok"                // 200 with a valid record
	OutcomeNotFound         = "not_found"         // 404: unknown key
	OutcomeInvalid          = "invalid"           // 200 with a malformed, invalid or oversized body
	OutcomeUnauthorized     = "unauthorized"      // 401 or 403: tollgate's token is wrong
	OutcomeRateLimited      = "rate_limited"      // 429
	OutcomeServerError      = "server_error"      // 5xx
	OutcomeUnexpectedStatus = "unexpected_status" // any other status (3xx, 400, 204, ...)
	OutcomeTimeout          = "timeout"           // no full answer within the timeout
	OutcomeTransport        = "transport"         // connection refused, reset, DNS, TLS ...
	OutcomeCanceled         = "canceled"          // the caller gave up first
	OutcomeBreakerOpen      = "breaker_open"      // not sent: the breaker is open
	OutcomeOverloaded       = "overloaded"        // not sent: MaxInFlight calls already out
)

// Outcomes lists every call outcome, for pre-creating metric series.
var Outcomes = []string{
	OutcomeOK, OutcomeNotFound, OutcomeInvalid, OutcomeUnauthorized, OutcomeRateLimited,
	OutcomeServerError, OutcomeUnexpectedStatus, OutcomeTimeout, OutcomeTransport,
	OutcomeCanceled, OutcomeBreakerOpen, OutcomeOverloaded,
}

var (
	// ErrUnavailable matches every error Lookup returns other than
	// entitlement.ErrNotFound: the service gave no usable answer.
	ErrUnavailable = errors.New("entitlements service unavailable")
	// ErrBreakerOpen: the breaker is open and the call was not sent.
	ErrBreakerOpen = errors.New("circuit breaker open")
	// ErrTooManyInFlight: MaxInFlight calls were already out; the call was not sent.
	ErrTooManyInFlight = errors.New("too many calls in flight")
	// ErrInvalidResponse: a 200 whose body is not a valid record.
	ErrInvalidResponse = errors.New("invalid response")
)

// LookupError is every failure of Lookup. It matches ErrUnavailable and its
// cause with errors.Is, and never entitlement.ErrNotFound. It names neither
// the token nor the key looked up.
type LookupError struct {
	Kind       string        // "subject" or "api_key"
	Outcome    string        // one of Outcomes
	StatusCode int           // the service's HTTP status, when it answered
	RetryAfter time.Duration // the service's Retry-After, when it sent one
	Err        error         // the cause, when there is one beyond the status
}

func (e *LookupError) Error() string {
	var b strings.Builder
	b.WriteString("entitlements service: lookup by ")
	b.WriteString(e.Kind)
	b.WriteString(": ")
	if e.StatusCode != 0 && e.Err == nil {
		fmt.Fprintf(&b, "HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
		if e.Outcome == OutcomeUnauthorized {
			b.WriteString(" (check the token tollgate sends)")
		}
		if e.RetryAfter > 0 {
			fmt.Fprintf(&b, ", retry after %v", e.RetryAfter)
		}
		return b.String()
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString(e.Outcome)
	}
	return b.String()
}

// Unwrap lets errors.Is match ErrUnavailable and the cause.
func (e *LookupError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrUnavailable}
	}
	return []error{ErrUnavailable, e.Err}
}

// Source looks entitlements up in the billing service.
type Source struct {
	client      *http.Client
	transport   *http.Transport
	subjectsURL string // ends in "/"
	apiKeysURL  string // ends in "/"
	header      http.Header
	timeout     time.Duration
	slots       chan struct{}
	breaker     *breaker
	obs         Observer
	log         *slog.Logger
	now         func() time.Time
}

var _ entitlement.Source = (*Source)(nil)

// New builds a Source from opts, which config has checked (see Options).
// It refuses only what it cannot build from: no url, or one that does not
// parse, and a TokenEnv that holds no token. It does not call the service.
func New(opts Options) (*Source, error) {
	opts.defaults()
	base, err := parseBase(opts.BaseURL)
	if err != nil {
		return nil, err
	}
	token := opts.Token
	if token == "" && opts.TokenEnv != "" {
		if token, err = envvar.Lookup(opts.TokenEnv); err != nil {
			return nil, fmt.Errorf("httpsource: token_env: %w", err)
		}
	}

	var tlsConf *tls.Config
	if opts.TLS != nil {
		tlsConf = opts.TLS.Clone()
	}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   opts.Timeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: opts.Timeout,
		// HTTP/2 is used when the service offers it over TLS (ALPN); plain
		// http stays HTTP/1.1 with keep-alive.
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           opts.MaxIdleConns,
		MaxIdleConnsPerHost:    opts.MaxIdleConns,
		IdleConnTimeout:        opts.IdleConnTimeout,
		MaxResponseHeaderBytes: MaxBodyBytes,
		// Records are small; gzip would cost more time than it saves.
		DisableCompression: true,
	}
	s := &Source{
		client: &http.Client{
			Transport: tr,
			// A redirect is a misconfigured url: report it, do not follow it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		transport:   tr,
		subjectsURL: base + "/v1/entitlements/subjects/",
		apiKeysURL:  base + "/v1/entitlements/api-keys/",
		header: http.Header{
			"Accept":             {"application/json"},
			"User-Agent":         {"tollgate/" + opts.Version},
			"X-Tollgate-Request": {"1"},
		},
		timeout: opts.Timeout,
		slots:   make(chan struct{}, opts.MaxInFlight),
		obs:     opts.Observer,
		log:     opts.Logger,
		now:     opts.Now,
	}
	if token != "" {
		s.header.Set("Authorization", "Bearer "+token)
	}
	s.breaker = newBreaker(opts.Breaker, opts.Now, s.breakerChanged)
	s.obs.BreakerState(BreakerClosed)
	return s, nil
}

// parseBase returns the base URL without a trailing slash. Its errors do
// not echo the URL: it may carry something secret.
func parseBase(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("httpsource: url is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", errors.New("httpsource: url is not a valid URL")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// Close drops idle keep-alive connections. The Source stays usable.
func (s *Source) Close() error {
	s.transport.CloseIdleConnections()
	return nil
}

// BreakerState is the breaker's current state, for readiness and debugging.
func (s *Source) BreakerState() string { return s.breaker.State() }

// Lookup implements entitlement.Source.
func (s *Source) Lookup(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, error) {
	target, ok := s.target(key)
	if !ok {
		// No service can know an empty id or a malformed digest; and a raw
		// API key passed here by mistake must not leave tollgate.
		return nil, entitlement.ErrNotFound
	}
	kind := key.Kind.String()
	start := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, s.fail(kind, start, ctxOutcome(err), 0, err)
	}
	ok, probe := s.breaker.allow()
	if !ok {
		return nil, s.fail(kind, start, OutcomeBreakerOpen, 0, ErrBreakerOpen)
	}
	select {
	case s.slots <- struct{}{}:
	default:
		s.breaker.record(probe, neutral, 0)
		return nil, s.fail(kind, start, OutcomeOverloaded, 0, ErrTooManyInFlight)
	}
	ent, r := s.call(ctx, key, kind, target)
	<-s.slots
	s.breaker.record(probe, r.verdict, r.retryAfter)
	s.obs.Call(kind, r.outcome, time.Since(start))
	if r.err != nil {
		return nil, r.err
	}
	return ent, nil
}

func (s *Source) fail(kind string, start time.Time, outcome string, status int, cause error) error {
	s.obs.Call(kind, outcome, time.Since(start))
	return &LookupError{Kind: kind, Outcome: outcome, StatusCode: status, Err: cause}
}

func ctxOutcome(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return OutcomeTimeout
	}
	return OutcomeCanceled
}

// target is the URL for key, or false when key cannot name a record.
func (s *Source) target(key entitlement.Key) (string, bool) {
	switch key.Kind {
	case entitlement.BySubject:
		if key.ID == "" {
			return "", false
		}
		return s.subjectsURL + url.PathEscape(key.ID), true
	case entitlement.ByAPIKey:
		if len(key.ID) != 64 {
			return "", false
		}
		if _, err := hex.DecodeString(key.ID); err != nil {
			return "", false
		}
		return s.apiKeysURL + strings.ToLower(key.ID), true
	}
	return "", false
}

// result is one call's answer and what it says about the service.
type result struct {
	outcome    string
	verdict    verdict
	retryAfter time.Duration
	err        error // nil for ok; ErrNotFound for not_found; else *LookupError
}

func (s *Source) call(parent context.Context, key entitlement.Key, kind, target string) (*entitlement.Entitlement, result) {
	ctx, cancel := context.WithTimeout(parent, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil { // the URL was built from a checked base and an escaped id
		return nil, s.failure(kind, OutcomeTransport, neutral, 0, 0, err)
	}
	req.Header = s.header.Clone()
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, s.transportFailure(parent, kind, err)
	}
	defer drainClose(resp.Body)

	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		body, err := readBody(resp)
		if err != nil {
			if errors.Is(err, errTooLarge) {
				return nil, s.failure(kind, OutcomeInvalid, healthy, code, 0, fmt.Errorf("%w: %w", ErrInvalidResponse, err))
			}
			return nil, s.transportFailure(parent, kind, err)
		}
		ent, err := decode(body, key)
		if err != nil {
			// The service is up and answering; one bad record must not
			// open the breaker for every other subject.
			return nil, s.failure(kind, OutcomeInvalid, healthy, code, 0, fmt.Errorf("%w: %w", ErrInvalidResponse, err))
		}
		return ent, result{outcome: OutcomeOK, verdict: healthy}
	case code == http.StatusNotFound:
		return nil, result{outcome: OutcomeNotFound, verdict: healthy, err: entitlement.ErrNotFound}
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		s.log.Error("entitlements service refused tollgate's credentials: check the token (token or token_env) and the service's access rules",
			"status", code, "source", "http", "kind", kind)
		return nil, s.failure(kind, OutcomeUnauthorized, failed, code, 0, nil)
	case code == http.StatusTooManyRequests:
		return nil, s.failure(kind, OutcomeRateLimited, failed, code, s.retryAfter(resp), nil)
	case code >= 500:
		return nil, s.failure(kind, OutcomeServerError, failed, code, s.retryAfter(resp), nil)
	default:
		// 3xx, 204, 400, 410 ...: the service is up but the answer is not
		// in the contract. Usually a wrong url; the error says which status.
		return nil, s.failure(kind, OutcomeUnexpectedStatus, healthy, code, 0, nil)
	}
}

func (s *Source) failure(kind, outcome string, v verdict, status int, retryAfter time.Duration, cause error) result {
	return result{
		outcome: outcome, verdict: v, retryAfter: retryAfter,
		err: &LookupError{Kind: kind, Outcome: outcome, StatusCode: status, RetryAfter: retryAfter, Err: cause},
	}
}

// transportFailure classifies a failed request or body read. A caller that
// gave up says nothing about the service's health; a timeout does.
func (s *Source) transportFailure(parent context.Context, kind string, err error) result {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // url.Error names the URL, and so the API-key digest
	}
	if perr := parent.Err(); perr != nil && !errors.Is(perr, context.DeadlineExceeded) {
		return s.failure(kind, OutcomeCanceled, neutral, 0, 0, fmt.Errorf("canceled by the caller: %w", perr))
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		if !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
		}
		return s.failure(kind, OutcomeTimeout, failed, 0, 0, fmt.Errorf("no answer within %v: %w", s.timeout, err))
	}
	return s.failure(kind, OutcomeTransport, failed, 0, 0, err)
}

// retryAfter reads Retry-After as seconds or an HTTP date.
func (s *Source) retryAfter(resp *http.Response) time.Duration {
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(s.now()); d > 0 {
			return d
		}
	}
	return 0
}

func (s *Source) breakerChanged(from, to string, openFor time.Duration, failures int) {
	switch to {
	case BreakerOpen:
		if from == BreakerHalfOpen {
			s.log.Warn("entitlements service still failing: circuit breaker open again; serving cached records",
				"source", "http", "open_for", openFor)
		} else {
			s.log.Warn("entitlements service failing: circuit breaker open; serving cached records",
				"source", "http", "consecutive_failures", failures, "open_for", openFor)
		}
	case BreakerClosed:
		s.log.Info("entitlements service answering again: circuit breaker closed", "source", "http")
	}
	s.obs.BreakerState(to)
}

var errTooLarge = fmt.Errorf("body larger than %d KiB", MaxBodyBytes>>10)

// readBody reads at most MaxBodyBytes.
func readBody(resp *http.Response) ([]byte, error) {
	if resp.ContentLength > MaxBodyBytes {
		return nil, errTooLarge
	}
	var buf bytes.Buffer
	if resp.ContentLength > 0 {
		buf.Grow(int(resp.ContentLength))
	}
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, MaxBodyBytes+1)); err != nil {
		return nil, err
	}
	if buf.Len() > MaxBodyBytes {
		return nil, errTooLarge
	}
	return buf.Bytes(), nil
}

// drainClose reads what is left of a body (up to a bound) so that the
// connection can be reused, then closes it.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, MaxBodyBytes))
	_ = body.Close()
}

// decode parses and checks a 200 body. Errors name the JSON field.
func decode(body []byte, key entitlement.Key) (*entitlement.Entitlement, error) {
	e, err := entitlement.DecodeJSON(body)
	if err != nil {
		return nil, err
	}
	if key.Kind == entitlement.BySubject && e.Subject != key.ID {
		// Serving another subject's record would grant the wrong plan.
		return nil, errors.New(`"subject" is not the subject asked for`)
	}
	return e, nil
}
