package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/tollgate-authz/tollgate/admin"
	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/cache"
	"github.com/tollgate-authz/tollgate/internal/overload"
	"github.com/tollgate-authz/tollgate/internal/tlsreload"
	"github.com/tollgate-authz/tollgate/metrics"
	"github.com/tollgate-authz/tollgate/settle"
)

// Addrs are the bound listeners' addresses.
type Addrs struct {
	// GRPC is host:port, or unix:///path for a Unix socket.
	GRPC string
	// Admin is host:port.
	Admin string
}

// listeners are the bound sockets, closed by Serve's drain (or by Close if
// Serve never ran).
type listeners struct {
	grpc, admin net.Listener
	unixPath    string // the socket file to remove at the end, if any
}

func (l *listeners) close() {
	_ = l.grpc.Close()
	_ = l.admin.Close()
	if l.unixPath != "" {
		_ = os.Remove(l.unixPath)
	}
}

// Listen binds the gRPC and admin listeners (server.grpc_address and
// server.admin_address; port 0 picks a free port) and returns their
// addresses. Serve calls it if it has not been called.
func (a *App) Listen() (Addrs, error) {
	if l := a.listening; l != nil {
		return l.addrs(), nil
	}
	s := a.cfg.Server
	g, unixPath, err := listen(s.GRPCAddress)
	if err != nil {
		return Addrs{}, a.cfg.Errorf("server.grpc_address", "%v", err)
	}
	adm, err := net.Listen("tcp", s.AdminAddress)
	if err != nil {
		_ = g.Close()
		return Addrs{}, a.cfg.Errorf("server.admin_address", "%v", err)
	}
	a.listening = &listeners{grpc: g, admin: adm, unixPath: unixPath}
	return a.listening.addrs(), nil
}

func (l *listeners) addrs() Addrs {
	g := l.grpc.Addr().String()
	if l.unixPath != "" {
		g = "unix://" + g
	}
	return Addrs{GRPC: g, Admin: l.admin.Addr().String()}
}

// listen binds host:port or unix:///path. A stale socket file left by a
// crashed process is removed; a live one is not.
func listen(addr string) (net.Listener, string, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		l, err := net.Listen("tcp", addr)
		return l, "", err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.DialTimeout("unix", path, 100*time.Millisecond); err == nil {
			c.Close()
			return nil, "", fmt.Errorf("%s: another process is serving on this socket", path)
		}
		_ = os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	return l, path, err
}

// Serve answers Checks and admin requests until ctx ends or a listener
// fails, then drains: readiness turns false first, serving goes on for
// server.shutdown_delay while load balancers notice, Checks in flight
// finish (for at most server.drain_timeout), and the listeners close.
// Serve returns the listener's failure, or nil after a drain ctx started.
func (a *App) Serve(ctx context.Context) error {
	lis, err := a.Listen()
	if err != nil {
		return err
	}
	cfg, log, l := a.cfg, a.log, a.listening

	limiter := overload.New(cfg.Server.MaxInFlight)
	a.metrics.ShedCounter(limiter.Shed)
	checkMethod := "/" + authv3.Authorization_ServiceDesc.ServiceName + "/Check"
	gopts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(cfg.Server.MaxConcurrentStreams),
		// Over max_in_flight a Check is answered 503 at once, not queued.
		grpc.UnaryInterceptor(limiter.UnaryInterceptor(func(_ context.Context, method string, req any) (any, bool) {
			if method != checkMethod {
				return nil, false
			}
			return a.server.Shed(req)
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
	if a.serverTLS != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(a.serverTLS.Config())))
	}
	gs := grpc.NewServer(gopts...)
	authz.Register(gs, a.server)
	if a.metering != nil || a.payments != nil {
		// Envoy's access log service and ext_proc filter, for settlement
		// of metered routes and of x402 payments.
		var settler *settle.Settler
		if m := a.metering; m != nil {
			settler = m.settler
			accesslogv3.RegisterAccessLogServiceServer(gs, settle.NewALS(m.settler))
		}
		xp := settle.NewExtProc(settler)
		if a.payments != nil {
			xp.WithPayments(paymentSettler{a})
		}
		extprocv3.RegisterExternalProcessorServer(gs, xp)
	}
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	adm := admin.New(promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{}), admin.Limits{
		BodyTimeout: cfg.Admin.BodyTimeout, IdleTimeout: cfg.Admin.IdleTimeout,
		MaxBodyBytes: cfg.Admin.MaxBodyBytes, MaxBodies: cfg.Admin.MaxConcurrentBodies,
		MaxBodiesPerClient: cfg.Admin.MaxBodiesPerClient, MinBodyRate: cfg.Admin.MinBodyRate,
	})
	adm.EnableInvalidation(cfg.AdminToken(), countingInvalidator{a.cache, a.metrics, "admin"})
	adm.HandleWithToken(cfg.AdminToken(), "GET /v1/usage/{subject}", a.usageHandler())
	for pattern, h := range a.handlers {
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
	go func() { errc <- gs.Serve(l.grpc) }()
	go func() {
		if err := hsrv.Serve(l.admin); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()

	// Watches, subscriptions and the usage export run until the drain is
	// over (settlements still arrive while it lasts), then get a bounded
	// time to finish (the export's last delivery).
	wctx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWatch()
	var bg sync.WaitGroup
	for _, r := range a.reloads {
		bg.Go(func() { r.run(wctx, cfg.Reload.PollInterval) })
	}
	for _, b := range a.background {
		bg.Go(func() { b(wctx) })
	}

	if a.tracing != nil {
		a.tracing.start()
	}
	adm.SetReady()
	log.Info("serving", "grpc", lis.GRPC, "admin", lis.Admin,
		"version", a.opts.Version, "entitlements", a.summary, "shadow", cfg.Shadow)

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
		after := a.opts.After
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
	l.close()
	stopWatch()
	waited := make(chan struct{})
	go func() { bg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(backgroundStopBound):
		log.Warn("background work still running at exit", "after", backgroundStopBound.String())
	}
	log.Info("stopped")
	return err
}

// backgroundStopBound is how long Serve waits, after the drain, for the
// watches and the usage export to stop (the export's final drain is 5s).
const backgroundStopBound = 10 * time.Second

// openServerTLS loads server.tls, when set, and registers its reload.
func (a *App) openServerTLS() error {
	t := a.cfg.Server.TLS
	if t.CertFile == "" {
		return nil
	}
	tr, err := tlsreload.New(tlsreload.Files{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile},
		func(err error) {
			a.metrics.Reloaded("tls", err, float64(time.Now().Unix()))
			if err != nil {
				a.log.Error("TLS reload failed; keeping the last good certificate", "error", err.Error())
			} else {
				a.log.Info("TLS certificate reloaded", "cert", t.CertFile)
			}
		})
	if err != nil {
		return a.cfg.Errorf("server.tls", "%v", err)
	}
	a.serverTLS = tr
	a.reloads = append(a.reloads, reload{"server.tls", tr.Watch})
	return nil
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
