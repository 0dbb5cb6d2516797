package authz_test

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
)

// syncWriter is a log sink safe for the handler and the encoder at once,
// as serve's asynclog.Writer is.
type syncWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// perDecision are the members that differ between two identical servers
// deciding the same request: the time of the line and the decision's id.
var perDecision = regexp.MustCompile(`^\{"time":"[^"]*",|"decision_id":"[0-9a-f]*",`)

// TestDecisionLogThroughWriter: with Deps.DecisionLog, a served decision's
// line is written to that writer, not through Log's handler, and is the
// line the handler writes for the same decision (requests with hostile
// request ids, methods and paths; allows, refusals, unknown keys, shadow
// mode); Log's level still decides whether it is written.
func TestDecisionLogThroughWriter(t *testing.T) {
	reqs := []struct{ method, path, key, id string }{
		{"GET", "/v1/search?q=1", "demo-pro-key", "r-allow"},
		{"POST", "/v1/chat", "demo-free-key", `r "quoted" \ back`},
		{"GET", "/v1/search", "demo-pastdue-key", "r\nnew\u2028line\x00"},
		{"GET", "/v1/search/\xff\xfe<&>", "unknown-key", "id\xe2\x80"},
		{"G\tET", "/v1/search", "", ""},
		{"GET", "/v1/" + strings.Repeat("é", 300), "demo-pro-key", strings.Repeat("x", 2000)},
	}
	for _, shadow := range []bool{false, true} {
		edit := func(c *config.Config) { c.Shadow = shadow }
		var viaSlog syncWriter
		ref := serverFrom(t, "../examples/tollgate.yaml", edit, authz.Deps{Log: slog.New(slog.NewJSONHandler(&viaSlog, nil))})
		var handlerOut, direct syncWriter
		srv := serverFrom(t, "../examples/tollgate.yaml", edit, authz.Deps{
			Log: slog.New(slog.NewJSONHandler(&handlerOut, nil)), DecisionLog: &direct,
		})
		for _, r := range reqs {
			h := map[string]string{"x-request-id": r.id}
			if r.key != "" {
				h["x-api-key"] = r.key
			}
			cr := req(r.method, r.path, h)
			ref.Check(context.Background(), cr)
			srv.Check(context.Background(), cr)
		}
		if got := handlerOut.String(); got != "" {
			t.Errorf("shadow %v: decision lines went through Log's handler:\n%s", shadow, got)
		}
		got, want := strings.Split(direct.String(), "\n"), strings.Split(viaSlog.String(), "\n")
		if len(got) != len(reqs)+1 || len(want) != len(reqs)+1 {
			t.Fatalf("shadow %v: %d lines through DecisionLog and %d through slog, want %d each (every decision logged in the demo)",
				shadow, len(got)-1, len(want)-1, len(reqs))
		}
		for i := range got {
			if g, w := perDecision.ReplaceAllString(got[i], ""), perDecision.ReplaceAllString(want[i], ""); g != w {
				t.Errorf("shadow %v, request %d:\n got %q\nwant %q", shadow, i, g, w)
			}
		}
	}

	var direct syncWriter
	quiet := slog.New(slog.NewJSONHandler(&direct, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := serverFrom(t, "../examples/tollgate.yaml", nil, authz.Deps{Log: quiet, DecisionLog: &direct})
	srv.Check(context.Background(), req("POST", "/v1/chat", map[string]string{"x-api-key": "demo-free-key"}))
	if got := direct.String(); got != "" {
		t.Errorf("log level warn: decision line written anyway: %s", got)
	}
}
