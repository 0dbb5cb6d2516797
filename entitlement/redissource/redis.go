package redissource

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/entitlement"
)

// Defaults for zero Options fields.
const (
	DefaultPrefix      = "tollgate:ent:"
	DefaultChannel     = "tollgate:invalidate"
	DefaultTimeout     = 50 * time.Millisecond
	DefaultHealthCheck = time.Second
)

// MaxRecordBytes bounds a stored record. A record is a few hundred bytes; a
// larger value is a fault, not an answer.
const MaxRecordBytes = 64 << 10

// Options configure a Source. Only Client is required.
type Options struct {
	// Client reaches Redis (*redis.Client, *redis.FailoverClient, ...). For
	// lookups to respect Timeout it must have ContextTimeoutEnabled; fail-fast
	// settings like quota.RedisOptions suit it.
	Client redis.UniversalClient
	// Prefix starts every key; default "tollgate:ent:". In Redis Cluster it
	// must hold a hash tag, such as "{tollgate:ent}:".
	Prefix string
	// Channel carries invalidations; default "tollgate:invalidate".
	Channel string
	// Timeout bounds each lookup; default 50ms (also when negative). Keep
	// it under Envoy's ext_authz timeout: config checks it against
	// server.envoy_timeout, and New trusts that. Writes (Put, Get, Delete)
	// use the caller's context only.
	Timeout time.Duration
	// HealthCheck is how long Subscribe waits in silence before it pings
	// Redis; after three silent intervals it drops the connection and
	// subscribes afresh. Default 1s.
	HealthCheck time.Duration
	// Observer, when set, is told about every lookup.
	Observer Observer
	// Logger gets subscription losses and recoveries. Default slog.Default().
	Logger *slog.Logger
}

// MarkerSuffix names the dataset marker, the key prefix + "meta:dataset".
// Every Delete, and every Put that revokes an API key, sets it (no TTL) to
// the time of the write; other Puts refresh it if it is there but never
// create it, so that replaying records into an emptied Redis leaves the
// subjects not yet replayed doubted rather than unknown. A lookup
// that finds nothing reads it in the same round trip: present, the key is
// really not there (entitlement.ErrNotFound, believed at once); absent, this
// Redis lost its data (restarted empty, flushed) or was never written by a
// writer that sets it, and the answer is entitlement.ErrNotFoundUnconfirmed,
// which the cache doubts for a key it holds a record for.
const MarkerSuffix = "meta:dataset"

// Observer is told about lookups, for metrics. Calls come from many
// goroutines at once; implementations must be safe for that, and fast.
type Observer interface {
	// Call reports one Lookup: kind is "subject" or "api_key", outcome one
	// of Outcomes, d the time it took.
	Call(kind, outcome string, d time.Duration)
}

// Lookup outcomes, as reported to Observer.Call and in LookupError.Outcome.
const (
	OutcomeOK       = "ok"        // a valid record
	OutcomeNotFound = "not_found" // no record, or no index entry (confirmed or not)
	OutcomeInvalid  = "invalid"   // a value that is not a valid record, or a key of the wrong type
	OutcomeTimeout  = "timeout"   // no answer within the timeout
	OutcomeError    = "error"     // connection refused or reset, any other Redis error
	OutcomeCanceled = "canceled"  // the caller gave up first
	// OutcomeNotReady: Redis answered that it cannot serve yet (LOADING,
	// BUSY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, too many clients), as a Redis
	// that restarted with its data does until it has loaded it.
	OutcomeNotReady = "not_ready"
)

// Outcomes lists every lookup outcome, for pre-creating metric series.
var Outcomes = []string{OutcomeOK, OutcomeNotFound, OutcomeInvalid, OutcomeTimeout, OutcomeError, OutcomeCanceled, OutcomeNotReady}

var (
	// ErrUnavailable matches every error Lookup returns other than
	// entitlement.ErrNotFound: Redis gave no usable answer.
	ErrUnavailable = errors.New("entitlements redis unavailable")
	// ErrInvalidRecord: a stored value is not a valid record.
	ErrInvalidRecord = errors.New("invalid record")
)

// LookupError is every failure of Lookup. It matches ErrUnavailable and its
// cause with errors.Is, and never entitlement.ErrNotFound. It does not name
// the key looked up (an API-key digest is a credential's fingerprint).
type LookupError struct {
	Kind    string // "subject" or "api_key"
	Outcome string // one of Outcomes
	Err     error
}

func (e *LookupError) Error() string {
	return "entitlements redis: lookup by " + e.Kind + ": " + e.Err.Error()
}

// Unwrap lets errors.Is match ErrUnavailable and the cause.
func (e *LookupError) Unwrap() []error { return []error{ErrUnavailable, e.Err} }

// Source reads entitlements from Redis and writes them (Put, Delete).
type Source struct {
	client      redis.UniversalClient
	prefix      string
	subjectPfx  string // prefix + "subject:"
	keyPfx      string // prefix + "key:"
	keySetPfx   string // prefix + "subject-keys:"
	markerKey   string // prefix + "meta:dataset"
	channel     string
	timeout     time.Duration
	healthCheck time.Duration
	obs         Observer
	log         *slog.Logger
}

var _ entitlement.Source = (*Source)(nil)

// New builds a Source from opts, which config has checked: it refuses only
// a missing Client. It does not call Redis.
func New(opts Options) (*Source, error) {
	if opts.Client == nil {
		return nil, errors.New("redissource: a Redis client is required")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Channel == "" {
		opts.Channel = DefaultChannel
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.HealthCheck <= 0 {
		opts.HealthCheck = DefaultHealthCheck
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Source{
		client:      opts.Client,
		prefix:      opts.Prefix,
		subjectPfx:  opts.Prefix + "subject:",
		keyPfx:      opts.Prefix + "key:",
		keySetPfx:   opts.Prefix + "subject-keys:",
		markerKey:   opts.Prefix + MarkerSuffix,
		channel:     opts.Channel,
		timeout:     opts.Timeout,
		healthCheck: opts.HealthCheck,
		obs:         opts.Observer,
		log:         opts.Logger,
	}, nil
}

type nopObserver struct{}

func (nopObserver) Call(string, string, time.Duration) {}

// Channel is the invalidation channel.
func (s *Source) Channel() string { return s.channel }

func (s *Source) recordKey(subject string) string { return s.subjectPfx + subject }
func (s *Source) indexKey(digest string) string   { return s.keyPfx + digest }
func (s *Source) keySetKey(subject string) string { return s.keySetPfx + subject }

// Lookup implements entitlement.Source.
func (s *Source) Lookup(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, error) {
	id, ok := normalize(key)
	if !ok {
		// Nothing can be stored under an empty id or a malformed digest.
		return nil, entitlement.ErrNotFound
	}
	kind := key.Kind.String()
	start := time.Now()
	rctx := ctx
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > s.timeout {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}

	var (
		body    string
		subject string
		marked  bool
		err     error
	)
	if key.Kind == entitlement.BySubject {
		subject = id
		body, marked, err = s.bySubject(rctx, id)
	} else {
		subject, body, marked, err = s.byKey(rctx, id)
	}
	switch {
	case errors.Is(err, redis.Nil):
		s.obs.Call(kind, OutcomeNotFound, time.Since(start))
		if !marked {
			return nil, entitlement.ErrNotFoundUnconfirmed
		}
		return nil, entitlement.ErrNotFound
	case err != nil:
		return nil, s.fail(kind, start, s.classify(ctx, err), err)
	}
	ent, err := decode(body, subject)
	if err != nil {
		return nil, s.fail(kind, start, OutcomeInvalid, fmt.Errorf("%w: %w", ErrInvalidRecord, err))
	}
	s.obs.Call(kind, OutcomeOK, time.Since(start))
	return ent, nil
}

// bySubject reads a record and the dataset marker in one round trip (two
// GETs, pipelined: a replica's suggested ACL allows GET and EVALSHA only).
// It returns redis.Nil when the record is missing, and then whether the
// marker is set.
func (s *Source) bySubject(ctx context.Context, subject string) (body string, marked bool, err error) {
	p := s.client.Pipeline()
	rec := p.Get(ctx, s.recordKey(subject))
	mark := p.Get(ctx, s.markerKey)
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return "", false, err
	}
	if err := rec.Err(); err != nil {
		if errors.Is(err, redis.Nil) {
			err = mark.Err()
			if err == nil {
				return "", true, redis.Nil
			}
			if errors.Is(err, redis.Nil) {
				return "", false, redis.Nil
			}
		}
		return "", false, err
	}
	return rec.Val(), true, nil
}

// byKey resolves a digest and reads its record in one round trip. It
// returns redis.Nil when the index entry or the record is missing, and then
// whether the dataset marker is set.
func (s *Source) byKey(ctx context.Context, digest string) (subject, body string, marked bool, err error) {
	res, err := lookupByKeyScript.Run(ctx, s.client, []string{s.indexKey(digest), s.markerKey}, s.subjectPfx).StringSlice()
	if err != nil {
		return "", "", false, err
	}
	if len(res) != 2 {
		return "", "", len(res) == 1 && res[0] == "1", redis.Nil
	}
	return res[0], res[1], true, nil
}

// lookupByKeyScript: KEYS[1] the index entry, KEYS[2] the dataset marker;
// ARGV[1] the record key prefix. Returns {subject, record}, or when either
// is missing {"1"} if the marker is set, else {"0"}.
var lookupByKeyScript = redis.NewScript(`
local subject = redis.call('GET', KEYS[1])
if subject then
  local rec = redis.call('GET', ARGV[1] .. subject)
  if rec then return {subject, rec} end
end
-- GET, not EXISTS: scripts run under the caller's ACL, and a replica's
-- suggested user may only GET.
if redis.call('GET', KEYS[2]) then return {'1'} end
return {'0'}
`)

func (s *Source) fail(kind string, start time.Time, outcome string, cause error) error {
	s.obs.Call(kind, outcome, time.Since(start))
	if outcome == OutcomeTimeout {
		if !errors.Is(cause, context.DeadlineExceeded) {
			cause = fmt.Errorf("%w (%w)", context.DeadlineExceeded, cause)
		}
		cause = fmt.Errorf("no answer within %v: %w", s.timeout, cause)
	}
	return &LookupError{Kind: kind, Outcome: outcome, Err: cause}
}

// classify names a failed round trip's outcome. A caller that gave up says
// nothing about Redis; a timeout does.
func (s *Source) classify(parent context.Context, err error) string {
	if perr := parent.Err(); perr != nil && !errors.Is(perr, context.DeadlineExceeded) {
		return OutcomeCanceled
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return OutcomeTimeout
	}
	if strings.Contains(err.Error(), "WRONGTYPE") {
		return OutcomeInvalid
	}
	if notReady(err) {
		return OutcomeNotReady
	}
	return OutcomeError
}

// notReady reports a reply by which Redis says it cannot serve for now.
// Like every error it is never "not found": a Redis still loading its data
// knows nothing yet, and must not make every subject unknown.
func notReady(err error) bool {
	return redis.IsLoadingError(err) || redis.IsMasterDownError(err) || redis.IsTryAgainError(err) ||
		redis.IsClusterDownError(err) || redis.IsMaxClientsError(err) ||
		strings.HasPrefix(err.Error(), "BUSY ")
}

// normalize checks a key and returns its id as stored: digests lower-case.
func normalize(key entitlement.Key) (string, bool) {
	switch key.Kind {
	case entitlement.BySubject:
		return key.ID, key.ID != ""
	case entitlement.ByAPIKey:
		if !validDigest(key.ID) {
			return "", false
		}
		return strings.ToLower(key.ID), true
	}
	return "", false
}

// validDigest reports whether d is 64 hex digits (either case).
func validDigest(d string) bool {
	if len(d) != 64 {
		return false
	}
	_, err := hex.DecodeString(d)
	return err == nil
}

// decode parses and checks a stored record. Errors name the JSON field and
// never echo the value.
func decode(body, subject string) (*entitlement.Entitlement, error) {
	if len(body) > MaxRecordBytes {
		return nil, fmt.Errorf("record larger than %d KiB", MaxRecordBytes>>10)
	}
	e, err := entitlement.DecodeJSON([]byte(body))
	if err != nil {
		return nil, err
	}
	if e.Subject != subject {
		// Serving another subject's record would grant the wrong plan.
		return nil, errors.New(`"subject" is not the subject the key names`)
	}
	return e, nil
}
