package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/asynclog"
	"github.com/tollgate-authz/tollgate/policy"
)

// hostile are strings a client controls (request id, method, path) or that
// a source may hold, chosen to exercise every escape slog's JSON handler
// makes and the bytes it leaves alone.
var hostile = []string{
	"",
	`plain-request-id`,
	`quote " and backslash \ and \"escaped\"`,
	"newline \n cr \r tab \t",
	"nul \x00 bell \x07 esc \x1b unit-sep \x1f del \x7f",
	"invalid utf-8 \xff\xfe and a lone continuation \x80",
	"truncated three-byte \xe2\x80 at the end \xe2",
	"line separator \u2028 paragraph separator \u2029 between",
	"\u2028\u2029",
	"<script>alert('x')</script> & friends",
	"unicode: é ü 日本語 🚀 \ufeff \ufffd",
	"/v1/search/../../etc/passwd;%00",
	strings.Repeat("long/", 400),
	"\xed\xa0\x80 a UTF-16 surrogate encoded as UTF-8",
}

// lineFromSlog is the line slog's JSON handler (no options), as serve
// builds it, writes for the decision at t.
func lineFromSlog(t *testing.T, at time.Time, res *Result, method, path string) string {
	t.Helper()
	var buf bytes.Buffer
	rec := slog.NewRecord(at, slog.LevelInfo, "decision", 0)
	rec.AddAttrs(decisionAttrs(nil, res, method, path)...)
	if err := slog.NewJSONHandler(&buf, nil).Handle(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestDecisionLineMatchesSlog: the hand-written encoder writes, byte for
// byte, what slog's JSON handler writes for the same decision, for every
// combination of members and for hostile strings in every string member.
func TestDecisionLineMatchesSlog(t *testing.T) {
	at := time.Date(2026, 12, 1, 16, 4, 5, 123456789, time.UTC)
	full := Result{
		RequestID: "req-1", DecisionID: "0123456789abcdef", Code: policy.QuotaExhausted, Status: 402,
		Route: "search", Subject: "sub-1", Plan: "free", KeyID: "9f8cfdb1", CredFrom: "api_key",
		Cache: entitlement.CacheStale, Looked: true, Duration: 1234567 * time.Nanosecond,
		TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", Payer: "0xabc", Payment: "per_call",
	}
	cases := []struct {
		name         string
		res          Result
		method, path string
	}{
		{"zero result", Result{}, "", ""},
		{"allow, bare", Result{Allowed: true, Status: 200, Code: policy.OK}, "GET", "/v1/search"},
		{"deny, every member", full, "POST", "/v1/chat"},
		{"shadow deny", func() Result { r := full; r.Allowed, r.Shadow = true, true; return r }(), "GET", "/"},
		{"payment without payer", Result{Payment: "top_up", Status: 402}, "GET", "/"},
		{"negative duration", Result{Duration: -5 * time.Millisecond}, "GET", "/"},
		{"sub-microsecond duration", Result{Duration: 999}, "GET", "/"},
		{"unknown code and cache outcome", Result{Code: policy.Code(250), Cache: entitlement.CacheOutcome(99), Looked: true}, "GET", "/"},
		{"large status", Result{Status: 1 << 40}, "GET", "/"},
	}
	for _, s := range hostile {
		r := full
		r.RequestID, r.DecisionID, r.Route, r.Subject, r.Plan = s, s, s, s, s
		r.KeyID, r.CredFrom, r.TraceID, r.Payer, r.Payment = s, s, s, s, s
		if r.Payment == "" {
			r.Payment = "per_call" // keep the payer member in the line
		}
		cases = append(cases, struct {
			name         string
			res          Result
			method, path string
		}{"hostile " + strings.ToValidUTF8(s[:min(len(s), 20)], "?"), r, s, s})
	}
	times := []time.Time{
		at,
		time.Date(2026, 12, 1, 16, 4, 5, 0, time.UTC),                            // no fraction
		time.Date(2026, 12, 1, 16, 4, 5, 120000000, time.FixedZone("CET", 3600)), // trailing zeros, an offset
		time.Date(1, 1, 1, 0, 0, 0, 1, time.FixedZone("odd", -(9*3600+30*60+7))), // a zone with seconds
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Now(), // with a monotonic reading, in the local zone
	}
	for _, c := range cases {
		for _, tm := range times {
			got := string(appendDecisionLine(nil, tm, &c.res, c.method, c.path))
			want := lineFromSlog(t, tm, &c.res, c.method, c.path)
			if got != want {
				t.Errorf("%s at %v:\n got %q\nwant %q", c.name, tm, got, want)
			}
		}
	}
}

// TestLogStringIsValidJSON: whatever the input, the quoted string is one
// JSON string that decodes to the input with invalid bytes replaced.
func TestLogStringIsValidJSON(t *testing.T) {
	for _, s := range hostile {
		b := appendLogString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Errorf("%q: %v (encoded %q)", s, err, b)
			continue
		}
		if want := replaceInvalid(s); got != want {
			t.Errorf("%q decodes to %q, want %q", s, got, want)
		}
		if bytes.ContainsAny(b, "\n\r\u2028\u2029") {
			t.Errorf("%q: encoded %q still breaks a line", s, b)
		}
	}
}

// replaceInvalid is s with each byte of invalid UTF-8 replaced by U+FFFD,
// as encoding/json decodes it.
func replaceInvalid(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		b.WriteRune(r) // RuneError for an invalid byte
		i += size
	}
	return b.String()
}

// FuzzDecisionLine holds the encoder to slog's JSON handler for any string
// in the members a client or a source controls.
func FuzzDecisionLine(f *testing.F) {
	for _, s := range hostile {
		f.Add(s, s, int64(402))
	}
	at := time.Date(2026, 12, 1, 16, 4, 5, 123456789, time.UTC)
	f.Fuzz(func(t *testing.T, a, b string, n int64) {
		res := Result{RequestID: a, DecisionID: b, Route: a, Subject: b, Plan: a, KeyID: b, CredFrom: a,
			TraceID: b, Payment: a, Payer: b, Status: int(n), Duration: time.Duration(n), Looked: n%2 == 0, Shadow: n%3 == 0}
		got := string(appendDecisionLine(nil, at, &res, a, b))
		if want := lineFromSlog(t, at, &res, a, b); got != want {
			t.Fatalf("\n got %q\nwant %q", got, want)
		}
	})
}

// lockedWriter is a log sink for two writers at once (the handler and the
// encoder), as asynclog.Writer is.
type lockedWriter struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newLockedWriter() *lockedWriter { return &lockedWriter{mu: make(chan struct{}, 1)} }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu <- struct{}{}
	defer func() { <-w.mu }()
	return w.buf.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu <- struct{}{}
	defer func() { <-w.mu }()
	return w.buf.String()
}

// TestWriteDecisionAllocatesNothing: a line is encoded into a pooled
// buffer, so that a flood of refusals does not allocate for its log.
func TestWriteDecisionAllocatesNothing(t *testing.T) {
	s := &Server{decisionLog: newLockedWriter()}
	res := &Result{RequestID: "req", DecisionID: "d", Code: policy.QuotaExhausted, Status: 402, Route: "search",
		Subject: "sub", Plan: "free", KeyID: "9f8c", CredFrom: "api_key", Looked: true}
	s.writeDecision(res, "GET", "/v1/search") // fill the pool
	got := testing.AllocsPerRun(100, func() { s.writeDecision(res, "GET", "/v1/search") })
	// The locked writer's buffer grows now and then; the encoder itself
	// must not allocate.
	if got >= 1 {
		t.Errorf("writeDecision allocates %.1f times a line, want 0", got)
	}
}

// BenchmarkDecisionLog is one refusal's decision line written into an
// asynclog.Writer (in front of a discarding sink), as serve writes it:
// through slog's JSON handler (no DecisionLog) and encoded by hand.
func BenchmarkDecisionLog(b *testing.B) {
	res := &Result{RequestID: "0b9c4d3e-5f7a-4b1c-9d2e-3f4a5b6c7d8e", DecisionID: "5f0e6a1c9b2d4e7f", Code: policy.QuotaExhausted,
		Status: 402, Route: "search", Subject: "sub-1", Plan: "free", KeyID: "9f8cfdb17116", CredFrom: "api_key",
		Cache: entitlement.CacheHit, Looked: true, Duration: 12 * time.Microsecond}
	w := asynclog.New(io.Discard, 0)
	b.Cleanup(func() { w.Close(context.Background()) })
	log := slog.New(slog.NewJSONHandler(w, nil))
	ctx := context.Background()
	b.Run("slog", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			log.LogAttrs(ctx, slog.LevelInfo, "decision", decisionAttrs(make([]slog.Attr, 0, 16), res, "GET", "/v1/search")...)
		}
	})
	b.Run("direct", func(b *testing.B) {
		s := &Server{log: log, decisionLog: w}
		b.ReportAllocs()
		for b.Loop() {
			s.writeDecision(res, "GET", "/v1/search")
		}
	})
}
