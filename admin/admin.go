// Package admin serves the operator's HTTP endpoints: liveness, readiness and
// Prometheus metrics. It knows nothing of authorization: callers hand it a
// metrics handler and flip readiness.
//
// Every endpoint, including ones added with Handle, is served within Limits:
// a client cannot hold a connection by sending its headers or body slowly,
// by keeping it idle, or by sending more than MaxBodyBytes; and at most
// MaxBodies request bodies are read at once, the next one is answered 503 at
// once rather than queued.
package admin

import (
	"log"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync/atomic"
	"time"
)

// Limits bound what clients can hold on the admin listener. A zero field
// takes its default.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's headers. Default 5s.
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds reading a request's body, from the end of its
	// headers. Default 10s.
	BodyTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request for this
	// long. Default 60s.
	IdleTimeout time.Duration
	// MaxBodyBytes caps one request body. Default 1 MiB.
	MaxBodyBytes int64
	// MaxBodies bounds request bodies being read at once. Default 16.
	MaxBodies int
}

func (l Limits) withDefaults() Limits {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&l.ReadHeaderTimeout, 5*time.Second)
	def(&l.BodyTimeout, 10*time.Second)
	def(&l.IdleTimeout, time.Minute)
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = 1 << 20
	}
	if l.MaxBodies <= 0 {
		l.MaxBodies = 16
	}
	return l
}

// Server holds the admin endpoints.
type Server struct {
	mux      *http.ServeMux
	lim      Limits
	bodies   chan struct{} // one token per request body being read
	ready    atomic.Bool
	draining atomic.Bool
	why      atomic.Pointer[string]
}

// New builds the admin mux with /healthz, /readyz and, when metrics is not
// nil, /metrics, served within lim. Readiness starts false.
func New(metrics http.Handler, lim Limits) *Server {
	lim = lim.withDefaults()
	s := &Server{mux: http.NewServeMux(), lim: lim, bodies: make(chan struct{}, lim.MaxBodies)}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok\n")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	if metrics != nil {
		s.mux.Handle("GET /metrics", metrics)
	}
	s.SetNotReady("starting")
	return s
}

// EnablePprof serves the runtime profiles under /debug/pprof/.
func (s *Server) EnablePprof() {
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// Handle adds a handler, for endpoints other packages own.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// HTTPServer is an http.Server for the admin endpoints with the Limits'
// timeouts; errorLog receives the server's own errors (nil: the log
// package's default logger).
func (s *Server) HTTPServer(errorLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.lim.ReadHeaderTimeout,
		// The whole request; ServeHTTP also gives the body its own deadline.
		ReadTimeout: s.lim.ReadHeaderTimeout + s.lim.BodyTimeout,
		IdleTimeout: s.lim.IdleTimeout,
		ErrorLog:    errorLog,
	}
}

// ServeHTTP implements http.Handler. A request with a body takes one of
// MaxBodies slots while its handler runs, or is answered 503 at once; its
// body is capped at MaxBodyBytes and must arrive within BodyTimeout.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength == 0 && len(r.TransferEncoding) == 0 {
		s.mux.ServeHTTP(w, r)
		return
	}
	if r.ContentLength > s.lim.MaxBodyBytes {
		w.Header().Set("Connection", "close") // don't read what was refused
		plain(w, http.StatusRequestEntityTooLarge, "request body is over "+strconv.FormatInt(s.lim.MaxBodyBytes, 10)+" bytes\n")
		return
	}
	select {
	case s.bodies <- struct{}{}:
		defer func() { <-s.bodies }()
	default:
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", "1")
		plain(w, http.StatusServiceUnavailable, "too many request bodies being read at once; retry\n")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.lim.MaxBodyBytes)
	// Not supported by every ResponseWriter (a test recorder): the
	// http.Server's ReadTimeout still bounds the request then.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.lim.BodyTimeout))
	s.mux.ServeHTTP(w, r)
}

// SetReady marks the process ready to take traffic.
func (s *Server) SetReady() { s.ready.Store(true) }

// SetNotReady marks it not ready, with a reason /readyz shows.
func (s *Server) SetNotReady(why string) {
	s.why.Store(&why)
	s.ready.Store(false)
}

// Drain marks the process as shutting down: /readyz fails from now on, so
// load balancers stop sending new work, while /healthz stays up.
func (s *Server) Drain() {
	s.draining.Store(true)
	s.SetNotReady("draining")
}

// Ready reports readiness.
func (s *Server) Ready() bool { return s.ready.Load() && !s.draining.Load() }

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.Ready() {
		plain(w, http.StatusOK, "ready\n")
		return
	}
	plain(w, http.StatusServiceUnavailable, "not ready: "+*s.why.Load()+"\n")
}

func plain(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}
