package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/tollgate-authz/tollgate/admin"
	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/internal/asynclog"
	"github.com/tollgate-authz/tollgate/internal/authzconfig"
	"github.com/tollgate-authz/tollgate/internal/overload"
	"github.com/tollgate-authz/tollgate/internal/redisconn"
	"github.com/tollgate-authz/tollgate/internal/tlsreload"
	"github.com/tollgate-authz/tollgate/internal/watch"
	"github.com/tollgate-authz/tollgate/metrics"
	"github.com/tollgate-authz/tollgate/policy"
)

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("serve")
	cfgPath := fs.String("config", "", "config file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireConfig(fs, *cfgPath); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	// A Check never waits for its log line: lines go through a bounded
	// queue, dropped and counted when stderr is slow, full or closed. The
	// queue is flushed at exit, for at most logFlushTimeout.
	logw := asynclog.New(stderr, asynclog.DefaultMaxBytes)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), logFlushTimeout)
		defer cancel()
		_ = logw.Close(ctx)
	}()
	log := newLogger(logw, cfg.Log.Level)
	// go-redis logs dial failures from inside a call (a Check's, too):
	// through the queue, never straight to stderr.
	redisconn.SetLogger(log)
	// The quota store reports its mode to metrics, which build creates: hand
	// it over once both exist.
	var m *metrics.Metrics
	qs, err := newQuotaStore(cfg, func() *metrics.Metrics { return m }, log)
	if err != nil {
		return err
	}
	defer qs.close()
	p, err := build(cfg, log, qs)
	if err != nil {
		return err
	}
	defer p.close()
	m = p.metrics
	m.LogDropped(logw.Dropped)
	qs.reportMode()
	if qs.watch != nil {
		p.watchers = append(p.watchers, func(ctx context.Context) { qs.watch(ctx, cfg.Entitlements.File.PollInterval) })
	}
	return p.serve(ctx, log)
}

// logFlushTimeout bounds how long the exit waits for queued log lines to
// reach a slow stderr.
const logFlushTimeout = 2 * time.Second

// newLogger is the JSON logger at level; w should not block (serve gives it
// an asynclog.Writer).
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// pipeline is the wired request path: source → cache → authz server.
type pipeline struct {
	cfg     *config.Config
	cache   *cache.Cache
	server  *authz.Server
	metrics *metrics.Metrics

	source   entitlement.Source
	fileSrc  *filesource.Source // set for the file source: reloaded with the config
	describe string             // what the source is, for logs and validate
	// watchers run while serving (file watches, pub/sub subscribers).
	watchers []func(ctx context.Context)
	// handlers are extra admin endpoints (the Stripe webhook).
	handlers map[string]http.Handler
	closers  []func()
	// shutdownDelay waits out server.shutdown_delay during the drain; nil
	// means time.After. Tests end the delay themselves.
	shutdownDelay func(time.Duration) <-chan time.Time
}

// build wires the request path for cfg. It is shared by serve, validate and
// check. quotas nil means an in-memory store.
func build(cfg *config.Config, log *slog.Logger, quotas authz.Quotas) (*pipeline, error) {
	p := &pipeline{cfg: cfg, handlers: map[string]http.Handler{}}
	p.metrics = metrics.New(version, func() int {
		if p.cache == nil {
			return 0
		}
		return p.cache.Len()
	})
	src, err := p.openSource(log)
	if err != nil {
		p.close()
		return nil, err
	}
	p.source = src
	cc := cfg.Entitlements.Cache
	var counted entitlement.Source = observedSource{src, cfg.Entitlements.Source, p.metrics}
	if cfg.Entitlements.Source == "http" || cfg.Entitlements.Source == "redis" {
		counted = src // these sources report finer outcomes themselves
	}
	p.cache = cache.New(counted, cache.Options{
		MaxEntries: cc.MaxEntries, NegativeMaxEntries: cc.NegativeMaxEntries, TTL: cc.TTL, NegativeTTL: cc.NegativeTTL,
		StaleIfError: cc.StaleIfError, Timeout: cc.Timeout,
	})
	rt, err := authzconfig.Rules(cfg)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("%s: %w", cfg.Path, err)
	}
	p.metrics.QuotaPolicies(cfg.Policy.QuotaPolicies())
	p.server = authz.NewServer(rt, authz.Deps{Entitlements: p.cache, Quotas: quotas, Observer: p.metrics, Log: log})
	return p, nil
}

// close releases the source's connections.
func (p *pipeline) close() {
	for _, c := range p.closers {
		c()
	}
}

func (p *pipeline) policy() *policy.Policy {
	if p.server == nil {
		return p.cfg.Policy
	}
	return p.server.Rules().Policy()
}

// reloadConfig applies a changed config file. Only the policy, identity and
// response settings change live; the log says which other edits need a restart.
func (p *pipeline) reloadConfig(log *slog.Logger) {
	unchanged := watch.Unchanged(p.cfg.Path)
	next, err := config.Load(p.cfg.Path)
	if !unchanged() {
		// Written again while it was read: maybe read half written. The
		// watch reports the new write once it settles.
		log.Info("config changed while it was read; waiting for it to settle", "file", p.cfg.Path)
		return
	}
	if err == nil {
		var rt *authz.Rules
		if rt, err = authzconfig.Rules(next); err == nil {
			p.server.Swap(rt)
		}
	}
	p.metrics.Reloaded("config", err, float64(time.Now().Unix()))
	if err != nil {
		log.Error("config reload failed; keeping the last good config", "error", err.Error())
		return
	}
	if next.Server != p.cfg.Server || next.Entitlements != p.cfg.Entitlements {
		log.Warn("config reloaded, but server and entitlements settings take effect only after a restart")
	}
	// Records were vetted against the old plans: check them against the new.
	if p.fileSrc != nil {
		if err := p.fileSrc.Reload(); err != nil {
			log.Warn("entitlements no longer valid under the new config", "error", err.Error())
		}
	}
	p.metrics.QuotaPolicies(next.Policy.QuotaPolicies())
	// Marked, not dropped: while the source cannot answer, the records
	// keep serving under stale_if_error.
	p.cache.Revalidate()
	log.Info("config reloaded", "file", p.cfg.Path)
}

func (p *pipeline) serve(ctx context.Context, log *slog.Logger) error {
	cfg := p.cfg
	lis, err := listen(cfg.Server.GRPCAddress)
	if err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	adminLis, err := net.Listen("tcp", cfg.Server.AdminAddress)
	if err != nil {
		lis.Close()
		return fmt.Errorf("admin listener: %w", err)
	}

	limiter := overload.New(cfg.Server.MaxInFlight)
	p.metrics.ShedCounter(limiter.Shed)
	checkMethod := "/" + authv3.Authorization_ServiceDesc.ServiceName + "/Check"
	gopts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(cfg.Server.MaxConcurrentStreams),
		// Over max_in_flight a Check is answered 503 at once, not queued.
		grpc.UnaryInterceptor(limiter.UnaryInterceptor(func(_ context.Context, method string, req any) (any, bool) {
			if method != checkMethod {
				return nil, false
			}
			return p.server.Shed(req)
		})),
		// Envoy keeps one long-lived connection per worker; allow its pings.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// A connection with no Check for this long gets a GOAWAY, so idle
		// connections (Envoy reconnects on its next Check) cannot pile up.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: cfg.Server.MaxConnectionIdle}),
		// Measured in BENCHMARKS.md: a pool of stream workers and tollgate's
		// own CheckRequest decoder each cut the cost of a Check under load.
		// authz.Register needs the codec.
		grpc.NumStreamWorkers(uint32(16 * runtime.GOMAXPROCS(0))),
		grpc.ForceServerCodecV2(authz.Codec{}),
	}
	if t := cfg.Server.TLS; t.CertFile != "" {
		tr, err := tlsreload.New(tlsreload.Files{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile},
			func(err error) {
				p.metrics.Reloaded("tls", err, float64(time.Now().Unix()))
				if err != nil {
					log.Error("TLS reload failed; keeping the last good certificate", "error", err.Error())
				} else {
					log.Info("TLS certificate reloaded", "cert", t.CertFile)
				}
			})
		if err != nil {
			lis.Close()
			adminLis.Close()
			return err
		}
		p.watchers = append(p.watchers, func(ctx context.Context) { tr.Watch(ctx, cfg.Entitlements.File.PollInterval) })
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(tr.Config())))
	}
	gs := grpc.NewServer(gopts...)
	authz.Register(gs, p.server)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	adm := admin.New(promhttp.HandlerFor(p.metrics.Registry, promhttp.HandlerOpts{}), admin.Limits{
		BodyTimeout: cfg.Admin.BodyTimeout, IdleTimeout: cfg.Admin.IdleTimeout,
		MaxBodyBytes: cfg.Admin.MaxBodyBytes, MaxBodies: cfg.Admin.MaxConcurrentBodies,
		MaxBodiesPerClient: cfg.Admin.MaxBodiesPerClient, MinBodyRate: cfg.Admin.MinBodyRate,
	})
	adm.EnableInvalidation(cfg.AdminToken(), countingInvalidator{p.cache, p.metrics, "admin"})
	for pattern, h := range p.handlers {
		adm.Handle(pattern, h)
	}
	if cfg.Admin.Pprof {
		adm.EnablePprof()
		log.Warn("/debug/pprof is on (admin.pprof): keep the admin listener private")
	}
	if cfg.AdminToken() == "" {
		log.Info("POST /v1/invalidate is off: set admin.token_env to enable it")
	}
	hsrv := adm.HTTPServer(slog.NewLogLogger(log.Handler(), slog.LevelWarn))

	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(lis) }()
	go func() {
		if err := hsrv.Serve(adminLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()

	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	for _, w := range p.watchers {
		go w(wctx)
	}
	go watch.File(wctx, cfg.Path, cfg.Entitlements.File.PollInterval, func() { p.reloadConfig(log) })

	adm.SetReady()
	log.Info("serving", "grpc", addrString(lis.Addr()), "admin", adminLis.Addr().String(),
		"version", version, "entitlements", p.describe, "shadow", cfg.Shadow)

	select {
	case <-ctx.Done():
	case err = <-errc:
	}

	// Drain: stop advertising first (before anything else, a log line
	// included), keep serving for shutdown_delay while load balancers
	// notice, then let in-flight Checks finish, then stop.
	adm.Drain()
	hs.Shutdown()
	if err != nil {
		log.Error("server failed", "error", err.Error())
	}
	log.Info("draining", "timeout", cfg.Server.DrainTimeout.String(), "shutdown_delay", cfg.Server.ShutdownDelay.String())
	if d := cfg.Server.ShutdownDelay; d > 0 {
		after := p.shutdownDelay
		if after == nil {
			after = time.After
		}
		<-after(d)
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.Server.DrainTimeout):
		log.Warn("drain timeout; closing remaining streams")
		gs.Stop()
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = hsrv.Shutdown(sctx)
	if path, ok := strings.CutPrefix(cfg.Server.GRPCAddress, "unix://"); ok {
		_ = os.Remove(path)
	}
	log.Info("stopped")
	return err
}

// listen binds host:port or unix:///path. A stale socket file left by a
// crashed process is removed; a live one is not.
func listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.DialTimeout("unix", path, 100*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process is serving on this socket", path)
		}
		_ = os.Remove(path)
	}
	return net.Listen("unix", path)
}

func addrString(a net.Addr) string {
	if a.Network() == "unix" {
		return "unix://" + a.String()
	}
	return a.String()
}

// countingInvalidator invalidates the cache and counts it by path.
type countingInvalidator struct {
	cache *cache.Cache
	m     *metrics.Metrics
	via   string
}

func (c countingInvalidator) InvalidateSubject(s string) int {
	c.m.Invalidated(c.via)
	return c.cache.InvalidateSubject(s)
}

func (c countingInvalidator) InvalidateKey(d string) int {
	c.m.Invalidated(c.via)
	return c.cache.InvalidateKey(d)
}
