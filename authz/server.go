package authz

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/quota"
	"github.com/tollgate-authz/tollgate/reservation"
)

// Entitlements is what the server needs from the entitlement cache.
type Entitlements interface {
	Get(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, entitlement.CacheOutcome, error)
}

// Quotas is what the server needs from the quota store.
type Quotas interface {
	Spend(ctx context.Context, group string, items []quota.Item, used []int64) (denied int, err error)
}

// Observer is told about every decision, for metrics.
type Observer interface {
	// ObserveCheck is told each decision. r is valid only during the call:
	// it is reused by the next Check, and so are its strings (DecisionID
	// shares memory the next Check overwrites): copy (strings.Clone) any
	// string you keep.
	ObserveCheck(r *Result)
	// ObserveQuota is told the outcome of each spend: allowed, exhausted or error.
	ObserveQuota(quota, outcome string)
}

// Deps are the server's collaborators. Entitlements is required; Quotas
// defaults to an in-memory store; the rest may be nil.
type Deps struct {
	Entitlements Entitlements
	Quotas       Quotas
	Observer     Observer
	Log          *slog.Logger
	Now          func() time.Time
	// MeteringClosed, when set and true, refuses requests on metered routes
	// with entitlements_unavailable: their usage could not be recorded
	// (the usage outbox is full and configured to refuse).
	MeteringClosed func() bool
	// Tracer, when set, traces every decided Check (see Tracer).
	Tracer Tracer
	// DecisionLog, when set, is the writer under Log's JSON handler:
	// decision lines are then encoded by hand and written to it directly,
	// byte for byte what the handler would write, at Log's level. It must
	// take a whole line per Write and be safe for concurrent use (serve
	// gives it its asynclog.Writer). Leave it nil when Log is not slog's
	// JSON handler over this writer, or has ReplaceAttr or AddSource.
	DecisionLog io.Writer
}

// ErrMeteringClosed is Result.Err for a metered request refused because
// its usage could not be recorded.
var ErrMeteringClosed = errors.New("usage outbox full: metered requests are refused (metering.outbox.when_full: refuse)")

// Result describes one decision, for metrics, the decision log and `tollgate check`.
type Result struct {
	RequestID string
	Code      policy.Code
	Status    int  // HTTP status Envoy sends on a denial; 200 on allow
	Allowed   bool // what Envoy was told (always true in shadow mode)
	Shadow    bool
	Route     string
	Subject   string
	Plan      string
	KeyID     string // first hex digits of an API key's digest, never the key
	CredFrom  string
	Cache     entitlement.CacheOutcome
	Looked    bool // an entitlement lookup happened (Cache is meaningful)
	Duration  time.Duration
	// Err is why the entitlements or the quota store gave no answer, for
	// entitlements_unavailable; nil otherwise. It is for the operator
	// (tollgate check prints it), never sent to the client.
	Err error
	now time.Time // the decision's clock reading, for reset times
	// DecisionID names this decision alone: sent to the client on a
	// denial, upstream on an allow, and in the decision log.
	DecisionID string
	// TraceID is the trace the Check belongs to, when tracing is on.
	TraceID string
	// Payer is the address that paid (x402), and Payment what it bought:
	// per_call, top_up, or retry (a payment-identifier's repeat).
	Payer, Payment string
	pay            paid // what the answer carries for the payment
}

// Server answers Envoy's Authorization/Check.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	rt     atomic.Pointer[Rules]
	ents   Entitlements
	quotas Quotas
	obs    Observer
	log    *slog.Logger
	now    func() time.Time
	// meteringClosed is Deps.MeteringClosed.
	meteringClosed func() bool
	tracer         Tracer // nil: no tracing
	// decisionLog is Deps.DecisionLog; nil: decision lines go through log.
	decisionLog io.Writer
	// checkInfo and checkHandler are what Register's handler passes to
	// interceptors, made once rather than on every Check.
	checkInfo    grpc.UnaryServerInfo
	checkHandler grpc.UnaryHandler
}

// NewServer builds a server.
func NewServer(rt *Rules, d Deps) *Server {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Quotas == nil {
		d.Quotas = quota.NewMemory(d.Now)
	}
	s := &Server{ents: d.Entitlements, quotas: d.Quotas, obs: d.Observer, log: d.Log, now: d.Now, meteringClosed: d.MeteringClosed, tracer: d.Tracer, decisionLog: d.DecisionLog}
	s.checkInfo = grpc.UnaryServerInfo{Server: s, FullMethod: authv3.Authorization_Check_FullMethodName}
	s.checkHandler = s.interceptedCheck
	s.rt.Store(rt)
	return s
}

// Swap installs new rules (after a config reload). Checks in flight
// finish with the rules they started with.
func (s *Server) Swap(rt *Rules) { s.rt.Store(rt) }

// Rules returns the rules in force.
func (s *Server) Rules() *Rules { return s.rt.Load() }

var _ authv3.AuthorizationServer = (*Server)(nil)

// Check implements authv3.AuthorizationServer. It never returns an error for
// a refusal, and it recovers from a panic in any stage with a well-formed 503
// rather than a broken stream.
func (s *Server) Check(ctx context.Context, cr *authv3.CheckRequest) (resp *authv3.CheckResponse, err error) {
	resp, _ = s.Decide(ctx, cr)
	return resp, nil
}

// Request is one Check: the part of its CheckRequest the server reads (see
// request) and the Check's working memory. Register's handler takes one from
// a pool for every Check, has Codec decode the request's bytes into it, and
// hands it to interceptors as req (see Shed); Decide does the same from a
// message. Pooling it keeps the view, the Result and the spend buffers off
// the heap: each would otherwise escape on every Check (the view through the
// identity interface, the Result through the Observer). A Request is reused
// once its Check is answered: nothing may keep it.
type Request struct {
	r      request
	res    Result
	spends [maxSpends]policy.Spend
	items  [maxSpends]quota.Item
	used   [maxSpends]int64
	// reuse says the answer is built in allowOut or denyOut below rather
	// than in new messages: serve sets it, since it encodes the answer
	// before the Request is released. Decide leaves it false: its answer
	// outlives the Request.
	reuse    bool
	allowOut allowResponse
	denyOut  denyResponse
	// keys holds the counters' keys of this Check's spends (items[i].Key
	// shares its memory: the stores copy a key they keep, see quota.Item).
	keys []byte
}

// allowBlock is where q's allow is built: its own block when the answer
// is encoded before q is released (see reuse), otherwise a new one.
func (q *Request) allowBlock() *allowResponse {
	if q.reuse {
		return &q.allowOut
	}
	return new(allowResponse)
}

// denyBlock is allowBlock for a refusal.
func (q *Request) denyBlock() *denyResponse {
	if q.reuse {
		return &q.denyOut
	}
	return new(denyResponse)
}

var requests = sync.Pool{New: func() any { return new(Request) }}

// maxPooledKeys bounds the key storage a pooled Request keeps.
const maxPooledKeys = 1 << 10

// maxPooledHeaders bounds the header storage a pooled Request keeps, so
// that one huge request does not pin its size in the pool.
const maxPooledHeaders = 256

// release returns q to the pool, dropping its references to the request.
func (q *Request) release() {
	if cap(q.r.headers) > maxPooledHeaders {
		q.r.headers = nil
	}
	q.r.reset()
	q.res = Result{}
	q.reuse = false
	if cap(q.keys) > maxPooledKeys {
		q.keys = nil
	}
	requests.Put(q)
}

// Decide runs one Check and also returns its Result. The response shares
// messages with other responses (templates, constant metadata values):
// read it, never modify it.
func (s *Server) Decide(ctx context.Context, cr *authv3.CheckRequest) (*authv3.CheckResponse, Result) {
	q := requests.Get().(*Request)
	q.r.fromProto(cr)
	resp, res := s.decideRequest(ctx, q)
	q.release()
	return resp, res
}

// decideRequest is Decide on a filled Request. It recovers from a panic in
// any stage with a well-formed 503.
func (s *Server) decideRequest(ctx context.Context, q *Request) (resp *authv3.CheckResponse, res Result) {
	start := s.now()
	rt := s.rt.Load()
	r, sr := &q.r, &q.res
	if s.tracer != nil {
		ctx, sr.TraceID = s.tracer.StartCheck(ctx, r)
	}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in Check", "panic", p, "request_id", r.requestID, "trace_id", sr.TraceID)
			*sr = Result{RequestID: r.requestID, TraceID: sr.TraceID, Code: policy.EntitlementsUnavailable, Err: fmt.Errorf("panic in Check: %v", p)}
			d := policy.Decision{Code: policy.EntitlementsUnavailable}
			resp = rt.deny(r, &d, sr, q.denyBlock())
			if s.tracer != nil {
				s.tracer.EndCheck(ctx, sr)
			}
		}
		res = *sr
	}()

	sr.RequestID, sr.now = r.requestID, start
	d := s.decide(ctx, rt, q, start)
	sr.Code = d.Code
	if d.Route != nil {
		sr.Route = d.Route.Name
	}
	if e := d.Entitlement; e != nil {
		sr.Subject, sr.Plan = e.Subject, e.Plan
	}

	switch {
	case d.Allowed():
		sr.Allowed, sr.Status = true, 200
		resp = rt.allow(r, &d, sr, q.allowBlock())
	case rt.opts.Shadow:
		sr.Allowed, sr.Shadow, sr.Status = true, true, rt.status.Status(d.Code)
		resp = rt.allow(r, &d, sr, q.allowBlock())
	default:
		sr.Status = rt.status.Status(d.Code)
		resp = rt.deny(r, &d, sr, q.denyBlock())
	}
	sr.Duration = s.now().Sub(start)
	if s.obs != nil {
		s.obs.ObserveCheck(sr)
	}
	s.logDecision(ctx, rt, r, sr)
	if s.tracer != nil {
		s.tracer.EndCheck(ctx, sr)
	}
	return resp, res
}

func (s *Server) decide(ctx context.Context, rt *Rules, q *Request, now time.Time) policy.Decision {
	r, res := &q.r, &q.res
	route := rt.policy.Match(&policy.Request{
		Host: r.host(), Method: r.method(), Path: r.path(), ContextExtensions: r.contextExtensions(),
	})
	if route == nil {
		return policy.Decision{Code: policy.RouteNotAllowed}
	}
	if route.Public {
		return policy.Decision{Code: policy.OK, Route: route}
	}
	if route.Meter != nil && s.meteringClosed != nil && s.meteringClosed() {
		res.Err = ErrMeteringClosed
		return policy.Decision{Code: policy.EntitlementsUnavailable, Route: route}
	}
	// Shadow mode takes no money: it decides, logs and allows.
	if g := rt.opts.Payments; g != nil && !rt.opts.Shadow && g.Payable(route) {
		if h, v1, ok := paymentHeader(r); ok {
			return s.decidePaid(ctx, rt, q, route, h, v1)
		}
	}
	cred := rt.identity.Extract(r)
	res.CredFrom, res.KeyID = cred.From, cred.KeyID()
	if cred.Kind == identity.None {
		if route.Price != "" && rt.opts.Payments != nil {
			return policy.Decision{Code: policy.PaymentRequired, Route: route}
		}
		return policy.Decision{Code: policy.MissingCredentials, Route: route}
	}
	ent, code := s.lookup(ctx, &cred, res)
	if code != policy.OK {
		return policy.Decision{Code: code, Route: route}
	}
	d := rt.policy.Decide(route, ent, now)
	if d.Allowed() {
		s.spend(ctx, rt, q, &d, now)
	}
	return d
}

// lookup finds the record a credential names, or says why not:
// invalid_credentials (unusable or unknown) or entitlements_unavailable
// (res.Err says why).
func (s *Server) lookup(ctx context.Context, cred *identity.Credential, res *Result) (*entitlement.Entitlement, policy.Code) {
	var key entitlement.Key
	switch cred.Kind {
	case identity.APIKey:
		key = entitlement.Key{Kind: entitlement.ByAPIKey, ID: cred.Value}
	case identity.Subject:
		key = entitlement.Key{Kind: entitlement.BySubject, ID: cred.Value}
	default:
		return nil, policy.InvalidCredentials
	}
	ent, outcome, err := s.ents.Get(ctx, key)
	res.Cache, res.Looked = outcome, true
	switch {
	case errors.Is(err, entitlement.ErrNotFound):
		return nil, policy.InvalidCredentials
	case err != nil:
		res.Err = err
		return nil, policy.EntitlementsUnavailable
	}
	return ent, policy.OK
}

// maxSpends is how many counters a request usually spends on without allocating.
const maxSpends = 4

// spend charges the request's quotas and credits, all or nothing. A refused
// request consumes nothing.
func (s *Server) spend(ctx context.Context, rt *Rules, q *Request, d *policy.Decision, now time.Time) {
	r := &q.r
	spends := rt.policy.Spends(d.Route, d.Entitlement, now, r, r.contextExtensions(), q.spends[:0])
	if len(spends) == 0 {
		return
	}
	items, keys := q.items[:0], q.keys[:0]
	for i := range spends {
		sp := &spends[i]
		start := len(keys)
		keys = quota.AppendKey(keys, d.Entitlement.Subject, sp.Counter, sp.Start)
		items = append(items, quota.Item{
			// The key shares keys' memory, which the next Check this
			// Request serves overwrites (or a larger array replaces).
			Key: unsafe.String(&keys[start], len(keys)-start), Cost: sp.Cost, Limit: sp.Limit, Reset: sp.Reset,
			FailOpen: sp.FailOpen,
		})
	}
	q.keys = keys
	used := q.used[:]
	if len(items) > len(used) {
		used = make([]int64, len(items))
	}
	used = used[:len(items)]
	clear(used)
	// A cost that can never fit is refused before any counter is asked.
	if i := policy.FirstTooLarge(spends); i >= 0 {
		d.Spends, d.Used, d.Denied, d.Code = spends, used, i, policy.CostTooLarge
		if s.obs != nil {
			s.obs.ObserveQuota(spends[i].Quota, "too_large")
		}
		return
	}
	denied, err := s.quotas.Spend(ctx, d.Entitlement.Subject, items, used)
	d.Spends, d.Used, d.Denied = spends, used, denied
	switch {
	case err != nil:
		d.Code = policy.EntitlementsUnavailable
		q.res.Err = err
		s.observeQuota(spends, "error")
	case denied >= 0:
		d.Code = spends[denied].DenialCode()
		if s.obs != nil {
			s.obs.ObserveQuota(spends[denied].Quota, "exhausted")
		}
	default:
		s.observeQuota(spends, "allowed")
	}
}

func (s *Server) observeQuota(spends []policy.Spend, outcome string) {
	if s.obs == nil {
		return
	}
	for i := range spends {
		s.obs.ObserveQuota(spends[i].Quota, outcome)
	}
}

var okStatus = &rpcstatus.Status{}

// allowResponse is an OK CheckResponse and every message it points to, in
// one block rather than one allocation per message. Its parts are never
// shared. A block is either new for one answer, or a Request's, reused by
// every Check that Request serves (see Request.reuse): allow resets it,
// keeping only storage that the next answer refills (the metadata map, the
// removal list's array).
type allowResponse struct {
	resp   authv3.CheckResponse
	ok     authv3.CheckResponse_OkResponse
	http   authv3.OkHttpResponse
	set    [3]*corev3.HeaderValueOption // trusted headers upstream
	rl     [2]*corev3.HeaderValueOption // RateLimit fields to the client
	hdrs   headerBlock
	md     metadataBlock
	id     decisionID
	remove []string // HeadersToRemove's array, kept across resets
	rlBuf  [192]byte
}

// reset clears a for the next answer, keeping its reusable storage.
func (a *allowResponse) reset() {
	fields, remove := a.md.fields, a.remove
	clear(remove[:cap(remove)]) // no strings of the last request kept alive
	if cap(remove) > maxPooledRemovals {
		remove = nil
	}
	*a = allowResponse{}
	a.md.fields, a.remove = fields, remove[:0]
}

// maxPooledRemovals bounds the removal list a reused block keeps, so that
// one request with a flood of prefixed headers does not pin its size.
const maxPooledRemovals = 32

// headerBlock holds the header messages of one response.
type headerBlock struct {
	opts [5]corev3.HeaderValueOption
	vals [5]corev3.HeaderValue
	n    int
}

// overwrite is the package's overwrite, built in the block.
func (b *headerBlock) overwrite(k, v string) *corev3.HeaderValueOption {
	o, hv := &b.opts[b.n], &b.vals[b.n]
	b.n++
	hv.Key, hv.Value = k, v
	o.Header, o.AppendAction = hv, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	return o
}

// allow builds the OK response: trusted headers upstream with explicit
// overwrite, and every client-sent header with our prefix removed.
func (rt *Rules) allow(r *request, d *policy.Decision, res *Result, a *allowResponse) *authv3.CheckResponse {
	a.reset()
	ok := &a.http
	ok.HeadersToRemove = a.remove
	res.DecisionID = a.id.fill()
	a.set[0] = a.hdrs.overwrite(rt.idHeader, res.DecisionID)
	ok.Headers = a.set[:1]
	if res.Subject != "" {
		a.set[1] = a.hdrs.overwrite(rt.opts.SubjectHeader, res.Subject)
		a.set[2] = a.hdrs.overwrite(rt.opts.PlanHeader, res.Plan)
		ok.Headers = a.set[:3]
	}
	r.eachHeaderName(func(name string) {
		if len(name) >= len(rt.lowerPfx) && strings.EqualFold(name[:len(rt.lowerPfx)], rt.lowerPfx) {
			// Headers we set are overwritten anyway; removing them too would
			// race with the set, depending on Envoy's order of operations.
			if strings.EqualFold(name, rt.idHeader) ||
				res.Subject != "" && (strings.EqualFold(name, rt.opts.SubjectHeader) || strings.EqualFold(name, rt.opts.PlanHeader)) {
				return
			}
			ok.HeadersToRemove = append(ok.HeadersToRemove, name)
		}
	})
	a.remove = ok.HeadersToRemove
	if len(ok.HeadersToRemove) == 0 {
		ok.HeadersToRemove = nil
	}
	if len(d.Spends) > 0 && !res.Shadow {
		if pol, cur := rateLimitFields(a.rlBuf[:0], d, res.now); pol != "" {
			a.rl[0] = a.hdrs.overwrite("ratelimit-policy", pol)
			a.rl[1] = a.hdrs.overwrite("ratelimit", cur)
			ok.ResponseHeadersToAdd = a.rl[:]
		}
	}
	a.ok.OkResponse = ok
	a.resp.Status = okStatus
	a.resp.HttpResponse = &a.ok
	a.resp.DynamicMetadata = a.md.fill(res)
	if d.Allowed() && d.Route != nil && d.Route.Meter != nil && rt.opts.Reservations != nil {
		a.resp.DynamicMetadata.Fields[ReservationKey] = structpb.NewStringValue(rt.opts.Reservations.Sign(reserve(r, d, res)))
	}
	if res.Payment != "" {
		rt.paidAllow(ok, a.resp.DynamicMetadata, &res.pay)
	}
	return &a.resp
}

// ReservationKey is the dynamic metadata key (in the ext_authz filter's
// namespace) of a metered request's reservation token.
const ReservationKey = "reservation"

// reserve is what an allowed metered request reserved: the route's own
// spend (the last, see policy.Spends), or none when it spends no quota.
func reserve(r *request, d *policy.Decision, res *Result) *reservation.Reservation {
	e := d.Entitlement
	rv := &reservation.Reservation{
		// The decision id, never the client-settable x-request-id: two
		// requests sent with one request id must be two reservations, or
		// the second would settle as a duplicate, unbilled.
		ID: res.DecisionID, Subject: e.Subject, Customer: e.Customer, Route: d.Route.Name, Meter: d.Route.Meter.Event,
		Estimate: d.Route.Cost, Start: res.now.UnixMilli(),
	}
	if rv.ID == "" {
		rv.ID = reservation.NewID()
	}
	if n := len(d.Spends); n > 0 && d.Route.Quota != "" {
		sp := &d.Spends[n-1]
		rv.Estimate = max(sp.Cost, 0)
		rv.Counter = quota.Key(e.Subject, sp.Counter, sp.Start)
		rv.Reset = sp.Reset.Unix()
	}
	return rv
}

// denyResponse is a refusal and the messages it points to, in one block
// (new, or a Request's and reused: see allowResponse). Its strings (the
// gRPC message, the problem body, the quota headers' values) are written
// into text, whose array a reused block keeps.
type denyResponse struct {
	resp   authv3.CheckResponse
	status rpcstatus.Status
	denied authv3.CheckResponse_DeniedResponse
	http   authv3.DeniedHttpResponse
	md     metadataBlock
	id     decisionID
	idOpt  corev3.HeaderValueOption
	idVal  corev3.HeaderValue
	hs     [8]*corev3.HeaderValueOption // the template's, the id, a quota's
	quota  quotaHeaders
	text   []byte
}

// maxPooledText bounds the text array a reused block keeps: a rare huge
// body (a long offer list) does not stay pinned.
const maxPooledText = 4 << 10

// reset clears x for the next answer, keeping its reusable storage.
func (x *denyResponse) reset() {
	fields, text := x.md.fields, x.text[:0]
	if cap(text) > maxPooledText {
		text = nil
	}
	*x = denyResponse{}
	x.md.fields, x.text = fields, text
}

// since returns what was appended to x.text from start on, as a string
// sharing its memory. Later appends never write there: they add after it,
// or move to a new array and leave this one as it is.
func (x *denyResponse) since(start int) string {
	if len(x.text) == start {
		return ""
	}
	return unsafe.String(&x.text[start], len(x.text)-start)
}

// deny builds the refusal: problem+json with the members that apply.
func (rt *Rules) deny(r *request, d *policy.Decision, res *Result, x *denyResponse) *authv3.CheckResponse {
	x.reset()
	if x.text == nil {
		x.text = make([]byte, 0, 512) // room for most refusals' strings
	}
	t := &rt.tmpl[d.Code]
	res.DecisionID = x.id.fill()
	detail := rt.detail(r, d, res.now)
	if pd := rt.paymentDetail(d, res); pd != "" {
		detail = pd
	}
	start := len(x.text)
	x.text = append(append(append(x.text, d.Code.String()...), ": "...), detail...)
	msg := x.since(start)
	var body string
	headers := x.hs[:0]
	pc, payable := rt.paymentChallenge(r, d, res, detail)
	if r.isGRPC() {
		// Envoy ignores Status.Code for a gRPC client and would map 402 to
		// UNKNOWN and send the JSON as grpc-message: see grpcdeny.go.
		headers, body = append(headers, t.grpc...), msg
	} else {
		start = len(x.text)
		x.text = rt.appendProblem(x.text, r, d, t, detail, res, &pc)
		headers, body = append(headers, t.headers...), x.since(start)
	}
	if payable {
		headers = append(headers, overwrite("payment-required", pc.header))
		if h := pc.mppHeader(); h != nil {
			headers = append(headers, h)
		}
	}
	if h := receiptHeader(&res.pay); h != nil {
		headers = append(headers, h)
	}
	x.idVal.Key, x.idVal.Value = DecisionIDHeader, res.DecisionID
	x.idOpt.Header, x.idOpt.AppendAction = &x.idVal, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	headers = append(headers, &x.idOpt)
	if sp, _ := d.DeniedSpend(); sp != nil {
		headers = append(headers, x.quotaDenialHeaders(d, sp, res.now)...)
	}
	x.status.Code, x.status.Message = int32(t.grpcCode), msg
	x.http.Status, x.http.Headers, x.http.Body = t.httpStatus, headers, body
	x.denied.DeniedResponse = &x.http
	x.resp.Status = &x.status
	x.resp.HttpResponse = &x.denied
	x.resp.DynamicMetadata = x.md.fill(res)
	return &x.resp
}

// appendProblem appends RFC 9457 problem details to b; members appear in
// a fixed order.
func (rt *Rules) appendProblem(b []byte, r *request, d *policy.Decision, t *template, detail string, res *Result, pc *challenge) []byte {
	o := newJSONObject(b)
	o.str("type", t.typeURI)
	o.str("title", t.title)
	o.int("status", int64(t.status))
	o.str("detail", detail)
	o.strIf("instance", r.pathOnly())
	o.str("code", d.Code.String())
	o.strIf("request_id", r.requestID)
	if e := d.Entitlement; e != nil {
		o.str("subject", e.Subject)
		o.str("plan", e.Plan)
	}
	if d.Feature != "" {
		o.str("feature", d.Feature)
		o.strs("plans_with_feature", d.PlansWithFeature)
	}
	if sp, used := d.DeniedSpend(); sp != nil {
		if sp.Credits {
			o.int("credits", max(sp.Limit-used, 0))
			o.int("cost", sp.Cost)
		} else {
			o.str("quota", sp.Quota)
			o.int("limit", sp.Limit)
			o.int("used", used)
			o.int("cost", sp.Cost)
			o.key("resets_at")
			o.b = append(sp.Reset.UTC().AppendFormat(append(o.b, '"'), time.RFC3339), '"')
		}
	}
	if sp := d.TooLargeSpend(); sp != nil {
		o.str("quota", sp.Quota)
		if !sp.Credits {
			o.int("limit", sp.Limit)
		}
		o.int("cost", sp.Cost)
		if sp.MaxCost > 0 {
			o.int("max_cost", sp.MaxCost)
		}
	}
	if d.Entitlement != nil {
		o.strIf("upgrade_url", d.UpgradeURL)
	}
	if len(pc.x402) > 0 {
		o.raw("offers", pc.offers)
		o.raw("x402", pc.x402)
	}
	o.str("decision_id", res.DecisionID)
	return o.bytes()
}

// detail is one human sentence saying what happened and what to do.
func (rt *Rules) detail(r *request, d *policy.Decision, now time.Time) string {
	switch d.Code {
	case policy.MissingCredentials:
		return rt.missing
	case policy.InvalidCredentials:
		return "The credentials sent are not recognised."
	case policy.SubscriptionInactive:
		e := d.Entitlement
		if e != nil && (e.Status == entitlement.StatusActive || e.Status == entitlement.StatusTrialing) {
			return "The subscription's billing period has ended; renew it to restore access."
		}
		return "The subscription is " + string(statusOf(e)) + "; renew it to restore access."
	case policy.PaymentFailed:
		return "The subscription is " + string(statusOf(d.Entitlement)) + " because a payment failed; update the payment method to restore access."
	case policy.FeatureNotInPlan:
		plan := "your"
		if d.Entitlement != nil {
			plan = "the " + d.Entitlement.Plan
		}
		s := "The " + d.Feature + " feature is not included in " + plan + " plan"
		if len(d.PlansWithFeature) > 0 {
			return s + "; it is available on " + strings.Join(d.PlansWithFeature, ", ") + "."
		}
		return s + "."
	case policy.RouteNotAllowed:
		return "No API route matches " + r.method() + " " + r.pathOnly() + "."
	case policy.EntitlementsUnavailable:
		return "Entitlements could not be checked right now; retry shortly."
	case policy.CostTooLarge:
		if sp := d.TooLargeSpend(); sp != nil {
			return costTooLargeDetail(sp)
		}
	}
	if sp, used := d.DeniedSpend(); sp != nil {
		return quotaDetail(d.Code, sp, used, now)
	}
	return "The request was refused."
}

// quotaDetail explains a quota, rate-limit or credits refusal.
func quotaDetail(c policy.Code, sp *policy.Spend, used int64, now time.Time) string {
	limit := strconv.FormatInt(sp.Limit, 10)
	switch c {
	case policy.RateLimited:
		return "Too many requests: the " + sp.Quota + " limit is " + limit + " per " +
			sp.Period.String() + "; retry after " + strconv.FormatInt(retryAfter(sp.Reset, now), 10) + " s."
	case policy.InsufficientCredits:
		return "This request costs " + strconv.FormatInt(sp.Cost, 10) + " credits and " +
			strconv.FormatInt(max(sp.Limit-used, 0), 10) + " remain; top up to continue."
	}
	return "The " + sp.Quota + " quota of " + limit + " per " + sp.Period.String() +
		" is spent; it resets at " + sp.Reset.UTC().Format(time.RFC3339) + "."
}

// costTooLargeDetail says why a cost can never be admitted.
func costTooLargeDetail(sp *policy.Spend) string {
	cost := strconv.FormatInt(sp.Cost, 10)
	if sp.MaxCost > 0 && sp.Cost > sp.MaxCost {
		return "This request costs " + cost + ", more than the most one request may cost (" +
			strconv.FormatInt(sp.MaxCost, 10) + "); split it into smaller requests."
	}
	return "This request costs " + cost + ", more than the whole " + sp.Quota + " quota of " +
		strconv.FormatInt(sp.Limit, 10) + " per " + sp.Period.String() + "; split it, or upgrade for a larger quota."
}

func statusOf(e *entitlement.Entitlement) entitlement.Status {
	if e == nil {
		return "inactive"
	}
	return e.Status
}

// metadataBlock is a response's dynamic metadata and its values, allocated
// with the response.
type metadataBlock struct {
	st   structpb.Struct
	vals [4]structpb.Value // route, subject, plan, decision_id
	strs [4]structpb.Value_StringValue
	// fields is st.Fields, kept when the block is reset (cleared, not
	// made again) so that a reused block's map costs no allocation.
	fields map[string]*structpb.Value
}

// Values every response shares; a shared message is never modified.
var (
	allowValue  = structpb.NewStringValue("allow")
	denyValue   = structpb.NewStringValue("deny")
	shadowValue = structpb.NewBoolValue(true)
	codeValues  = func() []*structpb.Value {
		vs := make([]*structpb.Value, len(policy.Codes))
		for _, c := range policy.Codes {
			vs[c] = structpb.NewStringValue(c.String())
		}
		return vs
	}()
)

// fill sets what Envoy puts in dynamic metadata under
// envoy.filters.http.ext_authz, for its access log, and returns it.
func (m *metadataBlock) fill(res *Result) *structpb.Struct {
	decision := denyValue
	if res.Allowed && !res.Shadow {
		decision = allowValue
	}
	var code *structpb.Value
	if int(res.Code) < len(codeValues) {
		code = codeValues[res.Code]
	} else {
		code = structpb.NewStringValue(res.Code.String())
	}
	f := m.fields
	if f == nil {
		f = make(map[string]*structpb.Value, 7)
		m.fields = f
	} else {
		clear(f)
	}
	f["decision"], f["code"] = decision, code
	if res.DecisionID != "" {
		f["decision_id"] = m.str(3, res.DecisionID)
	}
	if res.Route != "" {
		f["route"] = m.str(0, res.Route)
	}
	if res.Subject != "" {
		f["subject"] = m.str(1, res.Subject)
		f["plan"] = m.str(2, res.Plan)
	}
	if res.Shadow {
		f["shadow"] = shadowValue
	}
	m.st.Fields = f
	return &m.st
}

func (m *metadataBlock) str(i int, s string) *structpb.Value {
	m.strs[i].StringValue = s
	m.vals[i].Kind = &m.strs[i]
	return &m.vals[i]
}

// logDecision writes denials always and allows at the sampled rate. It never
// logs a credential: only the extractor name and a digest prefix.
func (s *Server) logDecision(ctx context.Context, rt *Rules, r *request, res *Result) {
	if res.Allowed && !res.Shadow {
		if rt.opts.AllowSampleRate <= 0 || (rt.opts.AllowSampleRate < 1 && rand.Float64() >= rt.opts.AllowSampleRate) {
			return
		}
	}
	if !s.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	method, path := r.method(), r.pathOnly()
	if s.decisionLog != nil && s.writeDecision(res, method, path) {
		return
	}
	// A handler may keep the record (an asynchronous or exporting one
	// does), and the decision id shares memory with the answer's block,
	// which the next Check this Request serves overwrites.
	kept := *res
	kept.DecisionID = strings.Clone(res.DecisionID)
	s.log.LogAttrs(ctx, slog.LevelInfo, "decision", decisionAttrs(make([]slog.Attr, 0, 16), &kept, method, path)...)
}
