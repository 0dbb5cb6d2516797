package export

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// mode is how a fake provider treats one request.
type mode int

const (
	answerOK  mode = iota // take the events, answer success
	answer500             // take nothing, answer 500
	count500              // take the events, then answer 500: the answer is lost
	answer429             // take nothing, answer 429 (with the ledger's Retry-After, if any)
	goDown                // close the connection without an answer
	hang                  // hold the request until the client gives up
	countHang             // take the events, then hang
)

// ledger is what a fake provider holds: each event counted once per
// de-duplication key, as the real provider does, plus what it saw.
type ledger struct {
	mu         sync.Mutex
	now        func() time.Time
	window     time.Duration        // de-duplication window
	firstSeen  map[string]time.Time // key → when first counted
	units      map[string]int64     // key → units counted
	counted    map[string]int       // key → times counted (must stay 1)
	customers  map[string]int64     // customer → units counted
	received   map[string]int       // key → times received, duplicates included
	requests   int
	hanging    int
	script     func(n int) mode // the mode of the n-th request (from 0)
	retryAfter string           // the 429's Retry-After
	forms      []map[string][]string
}

func newLedger(now func() time.Time) *ledger {
	return &ledger{
		now: now, window: 24 * time.Hour,
		firstSeen: map[string]time.Time{}, units: map[string]int64{}, counted: map[string]int{},
		customers: map[string]int64{}, received: map[string]int{},
	}
}

// next numbers a request and says how to treat it.
func (l *ledger) next() mode {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.requests
	l.requests++
	if l.script == nil {
		return answerOK
	}
	return l.script(n)
}

func (l *ledger) setScript(s func(n int) mode, retryAfter string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.script, l.retryAfter = s, retryAfter
}

// count takes one event; it says false for a duplicate within the window.
func (l *ledger) count(key, customer string, units int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.received[key]++
	if first, ok := l.firstSeen[key]; ok && l.now().Sub(first) < l.window {
		return false
	}
	l.firstSeen[key] = l.now()
	l.units[key] += units
	l.counted[key]++
	l.customers[customer] += units
	return true
}

// holds says whether key was counted (within the window).
func (l *ledger) holds(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	first, ok := l.firstSeen[key]
	return ok && l.now().Sub(first) < l.window
}

func (l *ledger) Requests() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.requests
}

func (l *ledger) Hanging() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hanging
}

func (l *ledger) CountedEvents() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.counted)
}

// hold keeps a request until its client gives up.
func (l *ledger) hold(r *http.Request) {
	// Read the body first: the server notices the client leaving only
	// once it reads the connection again.
	_, _ = io.Copy(io.Discard, r.Body)
	l.mu.Lock()
	l.hanging++
	l.mu.Unlock()
	<-r.Context().Done()
	l.mu.Lock()
	l.hanging--
	l.mu.Unlock()
}

// checkExactlyOnce fails t unless the ledger counted each event once, with
// its units, and nothing else.
func (l *ledger) checkExactlyOnce(t *testing.T, key func(usage.Event) string, events []usage.Event) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range events {
		k := key(e)
		if got := l.counted[k]; got != 1 {
			t.Errorf("event %s counted %d times, want 1", e.ID, got)
		}
		if got := l.units[k]; got != e.Units {
			t.Errorf("event %s: %d units counted, want %d", e.ID, got, e.Units)
		}
	}
	if got, want := len(l.counted), len(events); got != want {
		t.Errorf("%d events counted, want %d", got, want)
	}
	want := perCustomer(events)
	for c, u := range want {
		if got := l.customers[c]; got != u {
			t.Errorf("customer %s: %d units, want %d", c, got, u)
		}
	}
}

// breakOff closes the connection without an answer.
func breakOff(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("no hijacker")
	}
	conn, _, err := hj.Hijack()
	if err == nil {
		conn.Close()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fakeStripe is Stripe's meter-event endpoint as documented, and as it
// answers a duplicate identifier: 400 invalid_request_error "An event
// already exists with identifier X." with Stripe-Should-Retry: false.
type fakeStripe struct {
	*ledger
	t      *testing.T
	key    string
	meters map[string]bool // event names of active meters
	srv    *httptest.Server
}

const testStripeKey = "sk_test_51FakeKeyForTollgateTests0123456789"

func newFakeStripe(t *testing.T, now func() time.Time) *fakeStripe {
	f := &fakeStripe{ledger: newLedger(now), t: t, key: testStripeKey, meters: map[string]bool{"llm_tokens": true, "renders": true}}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

func stripeError(w http.ResponseWriter, status int, typ, code, msg string) {
	e := map[string]string{"type": typ, "message": msg}
	if code != "" {
		e["code"] = code
	}
	writeJSON(w, status, map[string]any{"error": e})
}

// stripeParams are the meter-event parameters Stripe takes.
var stripeParams = map[string]bool{"event_name": true, "identifier": true, "timestamp": true,
	"payload[stripe_customer_id]": true, "payload[value]": true}

func (f *fakeStripe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/billing/meter_events" {
		stripeError(w, http.StatusNotFound, "invalid_request_error", "", "Unrecognized request URL ("+r.Method+": "+r.URL.Path+").")
		return
	}
	if got := r.Header.Get("Authorization"); got != "Bearer "+f.key {
		// Real Stripe shows part of the key; this fake shows it all, to
		// prove the exporter scrubs it.
		stripeError(w, http.StatusUnauthorized, "invalid_request_error", "", "Invalid API Key provided: "+strings.TrimPrefix(got, "Bearer "))
		return
	}
	if r.Header.Get("Stripe-Version") == "" {
		f.t.Errorf("fake stripe: no Stripe-Version header")
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/x-www-form-urlencoded" {
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "", "Invalid request: content type "+ct)
		return
	}
	m := f.next()
	switch m {
	case goDown:
		breakOff(w)
		return
	case hang:
		f.hold(r)
		return
	case answer500:
		stripeError(w, http.StatusInternalServerError, "api_error", "", "An unknown error occurred")
		return
	case answer429:
		f.mu.Lock()
		ra := f.retryAfter
		f.mu.Unlock()
		if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		w.Header().Set("Stripe-Rate-Limited-Reason", "endpoint-rate")
		stripeError(w, http.StatusTooManyRequests, "invalid_request_error", "rate_limit", "Request rate limit exceeded.")
		return
	}
	if err := r.ParseForm(); err != nil {
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "", "Invalid form")
		return
	}
	f.mu.Lock()
	f.forms = append(f.forms, r.PostForm)
	f.mu.Unlock()
	for k := range r.PostForm {
		if !stripeParams[k] {
			stripeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_unknown", "Received unknown parameter: "+k)
			return
		}
	}
	name, id := r.PostForm.Get("event_name"), r.PostForm.Get("identifier")
	customer, value := r.PostForm.Get("payload[stripe_customer_id]"), r.PostForm.Get("payload[value]")
	switch {
	case name == "":
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_missing", "Missing required param: event_name.")
		return
	case !f.meters[name]:
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "", "No active meter found with event name "+name+".")
		return
	case id == "":
		// Stripe makes one up; tollgate must always send its own.
		f.t.Errorf("fake stripe: an event without identifier")
	case customer == "":
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "", "Customer mapping key stripe_customer_id not found in payload.")
		return
	}
	units, err := strconv.ParseInt(value, 10, 64)
	if err != nil {
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "", "Invalid value: "+value)
		return
	}
	if ts := r.PostForm.Get("timestamp"); ts != "" {
		sec, err := strconv.ParseInt(ts, 10, 64)
		now := f.now()
		switch {
		case err != nil:
			stripeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_invalid_integer", "Invalid integer: "+ts)
			return
		case time.Unix(sec, 0).Before(now.Add(-StripeMaxAge)):
			stripeError(w, http.StatusBadRequest, "invalid_request_error", "", "Timestamp must be within the past 35 days.")
			return
		case time.Unix(sec, 0).After(now.Add(StripeMaxFuture)):
			stripeError(w, http.StatusBadRequest, "invalid_request_error", "", "Timestamp must not be more than 5 minutes in the future.")
			return
		}
	}
	if !f.count(id, customer, units) {
		w.Header().Set("Stripe-Should-Retry", "false")
		stripeError(w, http.StatusBadRequest, "invalid_request_error", "", "An event already exists with identifier "+id+".")
		return
	}
	switch m {
	case count500:
		stripeError(w, http.StatusInternalServerError, "api_error", "", "An unknown error occurred")
		return
	case countHang:
		f.hold(r)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "billing.meter_event", "created": f.now().Unix(), "event_name": name, "identifier": id,
		"livemode": false, "payload": map[string]string{"stripe_customer_id": customer, "value": value},
		"timestamp": r.PostForm.Get("timestamp"),
	})
}

func (f *fakeStripe) exporter(clock *fakeClock, opts StripeOptions) *Stripe {
	opts.SecretKey = cmpOr(opts.SecretKey, f.key)
	opts.APIBase = f.srv.URL
	if opts.RatePerSecond == 0 {
		opts.RatePerSecond = -1
	}
	if clock != nil {
		opts.Now, opts.After = clock.Now, clock.After
	}
	if err := opts.Validate(); err != nil {
		f.t.Fatalf("StripeOptions.Validate = %v", err)
	}
	return NewStripe(opts)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// fakeOpenMeter is OpenMeter's ingest endpoint: a batch of CloudEvents,
// refused whole (400, a problem) if one event is invalid, else 204; it
// counts each (source, id) once.
type fakeOpenMeter struct {
	*ledger
	t     *testing.T
	token string
	srv   *httptest.Server
}

const testOpenMeterToken = "om_test_token_0123456789"

func newFakeOpenMeter(t *testing.T, now func() time.Time) *fakeOpenMeter {
	f := &fakeOpenMeter{ledger: newLedger(now), t: t, token: testOpenMeterToken}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail})
}

// omEvent is a CloudEvent as the fake reads it.
type omEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Subject     string          `json:"subject"`
	Time        string          `json:"time"`
	Data        json.RawMessage `json:"data"`
}

func (f *fakeOpenMeter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v1/events" {
		problem(w, http.StatusNotFound, "no route")
		return
	}
	if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
		problem(w, http.StatusUnauthorized, "invalid token "+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/cloudevents-batch+json" {
		problem(w, http.StatusBadRequest, "content type "+ct)
		return
	}
	m := f.next()
	switch m {
	case goDown:
		breakOff(w)
		return
	case hang:
		f.hold(r)
		return
	case answer500:
		problem(w, http.StatusInternalServerError, "internal")
		return
	case answer429:
		f.mu.Lock()
		ra := f.retryAfter
		f.mu.Unlock()
		if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		problem(w, http.StatusTooManyRequests, "rate limited")
		return
	}
	var batch []omEvent
	if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
		problem(w, http.StatusBadRequest, "not a batch: "+err.Error())
		return
	}
	type valid struct {
		key, subject string
		units        int64
	}
	var ok []valid
	for _, e := range batch {
		var data struct {
			Units *int64 `json:"units"`
		}
		_ = json.Unmarshal(e.Data, &data)
		_, terr := time.Parse(time.RFC3339, e.Time)
		switch {
		case e.SpecVersion != "1.0" || e.ID == "" || e.Source == "" || e.Type == "" || e.Subject == "":
			problem(w, http.StatusBadRequest, "invalid event "+e.ID+": a required attribute is missing")
			return
		case terr != nil:
			problem(w, http.StatusBadRequest, "invalid event "+e.ID+": time")
			return
		case data.Units == nil:
			problem(w, http.StatusBadRequest, "invalid event "+e.ID+": data.units")
			return
		}
		ok = append(ok, valid{e.Source + "/" + e.ID, e.Subject, *data.Units})
	}
	for _, v := range ok {
		f.count(v.key, v.subject, v.units)
	}
	switch m {
	case count500:
		problem(w, http.StatusInternalServerError, "internal")
		return
	case countHang:
		f.hold(r)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeOpenMeter) exporter(clock *fakeClock, opts OpenMeterOptions) *OpenMeter {
	opts.URL = f.srv.URL
	opts.Token = cmpOr(opts.Token, f.token)
	if clock != nil {
		opts.Now = clock.Now
	}
	if err := opts.Validate(); err != nil {
		f.t.Fatalf("OpenMeterOptions.Validate = %v", err)
	}
	return NewOpenMeter(opts)
}

// fakeLines is a team's endpoint taking JSON lines: it refuses a body with
// an event of negative units (400), and counts each id once.
type fakeLines struct {
	*ledger
	t      *testing.T
	token  string // "" takes requests without a token
	srv    *httptest.Server
	status int // the success status; default 200
	bodies []string
}

func newFakeLines(t *testing.T, now func() time.Time) *fakeLines {
	f := &fakeLines{ledger: newLedger(now), t: t}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeLines) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
		// Echoes the token it got, to prove the exporter scrubs it.
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "bad token " + strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")})
		return
	}
	if f.token == "" && r.Header.Get("Authorization") != "" {
		f.t.Errorf("fake lines: an Authorization header without a token configured")
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		http.Error(w, "content type", http.StatusUnsupportedMediaType)
		return
	}
	m := f.next()
	switch m {
	case goDown:
		breakOff(w)
		return
	case hang:
		f.hold(r)
		return
	case answer500:
		http.Error(w, "down", http.StatusBadGateway)
		return
	case answer429:
		f.mu.Lock()
		ra := f.retryAfter
		f.mu.Unlock()
		if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		http.Error(w, "slow down", http.StatusTooManyRequests)
		return
	}
	var events []usage.Event
	var raw strings.Builder
	sc := bufio.NewScanner(r.Body)
	for sc.Scan() {
		raw.WriteString(sc.Text())
		raw.WriteString("\n")
		var e usage.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"message": "line is not an event: " + err.Error()})
			return
		}
		if e.Units < 0 || e.ID == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"message": fmt.Sprintf("event %s: units must not be negative", e.ID)})
			return
		}
		events = append(events, e)
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, raw.String())
	f.mu.Unlock()
	for _, e := range events {
		f.count(e.ID, e.Customer, e.Units)
	}
	switch m {
	case count500:
		http.Error(w, "down", http.StatusInternalServerError)
		return
	case countHang:
		f.hold(r)
		return
	}
	w.WriteHeader(cmpOrInt(f.status, http.StatusOK))
}

func cmpOrInt(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

func (f *fakeLines) exporter(clock *fakeClock, opts HTTPOptions) *HTTP {
	opts.URL = f.srv.URL + "/usage"
	opts.Token = cmpOr(opts.Token, f.token)
	if clock != nil {
		opts.Now = clock.Now
	}
	if err := opts.Validate(); err != nil {
		f.t.Fatalf("HTTPOptions.Validate = %v", err)
	}
	return NewHTTP(opts)
}

// provider is one of the fakes with its exporter, for tests that run the
// loop against each.
type provider struct {
	name string
	*ledger
	exp usage.Exporter
	key func(usage.Event) string // the provider's de-duplication key
}

var providerNames = []string{"stripe", "openmeter", "http"}

// newProvider starts the fake named name and returns it with its exporter
// (Stripe's sends one request at a time, without a rate limit, so a test
// knows which request meets which answer).
func newProvider(t *testing.T, name string, clock *fakeClock) provider {
	id := func(e usage.Event) string { return e.ID }
	switch name {
	case "stripe":
		f := newFakeStripe(t, clock.Now)
		return provider{name, f.ledger, f.exporter(clock, StripeOptions{Concurrency: 1}), id}
	case "openmeter":
		f := newFakeOpenMeter(t, clock.Now)
		return provider{name, f.ledger, f.exporter(clock, OpenMeterOptions{}), func(e usage.Event) string { return "tollgate/" + e.ID }}
	case "http":
		f := newFakeLines(t, clock.Now)
		return provider{name, f.ledger, f.exporter(clock, HTTPOptions{}), id}
	}
	t.Fatalf("no provider %q", name)
	return provider{}
}
