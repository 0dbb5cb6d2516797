// Package admin serves the operator's HTTP endpoints: liveness, readiness and
// Prometheus metrics. It knows nothing of authorization: callers hand it a
// metrics handler and flip readiness.
package admin

import (
	"net/http"
	"net/http/pprof"
	"sync/atomic"
)

// Server holds the admin endpoints.
type Server struct {
	mux      *http.ServeMux
	ready    atomic.Bool
	draining atomic.Bool
	why      atomic.Pointer[string]
}

// New builds the admin mux with /healthz, /readyz and, when metrics is not
// nil, /metrics. Readiness starts false.
func New(metrics http.Handler) *Server {
	s := &Server{mux: http.NewServeMux()}
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

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

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
