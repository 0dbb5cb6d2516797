package app

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/envvar"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/quota"
)

// tracing is OpenTelemetry for one app (tracing.enabled): a span per Check
// (checkTracer, the authz.Tracer), child spans for the entitlement source,
// the quota store and each Redis round trip made for a Check, and a bounded
// queue that exports them over OTLP. Nothing here is on the Check's path
// when tracing is off: New does not build it.
type tracing struct {
	tracer trace.Tracer
	queue  *spanQueue
	prop   propagation.TextMapPropagator
}

// instrumentation names the spans' instrumentation scope.
const instrumentation = "github.com/tollgate-authz/tollgate"

// openTracing builds tracing from the config's tracing block, or nothing
// when it is off. The exporter does not connect until spans are exported;
// spans are exported only while serving (start), so check and validate
// send nothing.
func (a *App) openTracing() error {
	tc := a.cfg.Tracing
	if !tc.Enabled {
		return nil
	}
	exp, err := newExporter(tc)
	if err != nil {
		return a.cfg.Errorf("tracing", "%v", err)
	}
	q := newSpanQueue(exp, spanQueueOptions{MaxQueue: tc.MaxQueue, Timeout: tc.Timeout, Log: a.log})
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", tc.ServiceName),
		attribute.String("service.version", a.opts.Version),
	))
	if err != nil {
		return a.cfg.Errorf("tracing", "%v", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		// A parent's decision (Envoy's, or the client's) is followed; the
		// ratio applies to Checks that arrive without one.
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(*tc.SampleRatio))),
		sdktrace.WithSpanProcessor(q),
	)
	a.tracing = &tracing{
		tracer: tp.Tracer(instrumentation, trace.WithInstrumentationVersion(a.opts.Version)),
		queue:  q,
		// B3 first: when a request carries both, W3C trace context wins.
		prop: propagation.NewCompositeTextMapPropagator(b3.New(), propagation.TraceContext{}),
	}
	for _, c := range []struct {
		name, help string
		v          *atomic.Int64
		labels     prometheus.Labels
	}{
		{"tollgate_trace_spans_exported_total", "Spans sent to the OpenTelemetry collector.", &q.exported, nil},
		{"tollgate_trace_spans_dropped_total", "Spans dropped: the export queue (tracing.max_queue) was full, or the collector refused or did not answer an export. A Check never waits for a span.", &q.droppedFull, prometheus.Labels{"reason": "queue_full"}},
		{"tollgate_trace_spans_dropped_total", "Spans dropped: the export queue (tracing.max_queue) was full, or the collector refused or did not answer an export. A Check never waits for a span.", &q.droppedFailed, prometheus.Labels{"reason": "export_failed"}},
	} {
		v := c.v
		a.metrics.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: c.name, Help: c.help, ConstLabels: c.labels,
		}, func() float64 { return float64(v.Load()) }))
	}
	a.closers = append(a.closers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), tc.Timeout+time.Second)
		defer cancel()
		_ = tp.Shutdown(ctx) // exports what is queued, when serving started
	})
	return nil
}

// tracingChanged reports whether a reload changed the tracing block, which
// applies only at start.
func tracingChanged(was, now config.Tracing) bool {
	if *was.SampleRatio != *now.SampleRatio {
		return true
	}
	was.SampleRatio, now.SampleRatio = nil, nil
	return was != now
}

// newExporter is the OTLP exporter tc names. Settings the config leaves
// out come from the standard OTEL_EXPORTER_OTLP_* variables, as in any
// OpenTelemetry SDK (a client certificate, compression).
func newExporter(tc config.Tracing) (sdktrace.SpanExporter, error) {
	var headers map[string]string
	if tc.HeadersEnv != "" {
		// Checked by config.Parse; read again here, as it is now.
		v, err := envvar.Lookup(tc.HeadersEnv)
		if err != nil {
			return nil, err
		}
		if headers, err = config.TracingHeaders(v); err != nil {
			return nil, errors.New("headers_env: " + err.Error())
		}
	}
	ctx := context.Background() // New does not dial: the connection is made on the first export
	if tc.Protocol == "http" {
		endpoint := tc.Endpoint
		if rest := endpoint[strings.Index(endpoint, "://")+3:]; !strings.Contains(strings.TrimSuffix(rest, "/"), "/") {
			endpoint = strings.TrimSuffix(endpoint, "/") + "/v1/traces"
		}
		opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(endpoint), otlptracehttp.WithTimeout(tc.Timeout)}
		if headers != nil {
			opts = append(opts, otlptracehttp.WithHeaders(headers))
		}
		return otlptracehttp.New(ctx, opts...)
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(tc.Endpoint), otlptracegrpc.WithTimeout(tc.Timeout)}
	if headers != nil {
		opts = append(opts, otlptracegrpc.WithHeaders(headers))
	}
	return otlptracegrpc.New(ctx, opts...)
}

// start begins exporting, when serving.
func (t *tracing) start() { t.queue.start() }

// checkTracer is the authz.Tracer: one server span per Check.
type checkTracer struct{ t *tracing }

var _ authz.Tracer = checkTracer{}

// checkSpanAttrs are set on every Check's span when it starts.
var checkSpanAttrs = trace.WithAttributes(
	attribute.String("rpc.system", "grpc"),
	attribute.String("rpc.service", "envoy.service.auth.v3.Authorization"),
	attribute.String("rpc.method", "Check"),
)

// StartCheck continues the trace the Check belongs to. Envoy, when it
// traces, puts the context of its ext_authz span in the gRPC call's
// metadata: that span is the parent. Without it, the context the client
// request carries (W3C traceparent and tracestate, or B3) is.
func (c checkTracer) StartCheck(ctx context.Context, h authz.Headers) (context.Context, string) {
	parent := c.t.prop.Extract(ctx, headerCarrier{h})
	parent = c.t.prop.Extract(parent, metadataCarrier{ctx})
	ctx, span := c.t.tracer.Start(parent, "tollgate.check", trace.WithSpanKind(trace.SpanKindServer), checkSpanAttrs)
	if sc := span.SpanContext(); sc.HasTraceID() {
		return ctx, sc.TraceID().String()
	}
	return ctx, ""
}

// EndCheck puts the decision on the span and ends it. The subject and the
// plan are there, never the credential, nor its digest.
func (c checkTracer) EndCheck(ctx context.Context, res *authz.Result) {
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		decision := "deny"
		if res.Allowed && !res.Shadow {
			decision = "allow"
		}
		attrs := []attribute.KeyValue{
			attribute.String("tollgate.decision", decision),
			attribute.String("tollgate.code", res.Code.String()),
			attribute.Int("tollgate.status", res.Status),
			// res is valid only during the call, and the span keeps its
			// attributes until exported: the decision id shares memory
			// with a response block the next Check reuses.
			attribute.String("tollgate.decision_id", strings.Clone(res.DecisionID)),
			attribute.String("tollgate.route", res.Route),
			attribute.String("tollgate.subject", res.Subject),
			attribute.String("tollgate.plan", res.Plan),
		}
		if res.RequestID != "" {
			attrs = append(attrs, attribute.String("tollgate.request_id", res.RequestID))
		}
		if res.CredFrom != "" {
			attrs = append(attrs, attribute.String("tollgate.credential", res.CredFrom))
		}
		if res.Looked {
			attrs = append(attrs, attribute.String("tollgate.cache", res.Cache.String()))
		}
		if res.Shadow {
			attrs = append(attrs, attribute.Bool("tollgate.shadow", true))
		}
		span.SetAttributes(attrs...)
		// A refusal is an answer; only failing to decide is an error.
		if res.Code == policy.EntitlementsUnavailable {
			span.SetStatus(otelcodes.Error, "entitlements unavailable")
		}
	}
	span.End()
}

// headerCarrier reads trace context from the request's headers.
type headerCarrier struct{ h authz.Headers }

func (c headerCarrier) Get(key string) string {
	v, _ := c.h.Header(key)
	return v
}
func (headerCarrier) Set(string, string) {}
func (headerCarrier) Keys() []string     { return nil }

// metadataCarrier reads trace context from the gRPC call's metadata.
type metadataCarrier struct{ ctx context.Context }

func (c metadataCarrier) Get(key string) string {
	if v := metadata.ValueFromIncomingContext(c.ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (metadataCarrier) Set(string, string) {}
func (metadataCarrier) Keys() []string     { return nil }

// recording reports whether ctx is inside a span being recorded: child
// spans are made only there, so work outside a traced Check (background
// refreshes, subscriptions, write-backs) makes none.
func recording(ctx context.Context) bool { return trace.SpanFromContext(ctx).IsRecording() }

// tracedSource makes a span of each entitlement lookup the cache makes
// for a traced Check: a miss, or a refresh.
type tracedSource struct {
	src    entitlement.Source
	tracer trace.Tracer
	attrs  trace.SpanStartEventOption
}

func (t *tracing) source(src entitlement.Source, name string) entitlement.Source {
	return tracedSource{src, t.tracer, trace.WithAttributes(attribute.String("tollgate.source", name))}
}

func (s tracedSource) Lookup(ctx context.Context, k entitlement.Key) (*entitlement.Entitlement, error) {
	if !recording(ctx) {
		return s.src.Lookup(ctx, k)
	}
	ctx, span := s.tracer.Start(ctx, "tollgate.entitlement.lookup", trace.WithSpanKind(trace.SpanKindClient), s.attrs)
	e, err := s.src.Lookup(ctx, k)
	outcome := "ok"
	switch {
	case errors.Is(err, entitlement.ErrNotFound):
		outcome = "not_found"
	case err != nil:
		outcome = "error"
		// Not err's text: the span must hold nothing a source might quote.
		span.SetStatus(otelcodes.Error, "the entitlement source failed")
	}
	span.SetAttributes(attribute.String("tollgate.outcome", outcome))
	span.End()
	return e, err
}

// tracedQuotas makes a span of each spend of a traced Check. With the
// redis store, the leases it takes are Redis round trips below it.
type tracedQuotas struct {
	authz.Quotas
	tracer trace.Tracer
	attrs  trace.SpanStartEventOption
}

func (t *tracing) quotas(q authz.Quotas, store string) authz.Quotas {
	return tracedQuotas{q, t.tracer, trace.WithAttributes(attribute.String("tollgate.quota_store", store))}
}

func (q tracedQuotas) Spend(ctx context.Context, group string, items []quota.Item, used []int64) (int, error) {
	if !recording(ctx) {
		return q.Quotas.Spend(ctx, group, items, used)
	}
	ctx, span := q.tracer.Start(ctx, "tollgate.quota.spend", q.attrs)
	denied, err := q.Quotas.Spend(ctx, group, items, used)
	outcome := "allowed"
	switch {
	case err != nil:
		outcome = "error"
		span.SetStatus(otelcodes.Error, "the quota store failed")
	case denied >= 0:
		outcome = "exhausted"
	}
	span.SetAttributes(attribute.Int("tollgate.counters", len(items)), attribute.String("tollgate.outcome", outcome))
	span.End()
	return denied, err
}

// redisHook makes a span of each Redis round trip made for a traced Check
// (a lookup, a quota lease). It names the command, never its arguments:
// they hold subjects and key digests.
type redisHook struct {
	tracer trace.Tracer
	attrs  trace.SpanStartEventOption
}

var _ redis.Hook = redisHook{}

// redisHook is the hook for the client at path ("quota_store.redis").
func (t *tracing) redisHook(path string) redisHook {
	return redisHook{t.tracer, trace.WithAttributes(attribute.String("db.system.name", "redis"), attribute.String("tollgate.redis", path))}
}

func (redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !recording(ctx) {
			return next(ctx, cmd)
		}
		name := strings.ToUpper(cmd.Name())
		ctx, span := h.tracer.Start(ctx, "redis "+name, trace.WithSpanKind(trace.SpanKindClient), h.attrs,
			trace.WithAttributes(attribute.String("db.operation.name", name)))
		err := next(ctx, cmd)
		h.end(span, err)
		return err
	}
}

func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !recording(ctx) {
			return next(ctx, cmds)
		}
		ctx, span := h.tracer.Start(ctx, "redis pipeline", trace.WithSpanKind(trace.SpanKindClient), h.attrs,
			trace.WithAttributes(attribute.Int("db.operation.batch.size", len(cmds))))
		err := next(ctx, cmds)
		h.end(span, err)
		return err
	}
}

func (redisHook) end(span trace.Span, err error) {
	if err != nil && !errors.Is(err, redis.Nil) {
		span.SetStatus(otelcodes.Error, "redis error")
	}
	span.End()
}

// spanQueue is the span processor: ended spans wait in a bounded queue and
// a goroutine exports them in batches. A span that finds the queue full is
// dropped and counted, so a slow or absent collector never slows a Check
// (the SDK's batch processor drops too, but does not say how many).
type spanQueue struct {
	exp     sdktrace.SpanExporter
	opts    spanQueueOptions
	spans   chan sdktrace.ReadOnlySpan
	flushes chan chan struct{}
	stop    chan struct{}
	stopped chan struct{}

	startOnce, stopOnce sync.Once
	started             atomic.Bool

	exported, droppedFull, droppedFailed atomic.Int64
	failing                              bool // the last export failed (run's goroutine only)
}

type spanQueueOptions struct {
	MaxQueue int           // spans waiting; more are dropped
	Batch    int           // spans per export; default 512
	Every    time.Duration // export at least this often; default 1s
	Timeout  time.Duration // bounds one export (the exporter's own timeout too)
	Log      *slog.Logger
}

func newSpanQueue(exp sdktrace.SpanExporter, o spanQueueOptions) *spanQueue {
	if o.Batch <= 0 {
		o.Batch = 512
	}
	if o.Every <= 0 {
		o.Every = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = config.DefaultTracingTimeout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &spanQueue{
		exp: exp, opts: o,
		spans:   make(chan sdktrace.ReadOnlySpan, max(o.MaxQueue, 1)),
		flushes: make(chan chan struct{}),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
}

var _ sdktrace.SpanProcessor = (*spanQueue)(nil)

func (q *spanQueue) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues a sampled span, or drops it when the queue is full.
func (q *spanQueue) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	select {
	case q.spans <- s:
	default:
		q.droppedFull.Add(1)
	}
}

// start begins exporting.
func (q *spanQueue) start() {
	q.startOnce.Do(func() {
		q.started.Store(true)
		go q.run()
	})
}

func (q *spanQueue) run() {
	defer close(q.stopped)
	tick := time.NewTicker(q.opts.Every)
	defer tick.Stop()
	batch := make([]sdktrace.ReadOnlySpan, 0, q.opts.Batch)
	for {
		select {
		case s := <-q.spans:
			if batch = append(batch, s); len(batch) >= q.opts.Batch {
				batch = q.export(batch)
			}
		case <-tick.C:
			batch = q.export(batch)
		case done := <-q.flushes:
			batch = q.export(q.drain(batch))
			close(done)
		case <-q.stop:
			q.export(q.drain(batch))
			return
		}
	}
}

// drain adds every span queued now to batch, exporting full batches.
func (q *spanQueue) drain(batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	for {
		select {
		case s := <-q.spans:
			if batch = append(batch, s); len(batch) >= q.opts.Batch {
				batch = q.export(batch)
			}
		default:
			return batch
		}
	}
}

// export sends batch and returns it emptied. A failed export's spans are
// dropped and counted; it is logged once, and so is the recovery.
func (q *spanQueue) export(batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	if len(batch) == 0 {
		return batch
	}
	ctx, cancel := context.WithTimeout(context.Background(), q.opts.Timeout)
	err := q.exp.ExportSpans(ctx, batch)
	cancel()
	n := int64(len(batch))
	switch {
	case err != nil:
		q.droppedFailed.Add(n)
		if !q.failing {
			q.opts.Log.Warn("tracing: the collector did not take spans; dropping them until it does", "spans", n, "error", err.Error())
		}
		q.failing = true
	default:
		q.exported.Add(n)
		if q.failing {
			q.opts.Log.Info("tracing: the collector takes spans again")
		}
		q.failing = false
	}
	clear(batch)
	return batch[:0]
}

// ForceFlush exports every span queued now, and returns once the
// collector answered (or ctx ended). Before start it does nothing.
func (q *spanQueue) ForceFlush(ctx context.Context) error {
	if !q.started.Load() {
		return nil
	}
	done := make(chan struct{})
	select {
	case q.flushes <- done:
	case <-q.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown exports what is queued (when started) and closes the exporter.
func (q *spanQueue) Shutdown(ctx context.Context) error {
	q.stopOnce.Do(func() {
		close(q.stop)
	})
	if q.started.Load() {
		select {
		case <-q.stopped:
		case <-ctx.Done():
		}
	}
	return q.exp.Shutdown(ctx)
}

// traceSource wraps the source the cache calls, when tracing is on.
func (a *App) traceSource(src entitlement.Source) entitlement.Source {
	if a.tracing == nil {
		return src
	}
	return a.tracing.source(src, a.cfg.Entitlements.Source)
}

// traceDecisions traces the decision server's Checks and its spends, when
// tracing is on.
func (a *App) traceDecisions(d *authz.Deps) {
	if a.tracing == nil {
		return
	}
	store := a.cfg.QuotaStore.Store
	if store == "" {
		store = "memory"
	}
	d.Quotas = a.tracing.quotas(d.Quotas, store)
	d.Tracer = checkTracer{a.tracing}
}
