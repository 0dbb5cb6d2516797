package export

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// TestStripeForm checks the form of one meter event as the fake receives
// it, field by field.
func TestStripeForm(t *testing.T) {
	base := makeEvents("form", 1)[0]
	tests := []struct {
		name   string
		opts   StripeOptions
		edit   func(e *usage.Event)
		want   map[string]string
		absent []string
	}{
		{
			name: "every field",
			want: map[string]string{
				"event_name": "llm_tokens", "identifier": base.ID, "payload[stripe_customer_id]": "cus_0",
				"payload[value]": "1", "timestamp": strconv.FormatInt(t0.Unix(), 10),
			},
		},
		{
			name: "no customer: the subject is the customer",
			edit: func(e *usage.Event) { e.Customer = "" },
			want: map[string]string{"payload[stripe_customer_id]": "team-0"},
		},
		{
			name: "meter mapped to an event name; characters escaped",
			opts: StripeOptions{EventNames: map[string]string{"llm_tokens": "renders"}},
			edit: func(e *usage.Event) { e.Customer = "cus_a&b=c d+é"; e.Units = 1234567 },
			want: map[string]string{"event_name": "renders", "payload[stripe_customer_id]": "cus_a&b=c d+é", "payload[value]": "1234567"},
		},
		{
			name: "an end ahead of now is sent as now",
			edit: func(e *usage.Event) { e.End = t0.Add(time.Hour) },
			want: map[string]string{"timestamp": strconv.FormatInt(t0.Unix(), 10)},
		},
		{
			name:   "no end: no timestamp (Stripe takes its own time)",
			edit:   func(e *usage.Event) { e.End = time.Time{} },
			absent: []string{"timestamp"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			f := newFakeStripe(t, clock.Now)
			e := base
			if tt.edit != nil {
				tt.edit(&e)
			}
			if err := f.exporter(clock, tt.opts).Export(context.Background(), []usage.Event{e}); err != nil {
				t.Fatalf("Export = %v, want nil", err)
			}
			if len(f.forms) != 1 {
				t.Fatalf("fake got %d forms, want 1", len(f.forms))
			}
			form := url.Values(f.forms[0])
			for k, want := range tt.want {
				if got := form.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			for _, k := range tt.absent {
				if form.Has(k) {
					t.Errorf("%s = %q, want absent", k, form.Get(k))
				}
			}
		})
	}
}

// TestStripeCustomPayloadKeys: a meter configured with other payload keys
// gets them.
func TestStripeCustomPayloadKeys(t *testing.T) {
	var got url.Values
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		got = r.PostForm
	}))
	defer srv.Close()
	s := NewStripe(StripeOptions{SecretKey: testStripeKey, APIBase: srv.URL, CustomerKey: "account", ValueKey: "tokens", RatePerSecond: -1})
	if err := s.Export(context.Background(), makeEvents("keys", 1)); err != nil {
		t.Fatal(err)
	}
	if got.Get("payload[account]") != "cus_0" || got.Get("payload[tokens]") != "1" || got.Has("payload[value]") {
		t.Errorf("form = %v, want payload[account] and payload[tokens]", got)
	}
}

// TestStripeAnswers: how each answer Stripe can give is read.
func TestStripeAnswers(t *testing.T) {
	type answer struct {
		status int
		header map[string]string
		body   string
	}
	tests := []struct {
		name           string
		answer         answer
		wantNil        bool
		wantKind       Kind
		wantRetryAfter time.Duration // 0: no *usage.RetryAfterError
		wantCode       string
	}{
		{name: "200", answer: answer{status: 200, body: `{"object":"billing.meter_event"}`}, wantNil: true},
		{name: "duplicate identifier: already counted", answer: answer{400, map[string]string{"Stripe-Should-Retry": "false"},
			`{"error":{"type":"invalid_request_error","message":"An event already exists with identifier 0f3a."}}`}, wantNil: true},
		{name: "400 invalid parameter", answer: answer{400, nil,
			`{"error":{"type":"invalid_request_error","code":"parameter_invalid_integer","message":"Invalid integer: x"}}`}, wantKind: KindRejected, wantCode: "parameter_invalid_integer"},
		{name: "400 that Stripe says to retry", answer: answer{400, map[string]string{"Stripe-Should-Retry": "true"},
			`{"error":{"type":"invalid_request_error","message":"lock timeout"}}`}, wantKind: KindUnavailable, wantCode: "invalid_request_error"},
		{name: "429 with Retry-After", answer: answer{429, map[string]string{"Retry-After": "3", "Stripe-Rate-Limited-Reason": "global-rate"},
			`{"error":{"type":"invalid_request_error","code":"rate_limit"}}`}, wantKind: KindRateLimited, wantRetryAfter: 3 * time.Second, wantCode: "global-rate"},
		{name: "429 without Retry-After", answer: answer{429, nil, `{"error":{"code":"rate_limit"}}`}, wantKind: KindRateLimited, wantCode: "rate_limit"},
		{name: "429 with an absurd Retry-After", answer: answer{429, map[string]string{"Retry-After": "99999999"}, ``}, wantKind: KindRateLimited, wantRetryAfter: MaxRetryAfter},
		{name: "429 with a garbled Retry-After", answer: answer{429, map[string]string{"Retry-After": "soon"}, ``}, wantKind: KindRateLimited},
		{name: "503 with an HTTP-date Retry-After", answer: answer{503, map[string]string{"Retry-After": t0.Add(10 * time.Second).Format(http.TimeFormat)}, ``},
			wantKind: KindUnavailable, wantRetryAfter: 10 * time.Second},
		{name: "500", answer: answer{500, nil, `{"error":{"type":"api_error"}}`}, wantKind: KindUnavailable, wantCode: "api_error"},
		{name: "409 idempotency conflict", answer: answer{409, nil, `{"error":{"type":"idempotency_error"}}`}, wantKind: KindUnavailable, wantCode: "idempotency_error"},
		{name: "401 wrong key: retried, never dropped", answer: answer{401, nil, `{"error":{"type":"invalid_request_error"}}`}, wantKind: KindAuth, wantCode: "invalid_request_error"},
		{name: "403 key lacks permission", answer: answer{403, nil, `{"error":{"type":"invalid_request_error"}}`}, wantKind: KindAuth, wantCode: "invalid_request_error"},
		{name: "404 wrong URL: retried, never dropped", answer: answer{404, nil, `{"error":{"type":"invalid_request_error"}}`}, wantKind: KindEndpoint, wantCode: "invalid_request_error"},
		{name: "a body that is not JSON", answer: answer{502, nil, `<html>bad gateway</html>`}, wantKind: KindUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.answer.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.answer.status)
				_, _ = w.Write([]byte(tt.answer.body))
			}))
			defer srv.Close()
			clock := newFakeClock()
			s := NewStripe(StripeOptions{SecretKey: testStripeKey, APIBase: srv.URL, RatePerSecond: -1, Now: clock.Now, After: clock.After})
			events := makeEvents("answers", 1)
			err := s.Export(context.Background(), events)
			if tt.wantNil {
				if err != nil {
					t.Fatalf("Export = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Export = nil, want an error")
			}
			if got := KindOf(err); got != tt.wantKind {
				t.Errorf("KindOf = %s, want %s (%v)", got, tt.wantKind, err)
			}
			var pe *PartialError
			gotPermanent := errors.As(err, &pe) && pe.Permanent[events[0].ID] != nil
			if gotPermanent != tt.wantKind.Permanent() {
				t.Errorf("refused for good = %v, want %v (%v)", gotPermanent, tt.wantKind.Permanent(), err)
			}
			var ra *usage.RetryAfterError
			var gotAfter time.Duration
			if errors.As(err, &ra) {
				gotAfter = ra.After
			}
			if gotAfter != tt.wantRetryAfter {
				t.Errorf("Retry-After = %v, want %v", gotAfter, tt.wantRetryAfter)
			}
			var e *Error
			if gotPermanent {
				err = pe.Permanent[events[0].ID]
			}
			if !errors.As(err, &e) {
				t.Fatalf("no *Error in %v", err)
			}
			if e.Status != tt.answer.status || e.Code != tt.wantCode {
				t.Errorf("Error status, code = %d, %q, want %d, %q", e.Status, e.Code, tt.answer.status, tt.wantCode)
			}
		})
	}
}

// TestStripeSecretNeverInErrors: a refusal that echoes the key, a wrong
// key and a connection failure all give errors without the key.
func TestStripeSecretNeverInErrors(t *testing.T) {
	clock := newFakeClock()
	f := newFakeStripe(t, clock.Now)
	const wrong = "sk_live_51WrongKeyThatMustNeverBeLogged987"
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	// Real Stripe echoes part of a refused key.
	masked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stripeError(w, http.StatusUnauthorized, "invalid_request_error", "", "Invalid API Key provided: sk_live_****************g987")
	}))
	defer masked.Close()
	tests := []struct {
		name string
		exp  *Stripe
	}{
		{"wrong key echoed whole by the fake", f.exporter(clock, StripeOptions{SecretKey: wrong})},
		{"wrong key echoed in part, as Stripe does", NewStripe(StripeOptions{SecretKey: wrong, APIBase: masked.URL, RatePerSecond: -1})},
		{"connection refused", NewStripe(StripeOptions{SecretKey: wrong, APIBase: closed.URL, RatePerSecond: -1})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.exp.Export(context.Background(), makeEvents("secret", 2))
			if err == nil {
				t.Fatal("Export = nil, want an error")
			}
			if KindOf(err).Permanent() {
				t.Errorf("KindOf = %s: a wrong key or a dead host must be retried", KindOf(err))
			}
			for _, secret := range []string{wrong, "WrongKeyThat", "sk_live_"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q holds the key", err)
				}
			}
		})
	}
}

// TestStripeBatch: a batch where one event names no meter Stripe knows and
// one is too old: those two are refused for good (the old one without a
// request), the rest delivered.
func TestStripeBatch(t *testing.T) {
	clock := newFakeClock()
	f := newFakeStripe(t, clock.Now)
	events := makeEvents("batch", 8)
	events[2].Meter = "nope"
	events[5].End = t0.Add(-DefaultStripeMaxAge - time.Minute)
	err := f.exporter(clock, StripeOptions{Concurrency: 3}).Export(context.Background(), events)
	var pe *PartialError
	if !errors.As(err, &pe) {
		t.Fatalf("Export = %v, want a *PartialError", err)
	}
	if len(pe.Retry) != 0 || pe.Err != nil {
		t.Errorf("Retry = %v, Err = %v, want none", pe.Retry, pe.Err)
	}
	if got, want := KindOf(pe.Permanent[events[2].ID]), KindRejected; got != want {
		t.Errorf("unknown meter: %s, want %s", got, want)
	}
	if got, want := KindOf(pe.Permanent[events[5].ID]), KindTooOld; got != want {
		t.Errorf("old event: %s, want %s", got, want)
	}
	if len(pe.Permanent) != 2 {
		t.Errorf("Permanent = %v, want 2 events", pe.Permanent)
	}
	if f.received[events[5].ID] != 0 {
		t.Errorf("the too-old event reached Stripe")
	}
	good := slices.Concat(events[:2], events[3:5], events[6:])
	f.checkExactlyOnce(t, func(e usage.Event) string { return e.ID }, good)
	if got, want := f.Requests(), 7; got != want {
		t.Errorf("requests = %d, want %d", got, want)
	}
}

// TestStripeStopsAtFirstRetryable: after a 500, no new request starts;
// the events not sent are retried with the failed one.
func TestStripeStopsAtFirstRetryable(t *testing.T) {
	clock := newFakeClock()
	f := newFakeStripe(t, clock.Now)
	f.setScript(func(n int) mode {
		if n == 2 {
			return answer500
		}
		return answerOK
	}, "")
	events := makeEvents("stop", 6)
	err := f.exporter(clock, StripeOptions{Concurrency: 1}).Export(context.Background(), events)
	var pe *PartialError
	if !errors.As(err, &pe) {
		t.Fatalf("Export = %v, want a *PartialError", err)
	}
	if got, want := pe.Retry, ids(events[2:]); !slices.Equal(got, want) {
		t.Errorf("Retry = %v, want %v", got, want)
	}
	if got := KindOf(err); got != KindUnavailable {
		t.Errorf("KindOf = %s, want unavailable", got)
	}
	if got, want := f.Requests(), 3; got != want {
		t.Errorf("requests = %d, want %d", got, want)
	}
}

// TestStripeConcurrentAndTwice: many events through many workers are each
// counted once; the same batch again is all duplicates, all delivered.
func TestStripeConcurrentAndTwice(t *testing.T) {
	clock := newFakeClock()
	f := newFakeStripe(t, clock.Now)
	s := f.exporter(clock, StripeOptions{Concurrency: 8})
	events := makeEvents("many", 200)
	for round := range 2 {
		if err := s.Export(context.Background(), events); err != nil {
			t.Fatalf("round %d: Export = %v, want nil", round, err)
		}
	}
	f.checkExactlyOnce(t, func(e usage.Event) string { return e.ID }, events)
	if got, want := f.Requests(), 400; got != want {
		t.Errorf("requests = %d, want %d", got, want)
	}
}

// TestStripeRateLimit: the token bucket spaces the requests on the clock.
func TestStripeRateLimit(t *testing.T) {
	clock := newFakeClock()
	f := newFakeStripe(t, clock.Now)
	s := f.exporter(clock, StripeOptions{RatePerSecond: 10, Burst: 2, Concurrency: 1})
	if err := s.Export(context.Background(), makeEvents("rate", 5)); err != nil {
		t.Fatal(err)
	}
	// Two at once (the burst), then one every 100ms.
	want := []time.Duration{100 * time.Millisecond, 100 * time.Millisecond, 100 * time.Millisecond}
	if got := clock.Sleeps(); !slices.Equal(got, want) {
		t.Errorf("waits = %v, want %v", got, want)
	}
}

// TestStripeDefaultRate: the default rate depends on the key's mode.
func TestStripeDefaultRate(t *testing.T) {
	tests := []struct {
		key          string
		wantInterval time.Duration
	}{
		{"sk_test_abc", time.Second / DefaultStripeTestRate},
		{"rk_test_abc", time.Second / DefaultStripeTestRate},
		{"sk_live_abc", time.Second / DefaultStripeLiveRate},
		{"rk_live_abc", time.Second / DefaultStripeLiveRate},
	}
	for _, tt := range tests {
		s := NewStripe(StripeOptions{SecretKey: tt.key})
		if got := s.limit.interval; got != tt.wantInterval {
			t.Errorf("%s: interval %v, want %v", tt.key, got, tt.wantInterval)
		}
	}
}

func TestStripeValidate(t *testing.T) {
	tests := []struct {
		name    string
		opts    StripeOptions
		wantErr string
	}{
		{"defaults", StripeOptions{SecretKey: "sk_test_x"}, ""},
		{"loopback http", StripeOptions{SecretKey: "sk_test_x", APIBase: "http://127.0.0.1:1234"}, ""},
		{"no key", StripeOptions{}, "secret key is required"},
		{"key with a newline", StripeOptions{SecretKey: "sk_test_x\n"}, "white space"},
		{"http elsewhere", StripeOptions{SecretKey: "sk_test_x", APIBase: "http://stripe.example.com"}, "must use https"},
		{"userinfo", StripeOptions{SecretKey: "sk_test_x", APIBase: "https://u:p@api.stripe.com"}, "userinfo"},
		{"not a URL", StripeOptions{SecretKey: "sk_test_x", APIBase: "api.stripe.com"}, "not an absolute"},
		{"max age past Stripe's", StripeOptions{SecretKey: "sk_test_x", MaxAge: 36 * 24 * time.Hour}, "max age"},
		{"payload key with brackets", StripeOptions{SecretKey: "sk_test_x", CustomerKey: "a]b"}, "plain word"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate = %v, want an error with %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), ":p@") {
				t.Errorf("Validate = %v: it quotes the password", err)
			}
		})
	}
}

func TestFormEscape(t *testing.T) {
	for _, s := range []string{"", "abc", "a b", "a&b=c", "payload[value]", "é~-._*'()!", "\x00\xff"} {
		if got, want := formEscape(s), url.QueryEscape(s); got != want {
			t.Errorf("formEscape(%q) = %q, want %q", s, got, want)
		}
	}
}
