// Package admin serves the operator's HTTP endpoints: liveness, readiness and
// Prometheus metrics. It knows nothing of authorization: callers hand it a
// metrics handler and flip readiness.
//
// Every endpoint, including ones added with Handle, is served within Limits:
// a client cannot hold a connection by sending its headers or body slowly,
// by keeping it idle, by trickling its body slower than MinBodyRate, or by
// sending more than MaxBodyBytes. Each endpoint (route pattern) has its own
// pool of MaxBodies request bodies read at once, of which one client (IP
// address) may hold MaxBodiesPerClient; a body over either bound is answered
// 503 at once rather than queued. So one client cannot take a pool, and a
// flood on one endpoint cannot starve another (the Stripe webhook).
package admin

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// BodyRateGrace is how long a request body may take before MinBodyRate
// applies to it, counted from the end of its headers.
const BodyRateGrace = time.Second

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
	// MaxBodies bounds request bodies being read at once on each endpoint
	// (route pattern). Default 16.
	MaxBodies int
	// MaxBodiesPerClient bounds the bodies one client address reads at once
	// on each endpoint. Default 2; at most MaxBodies.
	MaxBodiesPerClient int
	// MinBodyRate, in bytes per second, is the slowest a body may arrive
	// after its first BodyRateGrace: by then plus n/MinBodyRate seconds it
	// must have sent more than n bytes, or its connection is closed.
	// Default 1024; negative: no rate, only BodyTimeout.
	MinBodyRate int64
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
	if l.MaxBodiesPerClient <= 0 {
		l.MaxBodiesPerClient = 2
	}
	l.MaxBodiesPerClient = min(l.MaxBodiesPerClient, l.MaxBodies)
	if l.MinBodyRate == 0 {
		l.MinBodyRate = 1024
	}
	return l
}

// bodyPool counts the request bodies being read on one endpoint, in all and
// by client.
type bodyPool struct {
	mu       sync.Mutex
	n        int
	byClient map[string]int
}

// take takes a slot for client, or reports false when the pool or the
// client's share of it is full.
func (p *bodyPool) take(client string, max, perClient int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n >= max || p.byClient[client] >= perClient {
		return false
	}
	p.n++
	p.byClient[client]++
	return true
}

func (p *bodyPool) give(client string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n--
	if p.byClient[client]--; p.byClient[client] <= 0 {
		delete(p.byClient, client) // the map holds only clients reading now
	}
}

// remoteIP keys a request by the address it came from: the TCP peer's IP,
// never a header a client could set.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Server holds the admin endpoints.
type Server struct {
	mux       *http.ServeMux
	lim       Limits
	clientKey func(*http.Request) string // remoteIP; tests substitute
	mu        sync.Mutex
	pools     map[string]*bodyPool // by route pattern, "" for no route
	ready     atomic.Bool
	draining  atomic.Bool
	why       atomic.Pointer[string]
}

// New builds the admin mux with /healthz, /readyz and, when metrics is not
// nil, /metrics, served within lim. Readiness starts false.
func New(metrics http.Handler, lim Limits) *Server {
	lim = lim.withDefaults()
	s := &Server{mux: http.NewServeMux(), lim: lim, clientKey: remoteIP, pools: map[string]*bodyPool{}}
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

// ServeHTTP implements http.Handler. A request with a body takes a slot in
// its endpoint's pool while its handler runs, or is answered 503 at once
// when the pool or the client's share of it is full; its body is capped at
// MaxBodyBytes and must arrive within BodyTimeout and at MinBodyRate.
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
	_, pattern := s.mux.Handler(r)
	pool, client := s.pool(pattern), s.clientKey(r)
	if !pool.take(client, s.lim.MaxBodies, s.lim.MaxBodiesPerClient) {
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", "1")
		plain(w, http.StatusServiceUnavailable, "too many request bodies being read at once; retry\n")
		return
	}
	defer pool.give(client)
	start := time.Now()
	body := &rateReader{
		r: r.Body, rc: http.NewResponseController(w),
		end: start.Add(s.lim.BodyTimeout), rate: s.lim.MinBodyRate, graceEnd: start.Add(BodyRateGrace),
	}
	// Not supported by every ResponseWriter (a test recorder): the
	// http.Server's ReadTimeout still bounds the request then.
	body.setDeadline()
	r.Body = http.MaxBytesReader(w, body, s.lim.MaxBodyBytes)
	s.mux.ServeHTTP(w, r)
}

func (s *Server) pool(pattern string) *bodyPool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pools[pattern]
	if p == nil { // one per registered pattern: the map stays small
		p = &bodyPool{byClient: map[string]int{}}
		s.pools[pattern] = p
	}
	return p
}

// ErrSlowBody is the error reading a request body gives once the body has
// fallen behind MinBodyRate or past BodyTimeout.
var ErrSlowBody = errors.New("request body arrived too slowly")

// rateReader moves the connection's read deadline as a body arrives: to the
// moment the bytes so far stop keeping up with the minimum rate, and never
// past the body's own timeout. A client that stops sending or trickles is
// cut there, rather than holding its slot until the timeout.
type rateReader struct {
	r        io.ReadCloser
	rc       *http.ResponseController
	end      time.Time // BodyTimeout after the headers
	graceEnd time.Time // the rate applies from here
	rate     int64     // bytes per second; <= 0: none
	n        int64     // bytes read so far
}

// deadline is when the body, n bytes so far, falls behind.
func (b *rateReader) deadline() time.Time {
	if b.rate <= 0 {
		return b.end
	}
	d := b.graceEnd.Add(time.Duration(float64(b.n) / float64(b.rate) * float64(time.Second)))
	if d.After(b.end) {
		return b.end
	}
	return d
}

func (b *rateReader) setDeadline() { _ = b.rc.SetReadDeadline(b.deadline()) }

func (b *rateReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return n, fmt.Errorf("%w (slower than %d bytes/s after %s, or over its timeout): %w", ErrSlowBody, b.rate, BodyRateGrace, err)
	}
	if n > 0 && err == nil {
		b.setDeadline()
	}
	return n, err
}

func (b *rateReader) Close() error { return b.r.Close() }

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
