package authz

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/quota"
)

// Entitlements is what the server needs from the entitlement cache.
type Entitlements interface {
	Get(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, cache.Outcome, error)
}

// Quotas is what the server needs from the quota store.
type Quotas interface {
	Spend(ctx context.Context, group string, items []quota.Item, used []int64) (denied int, err error)
}

// Observer is told about every decision, for metrics.
type Observer interface {
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
}

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
	Cache     cache.Outcome
	Looked    bool // an entitlement lookup happened (Cache is meaningful)
	Duration  time.Duration
	now       time.Time // the decision's clock reading, for reset times
}

// Server answers Envoy's Authorization/Check.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	rt     atomic.Pointer[Runtime]
	ents   Entitlements
	quotas Quotas
	obs    Observer
	log    *slog.Logger
	now    func() time.Time
}

// NewServer builds a server.
func NewServer(rt *Runtime, d Deps) *Server {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Quotas == nil {
		d.Quotas = quota.NewMemory(d.Now)
	}
	s := &Server{ents: d.Entitlements, quotas: d.Quotas, obs: d.Observer, log: d.Log, now: d.Now}
	s.rt.Store(rt)
	return s
}

// Swap installs a new runtime (after a config reload). Checks in flight
// finish with the runtime they started with.
func (s *Server) Swap(rt *Runtime) { s.rt.Store(rt) }

// Runtime returns the runtime in force.
func (s *Server) Runtime() *Runtime { return s.rt.Load() }

var _ authv3.AuthorizationServer = (*Server)(nil)

// Check implements authv3.AuthorizationServer. It never returns an error for
// a refusal, and it recovers from a panic in any stage with a well-formed 503
// rather than a broken stream.
func (s *Server) Check(ctx context.Context, cr *authv3.CheckRequest) (resp *authv3.CheckResponse, err error) {
	resp, _ = s.Decide(ctx, cr)
	return resp, nil
}

// Decide runs one Check and also returns its Result.
func (s *Server) Decide(ctx context.Context, cr *authv3.CheckRequest) (resp *authv3.CheckResponse, res Result) {
	start := s.now()
	rt := s.rt.Load()
	r := newRequest(cr)
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in Check", "panic", p, "request_id", r.requestID)
			res = Result{RequestID: r.requestID, Code: policy.EntitlementsUnavailable}
			d := policy.Decision{Code: policy.EntitlementsUnavailable}
			resp = rt.deny(&r, &d, &res)
		}
	}()

	res.RequestID, res.now = r.requestID, start
	d := s.decide(ctx, rt, &r, &res, start)
	res.Code = d.Code
	if d.Route != nil {
		res.Route = d.Route.Name
	}
	if e := d.Entitlement; e != nil {
		res.Subject, res.Plan = e.Subject, e.Plan
	}

	switch {
	case d.Allowed():
		res.Allowed, res.Status = true, 200
		resp = rt.allow(&r, &d, &res)
	case rt.opts.Shadow:
		res.Allowed, res.Shadow, res.Status = true, true, rt.status.Status(d.Code)
		resp = rt.allow(&r, &d, &res)
	default:
		res.Status = rt.status.Status(d.Code)
		resp = rt.deny(&r, &d, &res)
	}
	res.Duration = s.now().Sub(start)
	if s.obs != nil {
		s.obs.ObserveCheck(&res)
	}
	s.logDecision(ctx, rt, &r, &res)
	return resp, res
}

func (s *Server) decide(ctx context.Context, rt *Runtime, r *request, res *Result, now time.Time) policy.Decision {
	route := rt.policy.Match(&policy.Request{
		Host: r.host(), Method: r.method(), Path: r.path(), ContextExtensions: r.contextExtensions(),
	})
	if route == nil {
		return policy.Decision{Code: policy.RouteNotAllowed}
	}
	if route.Public {
		return policy.Decision{Code: policy.OK, Route: route}
	}
	cred := rt.identity.Extract(r)
	res.CredFrom, res.KeyID = cred.From, cred.KeyID()
	var key entitlement.Key
	switch cred.Kind {
	case identity.None:
		return policy.Decision{Code: policy.MissingCredentials, Route: route}
	case identity.APIKey:
		key = entitlement.Key{Kind: entitlement.ByAPIKey, ID: cred.Value}
	case identity.Subject:
		key = entitlement.Key{Kind: entitlement.BySubject, ID: cred.Value}
	default:
		return policy.Decision{Code: policy.InvalidCredentials, Route: route}
	}
	ent, outcome, err := s.ents.Get(ctx, key)
	res.Cache, res.Looked = outcome, true
	switch {
	case errors.Is(err, entitlement.ErrNotFound):
		return policy.Decision{Code: policy.InvalidCredentials, Route: route}
	case err != nil:
		return policy.Decision{Code: policy.EntitlementsUnavailable, Route: route}
	}
	d := rt.policy.Decide(route, ent, now)
	if d.Allowed() {
		s.spend(ctx, rt, r, &d, now)
	}
	return d
}

// maxSpends is how many counters a request usually spends on without allocating.
const maxSpends = 4

// spend charges the request's quotas and credits, all or nothing. A refused
// request consumes nothing.
func (s *Server) spend(ctx context.Context, rt *Runtime, r *request, d *policy.Decision, now time.Time) {
	var sbuf [maxSpends]policy.Spend
	spends := rt.policy.Spends(d.Route, d.Entitlement, now, r, r.contextExtensions(), sbuf[:0])
	if len(spends) == 0 {
		return
	}
	var ibuf [maxSpends]quota.Item
	items := ibuf[:0]
	for i := range spends {
		sp := &spends[i]
		items = append(items, quota.Item{
			Key: quota.Key(d.Entitlement.Subject, sp.Counter, sp.Start), Cost: sp.Cost, Limit: sp.Limit, Reset: sp.Reset,
			FailOpen: sp.FailOpen,
		})
	}
	used := make([]int64, len(items))
	denied, err := s.quotas.Spend(ctx, d.Entitlement.Subject, items, used)
	d.Spends, d.Used, d.Denied = spends, used, denied
	switch {
	case err != nil:
		d.Code = policy.EntitlementsUnavailable
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

// allow builds the OK response: trusted headers upstream with explicit
// overwrite, and every client-sent header with our prefix removed.
func (rt *Runtime) allow(r *request, d *policy.Decision, res *Result) *authv3.CheckResponse {
	ok := &authv3.OkHttpResponse{}
	if res.Subject != "" {
		ok.Headers = []*corev3.HeaderValueOption{
			overwrite(rt.opts.SubjectHeader, res.Subject),
			overwrite(rt.opts.PlanHeader, res.Plan),
		}
	}
	r.eachHeaderName(func(name string) {
		if len(name) >= len(rt.lowerPfx) && strings.EqualFold(name[:len(rt.lowerPfx)], rt.lowerPfx) {
			// Headers we set are overwritten anyway; removing them too would
			// race with the set, depending on Envoy's order of operations.
			if res.Subject != "" && (strings.EqualFold(name, rt.opts.SubjectHeader) || strings.EqualFold(name, rt.opts.PlanHeader)) {
				return
			}
			ok.HeadersToRemove = append(ok.HeadersToRemove, name)
		}
	})
	if len(d.Spends) > 0 && !res.Shadow {
		ok.ResponseHeadersToAdd = rateLimitHeaders(d, res.now)
	}
	return &authv3.CheckResponse{
		Status:          okStatus,
		HttpResponse:    &authv3.CheckResponse_OkResponse{OkResponse: ok},
		DynamicMetadata: metadata(res),
	}
}

// deny builds the refusal: problem+json with the members that apply.
func (rt *Runtime) deny(r *request, d *policy.Decision, res *Result) *authv3.CheckResponse {
	t := &rt.tmpl[d.Code]
	detail := rt.detail(r, d, res.now)
	msg := d.Code.String() + ": " + detail
	var headers []*corev3.HeaderValueOption
	var body string
	if r.isGRPC() {
		// Envoy ignores Status.Code for a gRPC client and would map 402 to
		// UNKNOWN and send the JSON as grpc-message: see grpcdeny.go.
		headers, body = t.grpc, msg
	} else {
		headers, body = t.headers, string(rt.problem(r, d, t, detail, res.now))
	}
	if sp, _ := d.DeniedSpend(); sp != nil {
		headers = append(append([]*corev3.HeaderValueOption(nil), headers...), quotaDenialHeaders(d, sp, res.now)...)
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(t.grpcCode), Message: msg},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(t.status)},
			Headers: headers,
			Body:    body,
		}},
		DynamicMetadata: metadata(res),
	}
}

// problem renders RFC 9457 problem details; members appear in a fixed order.
func (rt *Runtime) problem(r *request, d *policy.Decision, t *template, detail string, now time.Time) []byte {
	o := jsonObject{b: make([]byte, 0, 512)}
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
			o.str("resets_at", sp.Reset.UTC().Format(time.RFC3339))
		}
	}
	if d.Entitlement != nil {
		o.strIf("upgrade_url", d.UpgradeURL)
	}
	return o.bytes()
}

// detail is one human sentence saying what happened and what to do.
func (rt *Runtime) detail(r *request, d *policy.Decision, now time.Time) string {
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

func statusOf(e *entitlement.Entitlement) entitlement.Status {
	if e == nil {
		return "inactive"
	}
	return e.Status
}

// metadata is what Envoy puts in dynamic metadata under
// envoy.filters.http.ext_authz, for its access log.
func metadata(res *Result) *structpb.Struct {
	decision := "deny"
	if res.Allowed && !res.Shadow {
		decision = "allow"
	}
	f := map[string]*structpb.Value{
		"decision": structpb.NewStringValue(decision),
		"code":     structpb.NewStringValue(res.Code.String()),
	}
	if res.Route != "" {
		f["route"] = structpb.NewStringValue(res.Route)
	}
	if res.Subject != "" {
		f["subject"] = structpb.NewStringValue(res.Subject)
		f["plan"] = structpb.NewStringValue(res.Plan)
	}
	if res.Shadow {
		f["shadow"] = structpb.NewBoolValue(true)
	}
	return &structpb.Struct{Fields: f}
}

// logDecision writes denials always and allows at the sampled rate. It never
// logs a credential: only the extractor name and a digest prefix.
func (s *Server) logDecision(ctx context.Context, rt *Runtime, r *request, res *Result) {
	if res.Allowed && !res.Shadow {
		if rt.opts.AllowSampleRate <= 0 || (rt.opts.AllowSampleRate < 1 && rand.Float64() >= rt.opts.AllowSampleRate) {
			return
		}
	}
	if !s.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	decision := "deny"
	if res.Allowed && !res.Shadow {
		decision = "allow"
	}
	attrs := []slog.Attr{
		slog.String("request_id", res.RequestID),
		slog.String("decision", decision),
		slog.String("code", res.Code.String()),
		slog.Int("status", res.Status),
		slog.String("method", r.method()),
		slog.String("path", r.pathOnly()),
		slog.String("route", res.Route),
		slog.String("subject", res.Subject),
		slog.String("plan", res.Plan),
		slog.Int64("latency_us", res.Duration.Microseconds()),
	}
	if res.CredFrom != "" {
		attrs = append(attrs, slog.String("credential", res.CredFrom))
	}
	if res.KeyID != "" {
		attrs = append(attrs, slog.String("key_id", res.KeyID))
	}
	if res.Looked {
		attrs = append(attrs, slog.String("cache", res.Cache.String()))
	}
	if res.Shadow {
		attrs = append(attrs, slog.Bool("shadow", true))
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "decision", attrs...)
}
