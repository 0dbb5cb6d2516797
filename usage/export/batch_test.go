package export

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// TestOpenMeterBatch checks the request OpenMeter gets: one batch of
// CloudEvents 1.0, with the fields OpenMeter's ingest API documents.
func TestOpenMeterBatch(t *testing.T) {
	var body []byte
	var header http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header = r.Header
		body, _ = io.ReadAll(r.Body)
		if r.URL.Path != "/api/v1/events" {
			t.Errorf("path %s, want /api/v1/events", r.URL.Path)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	events := makeEvents("om", 2)
	events[1].Customer = "" // the subject stands in
	m := NewOpenMeter(OpenMeterOptions{URL: srv.URL + "/", Token: testOpenMeterToken, Source: "tollgate-eu", Types: map[string]string{"llm_tokens": "tokens"}})
	if err := m.Export(context.Background(), events); err != nil {
		t.Fatalf("Export = %v, want nil", err)
	}
	if got, want := header.Get("Content-Type"), "application/cloudevents-batch+json"; got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
	if got, want := header.Get("Authorization"), "Bearer "+testOpenMeterToken; got != want {
		t.Errorf("Authorization = %q, want %q", got, want)
	}
	var got []map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("body is not a JSON array: %v\n%s", err, body)
	}
	want := []map[string]any{
		{"specversion": "1.0", "id": events[0].ID, "source": "tollgate-eu", "type": "tokens", "subject": "cus_0",
			"time": "2026-11-03T12:00:00Z", "datacontenttype": "application/json",
			"data": map[string]any{"units": 1.0, "reserved": 4096.0, "meter": "llm_tokens", "route": "chat", "status": 200.0, "subject": "team-0", "start": "2026-11-03T11:59:58Z"}},
		{"specversion": "1.0", "id": events[1].ID, "source": "tollgate-eu", "type": "tokens", "subject": "team-1",
			"time": "2026-11-03T12:00:00Z", "datacontenttype": "application/json",
			"data": map[string]any{"units": 2.0, "reserved": 4096.0, "meter": "llm_tokens", "route": "chat", "status": 200.0, "subject": "team-1", "start": "2026-11-03T11:59:58Z"}},
	}
	gotJSON, _ := json.Marshal(got)
	wantJSON, _ := json.Marshal(want)
	if string(gotJSON) != string(wantJSON) {
		t.Errorf("batch =\n%s\nwant\n%s", gotJSON, wantJSON)
	}
}

// TestBatchSplit: a provider that refuses a whole batch for one bad event
// gets the batch split until the bad events are found; they are refused
// for good, the rest delivered once, in few requests.
func TestBatchSplit(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T, clock *fakeClock) (usage.Exporter, *ledger, func(usage.Event) string)
		bad  func(e *usage.Event)
	}{
		{
			name: "openmeter: an event with no subject",
			make: func(t *testing.T, clock *fakeClock) (usage.Exporter, *ledger, func(usage.Event) string) {
				f := newFakeOpenMeter(t, clock.Now)
				return f.exporter(clock, OpenMeterOptions{}), f.ledger, func(e usage.Event) string { return "tollgate/" + e.ID }
			},
			bad: func(e *usage.Event) { e.Customer, e.Subject = "", "" },
		},
		{
			name: "http: an event the team's endpoint refuses",
			make: func(t *testing.T, clock *fakeClock) (usage.Exporter, *ledger, func(usage.Event) string) {
				f := newFakeLines(t, clock.Now)
				return f.exporter(clock, HTTPOptions{}), f.ledger, func(e usage.Event) string { return e.ID }
			},
			bad: func(e *usage.Event) { e.Units = -1 },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			exp, l, key := tt.make(t, clock)
			events := makeEvents("split", 64)
			tt.bad(&events[9])
			tt.bad(&events[40])
			err := exp.Export(context.Background(), events)
			var pe *PartialError
			if !errors.As(err, &pe) {
				t.Fatalf("Export = %v, want a *PartialError", err)
			}
			if len(pe.Retry) != 0 {
				t.Errorf("Retry = %v, want none", pe.Retry)
			}
			var refused []string
			for id, err := range pe.Permanent {
				refused = append(refused, id)
				if KindOf(err) != KindRejected {
					t.Errorf("%s: %s, want rejected", id, KindOf(err))
				}
			}
			slices.Sort(refused)
			want := []string{events[9].ID, events[40].ID}
			slices.Sort(want)
			if !slices.Equal(refused, want) {
				t.Errorf("refused %v, want %v", refused, want)
			}
			good := slices.Concat(events[:9], events[10:40], events[41:])
			l.checkExactlyOnce(t, key, good)
			// Two bad events in 64: at most 2·2·log2(64)+1 requests.
			if got := l.Requests(); got > 25 {
				t.Errorf("requests = %d, want at most 25", got)
			}
		})
	}
}

// TestBatchStopsAfterRetryable: when a split half fails and may be
// retried, the other half is not sent: both are retried.
func TestBatchStopsAfterRetryable(t *testing.T) {
	clock := newFakeClock()
	f := newFakeLines(t, clock.Now)
	f.setScript(func(n int) mode {
		if n == 1 {
			return answer429
		}
		return answerOK
	}, "5")
	events := makeEvents("half", 8)
	events[0].Units = -1 // request 0: the batch is refused; request 1: the first half is rate-limited
	err := f.exporter(clock, HTTPOptions{}).Export(context.Background(), events)
	var ra *usage.RetryAfterError
	if !errors.As(err, &ra) || ra.After != 5*time.Second {
		t.Fatalf("Export = %v, want a Retry-After of 5s", err)
	}
	if got := KindOf(err); got != KindRateLimited {
		t.Errorf("KindOf = %s, want rate_limited", got)
	}
	if got, want := f.Requests(), 2; got != want {
		t.Errorf("requests = %d, want %d", got, want)
	}
	// Nothing delivered, nothing refused: the plain cause, all retried.
	var pe *PartialError
	if errors.As(err, &pe) {
		t.Errorf("Export = %v, want the cause alone when every event is to be retried", err)
	}
}

// TestHTTPLines checks the body of the generic exporter: one event a
// line, each decoding to the event sent; no Authorization without a token.
func TestHTTPLines(t *testing.T) {
	for _, status := range []int{200, 202, 204} {
		clock := newFakeClock()
		f := newFakeLines(t, clock.Now)
		f.status = status
		events := makeEvents("lines", 3)
		if err := f.exporter(clock, HTTPOptions{}).Export(context.Background(), events); err != nil {
			t.Fatalf("%d: Export = %v, want nil", status, err)
		}
		if len(f.bodies) != 1 {
			t.Fatalf("%d: %d bodies, want 1", status, len(f.bodies))
		}
		lines := strings.Split(strings.TrimSuffix(f.bodies[0], "\n"), "\n")
		if len(lines) != len(events) {
			t.Fatalf("%d: %d lines, want %d", status, len(lines), len(events))
		}
		for i, line := range lines {
			var got usage.Event
			if err := json.Unmarshal([]byte(line), &got); err != nil {
				t.Fatal(err)
			}
			if !got.Start.Equal(events[i].Start) || !got.End.Equal(events[i].End) {
				t.Errorf("line %d times = %v..%v, want %v..%v", i, got.Start, got.End, events[i].Start, events[i].End)
			}
			got.Start, got.End = events[i].Start, events[i].End
			if got != events[i] {
				t.Errorf("line %d = %+v, want %+v", i, got, events[i])
			}
		}
		f.checkExactlyOnce(t, func(e usage.Event) string { return e.ID }, events)
	}
}

// TestHTTPToken: with a token, the endpoint gets it; a wrong one is an
// auth failure, retried, and the token is in no error. A URL with a
// secret in its query is not quoted with it.
func TestHTTPToken(t *testing.T) {
	clock := newFakeClock()
	f := newFakeLines(t, clock.Now)
	f.token = "team-token-123"
	if err := f.exporter(clock, HTTPOptions{}).Export(context.Background(), makeEvents("tok", 2)); err != nil {
		t.Fatalf("right token: Export = %v, want nil", err)
	}
	err := f.exporter(clock, HTTPOptions{Token: "wrong-token-456"}).Export(context.Background(), makeEvents("tok", 2))
	if KindOf(err) != KindAuth {
		t.Errorf("wrong token: KindOf = %s (%v), want auth", KindOf(err), err)
	}
	if err == nil || strings.Contains(err.Error(), "wrong-token-456") {
		t.Errorf("wrong token: error %v holds the token", err)
	}

	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	h := NewHTTP(HTTPOptions{URL: closed.URL + "/in?sig=query-secret-789", Name: "pipeline"})
	err = h.Export(context.Background(), makeEvents("tok", 1))
	if err == nil || strings.Contains(err.Error(), "query-secret-789") {
		t.Errorf("error %v holds the URL's query", err)
	}
	if !strings.HasPrefix(err.Error(), "pipeline: unavailable") {
		t.Errorf("error %q, want it to start with the exporter's name and kind", err)
	}
}

func TestBatchValidate(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		wantErr string
	}{
		{"openmeter ok", OpenMeterOptions{URL: "https://openmeter.cloud", Token: "t"}.Validate(), ""},
		{"openmeter self-hosted, no token, http", OpenMeterOptions{URL: "http://openmeter.internal:8888"}.Validate(), ""},
		{"openmeter no URL", OpenMeterOptions{}.Validate(), "URL is required"},
		{"openmeter token over http", OpenMeterOptions{URL: "http://openmeter.internal", Token: "t"}.Validate(), "must use https"},
		{"http ok", HTTPOptions{URL: "https://usage.example.com/in", Token: "t"}.Validate(), ""},
		{"http no URL", HTTPOptions{}.Validate(), "URL is required"},
		{"http userinfo", HTTPOptions{URL: "https://u:secretpw@usage.example.com"}.Validate(), "userinfo"},
		{"http token with a newline", HTTPOptions{URL: "https://usage.example.com", Token: "a\nb"}.Validate(), "white space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.wantErr == "" {
				if tt.err != nil {
					t.Errorf("Validate = %v, want nil", tt.err)
				}
				return
			}
			if tt.err == nil || !strings.Contains(tt.err.Error(), tt.wantErr) {
				t.Errorf("Validate = %v, want an error with %q", tt.err, tt.wantErr)
			}
			if tt.err != nil && strings.Contains(tt.err.Error(), "secretpw") {
				t.Errorf("Validate = %v: it quotes the password", tt.err)
			}
		})
	}
}

// TestStatusKind is the table every exporter reads statuses by.
func TestStatusKind(t *testing.T) {
	tests := map[int]Kind{
		400: KindRejected, 413: KindRejected, 422: KindRejected,
		401: KindAuth, 403: KindAuth, 407: KindAuth,
		404: KindEndpoint, 405: KindEndpoint, 415: KindEndpoint, 301: KindEndpoint,
		408: KindUnavailable, 409: KindUnavailable, 500: KindUnavailable, 502: KindUnavailable, 503: KindUnavailable,
		429: KindRateLimited,
	}
	for status, want := range tests {
		if got := statusKind(status); got != want {
			t.Errorf("statusKind(%d) = %s, want %s", status, got, want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"12", 12 * time.Second, true},
		{"-1", 0, false},
		{"1e9", 0, false},
		{"86400", MaxRetryAfter, true},
		{t0.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{t0.Add(-time.Minute).Format(http.TimeFormat), 0, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, t0)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("parseRetryAfter(%q) = %v, %v, want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

// TestPartialErrorKind: KindOf and errors.As see through a PartialError to
// its cause.
func TestPartialErrorKind(t *testing.T) {
	cause := &usage.RetryAfterError{After: time.Second, Err: &Error{Provider: "stripe", Kind: KindRateLimited, Status: 429}}
	err := error(&PartialError{Retry: []string{"a"}, Permanent: map[string]error{"b": &Error{Kind: KindRejected}}, Err: cause})
	if got := KindOf(err); got != KindRateLimited {
		t.Errorf("KindOf = %s, want rate_limited", got)
	}
	var ra *usage.RetryAfterError
	if !errors.As(err, &ra) {
		t.Error("errors.As(*usage.RetryAfterError) = false, want true")
	}
	if got := err.Error(); !strings.Contains(got, "1 events to retry") || !strings.Contains(got, "1 events refused for good (b:") {
		t.Errorf("Error() = %q", got)
	}
}
