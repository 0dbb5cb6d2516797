package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestEndpoints(t *testing.T) {
	s := New(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("metrics")) }))
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	type probe struct {
		path       string
		wantStatus int
		wantBody   string
	}
	steps := []struct {
		name   string
		action func()
		probes []probe
	}{
		{"starting", func() {}, []probe{{"/healthz", 200, "ok"}, {"/readyz", 503, "not ready: starting"}, {"/metrics", 200, "metrics"}}},
		{"ready", s.SetReady, []probe{{"/readyz", 200, "ready"}}},
		{"draining", s.Drain, []probe{{"/healthz", 200, "ok"}, {"/readyz", 503, "not ready: draining"}}},
		{"ready after drain stays draining", s.SetReady, []probe{{"/readyz", 503, "not ready"}}},
	}
	for _, st := range steps {
		st.action()
		for _, p := range st.probes {
			gotStatus, gotBody := get(p.path)
			if gotStatus != p.wantStatus || !strings.Contains(gotBody, p.wantBody) {
				t.Errorf("%s: GET %s = %d %q, want %d %q", st.name, p.path, gotStatus, gotBody, p.wantStatus, p.wantBody)
			}
		}
	}
	if code, _ := get("/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ = %d, want 404 (off by default)", code)
	}
}
