package httpsource

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/sourcetest"
)

// fakeService is the billing service as the contract describes it, written
// independently of the package's decoder. Tests replace its behaviour with
// respond; it counts requests and TCP connections.
type fakeService struct {
	*httptest.Server
	hits  atomic.Int64 // requests received
	conns atomic.Int64 // TCP connections accepted

	mu        sync.Mutex
	bySubject map[string][]byte
	byDigest  map[string][]byte
	respond   http.HandlerFunc // when set, answers every request
	header    http.Header      // of the last request
	path      string           // escaped path of the last request
}

// startService serves recs on 127.0.0.1 until the test ends.
func startService(t *testing.T, recs []sourcetest.Record) *fakeService {
	t.Helper()
	f := &fakeService{bySubject: map[string][]byte{}, byDigest: map[string][]byte{}}
	for _, r := range recs {
		body := recordJSON(t, r.Entitlement)
		f.bySubject[r.Entitlement.Subject] = body
		for _, d := range r.APIKeyDigests {
			f.byDigest[d] = body
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/entitlements/subjects/{subject}", func(w http.ResponseWriter, r *http.Request) {
		f.answer(w, f.bySubject, r.PathValue("subject"))
	})
	mux.HandleFunc("GET /v1/entitlements/api-keys/{digest}", func(w http.ResponseWriter, r *http.Request) {
		f.answer(w, f.byDigest, r.PathValue("digest"))
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		f.mu.Lock()
		f.header, f.path = r.Header.Clone(), r.URL.EscapedPath()
		respond := f.respond
		f.mu.Unlock()
		if respond != nil {
			respond(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	f.Listener.Close()
	f.Listener = ln
	f.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	f.Start()
	t.Cleanup(f.Close)
	return f
}

func (f *fakeService) answer(w http.ResponseWriter, m map[string][]byte, id string) {
	f.mu.Lock()
	body, ok := m[id]
	f.mu.Unlock()
	if !ok {
		http.NotFound(w, nil)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// setRespond replaces the service's behaviour; nil restores the records.
func (f *fakeService) setRespond(h http.HandlerFunc) {
	f.mu.Lock()
	f.respond = h
	f.mu.Unlock()
}

// status makes every request answer code with a small body.
func (f *fakeService) status(code int) {
	f.setRespond(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, http.StatusText(code), code)
	})
}

func (f *fakeService) lastHeader() http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.header
}

func (f *fakeService) lastPath() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.path
}

// recordJSON writes e as the contract's JSON, omitting unset optional fields.
func recordJSON(t *testing.T, e entitlement.Entitlement) []byte {
	t.Helper()
	m := map[string]any{"subject": e.Subject, "plan": e.Plan, "status": string(e.Status)}
	if len(e.Features) > 0 {
		m["features"] = e.Features
	}
	if len(e.Quotas) > 0 {
		m["quotas"] = e.Quotas
	}
	if e.Credits != nil {
		m["credits"] = *e.Credits
	}
	for name, ts := range map[string]time.Time{"period_start": e.PeriodStart, "period_end": e.PeriodEnd, "past_due_since": e.PastDueSince} {
		if !ts.IsZero() {
			m[name] = ts.Format(time.RFC3339)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// clock is a settable time source for the breaker.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 15, 12, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recorder is an Observer that remembers what it was told.
type recorder struct {
	mu       sync.Mutex
	outcomes []string
	states   []string
}

func (r *recorder) Call(kind, outcome string, d time.Duration) {
	r.mu.Lock()
	r.outcomes = append(r.outcomes, kind+"/"+outcome)
	r.mu.Unlock()
}

func (r *recorder) BreakerState(state string) {
	r.mu.Lock()
	r.states = append(r.states, state)
	r.mu.Unlock()
}

func (r *recorder) lastOutcome() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.outcomes) == 0 {
		return ""
	}
	return r.outcomes[len(r.outcomes)-1]
}

func (r *recorder) stateLog() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.states...)
}

// newSource builds a Source on f with opts, closing it when the test ends.
func newSource(t *testing.T, f *fakeService, opts Options) *Source {
	t.Helper()
	opts.BaseURL = f.URL
	if opts.Timeout == 0 {
		// Generous: a test that wants the timeout to fire sets its own. The
		// default 50ms would fail plain lookups on a busy machine.
		opts.Timeout = 30 * time.Second
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var (
	acme    = entitlement.Key{Kind: entitlement.BySubject, ID: "acme"}
	nobody  = entitlement.Key{Kind: entitlement.BySubject, ID: "nobody"}
	acmeKey = entitlement.Key{Kind: entitlement.ByAPIKey, ID: sourcetest.DigestAcme}
)
