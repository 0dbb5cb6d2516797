package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestEndpoints(t *testing.T) {
	s := New(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("metrics")) }), Limits{})
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

// fakeInvalidator records what it was asked to drop.
type fakeInvalidator struct{ subjects, keys []string }

func (f *fakeInvalidator) InvalidateSubject(s string) int {
	f.subjects = append(f.subjects, s)
	return 2
}
func (f *fakeInvalidator) InvalidateKey(d string) int { f.keys = append(f.keys, d); return 1 }

func TestInvalidate(t *testing.T) {
	digest := strings.Repeat("ab", 32)
	tests := []struct {
		name         string
		auth         string
		body         string
		wantStatus   int
		wantBody     string
		wantSubjects string
		wantKeys     string
	}{
		{"no token", "", `{"subject":"acme"}`, 401, "bearer token", "", ""},
		{"wrong token", "Bearer nope", `{"subject":"acme"}`, 401, "", "", ""},
		{"subject", "Bearer s3cret", `{"subject":"acme"}`, 200, `{"invalidated":2}`, "acme", ""},
		{"key digest", "bearer s3cret", `{"api_key_sha256":"` + strings.ToUpper(digest) + `"}`, 200, `{"invalidated":1}`, "", digest},
		{"both", "Bearer s3cret", `{"subject":"acme","api_key_sha256":"` + digest + `"}`, 200, `{"invalidated":3}`, "acme", digest},
		{"empty", "Bearer s3cret", `{}`, 400, "set subject", "", ""},
		{"bad digest", "Bearer s3cret", `{"api_key_sha256":"demo-free-key"}`, 400, "hex SHA-256", "", ""},
		{"unknown field", "Bearer s3cret", `{"subjet":"acme"}`, 400, "must be JSON", "", ""},
		{"two objects", "Bearer s3cret", `{"subject":"acme"} {"subject":"initech"}`, 400, "must be JSON", "", ""},
		{"trailing garbage", "Bearer s3cret", `{"subject":"acme"} x`, 400, "must be JSON", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(nil, Limits{})
			inv := &fakeInvalidator{}
			s.EnableInvalidation("s3cret", inv)
			r := httptest.NewRequest("POST", "/v1/invalidate", strings.NewReader(tt.body))
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, r)
			if rec.Code != tt.wantStatus || !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("got %d %q, want %d %q", rec.Code, rec.Body.String(), tt.wantStatus, tt.wantBody)
			}
			if got := strings.Join(inv.subjects, ","); got != tt.wantSubjects {
				t.Errorf("subjects = %q, want %q", got, tt.wantSubjects)
			}
			if got := strings.Join(inv.keys, ","); got != tt.wantKeys {
				t.Errorf("keys = %q, want %q", got, tt.wantKeys)
			}
		})
	}
	t.Run("no token configured: not served", func(t *testing.T) {
		s := New(nil, Limits{})
		s.EnableInvalidation("", &fakeInvalidator{})
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/invalidate", strings.NewReader(`{"subject":"a"}`)))
		if rec.Code != 404 {
			t.Errorf("got %d, want 404", rec.Code)
		}
	})
}

func TestPprofOnlyWhenEnabled(t *testing.T) {
	for _, on := range []bool{false, true} {
		s := New(nil, Limits{})
		if on {
			s.EnablePprof()
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/", nil))
		if got, want := rec.Code == 200, on; got != want {
			t.Errorf("enabled=%v: GET /debug/pprof/ = %d", on, rec.Code)
		}
	}
}
