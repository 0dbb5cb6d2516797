package admin

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzInvalidateBody sends arbitrary bytes as the body of an authenticated
// POST /v1/invalidate. Whatever the body: the answer is 200 or 400, never a
// fault; a 400 invalidates nothing; a 200 invalidates exactly one subject
// and/or one well-formed lowercase key digest and says how many entries it
// dropped; and no answer echoes the body.
func FuzzInvalidateBody(f *testing.F) {
	f.Add([]byte(`{"subject":"acme"}`))
	s := New(nil, Limits{})
	inv := &fakeInvalidator{}
	s.EnableInvalidation("fuzz-admin-token-0123456789", inv)
	refusals := map[string]bool{
		"body must be JSON: {\"subject\": \"...\"} or {\"api_key_sha256\": \"...\"}\n": true,
		"api_key_sha256 must be a hex SHA-256 digest\n":                                true,
		"set subject or api_key_sha256\n":                                              true,
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		inv.subjects, inv.keys = nil, nil
		r := httptest.NewRequest("POST", "/v1/invalidate", bytes.NewReader(body))
		r.Header.Set("Authorization", "Bearer fuzz-admin-token-0123456789")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, r)
		got := rec.Body.String()
		switch rec.Code {
		case http.StatusOK:
			if len(inv.subjects)+len(inv.keys) == 0 || len(inv.subjects) > 1 || len(inv.keys) > 1 {
				t.Fatalf("200 after invalidating subjects %q and keys %q", inv.subjects, inv.keys)
			}
			for _, s := range inv.subjects {
				if s == "" {
					t.Fatal("invalidated the empty subject")
				}
			}
			for _, k := range inv.keys {
				if b, err := hex.DecodeString(k); err != nil || len(b) != 32 || k != hex.EncodeToString(b) {
					t.Fatalf("invalidated key %q, not a lowercase hex SHA-256", k)
				}
			}
			want := 2*len(inv.subjects) + len(inv.keys) // what the fake returns
			if got != fmt.Sprintf("{\"invalidated\":%d}\n", want) {
				t.Fatalf("200 body %q, want {\"invalidated\":%d}", got, want)
			}
		case http.StatusBadRequest:
			if len(inv.subjects)+len(inv.keys) != 0 {
				t.Fatalf("400 %q, but invalidated subjects %q and keys %q", got, inv.subjects, inv.keys)
			}
			if !refusals[got] {
				t.Fatalf("400 body %q is not one of the fixed refusals", got)
			}
		default:
			t.Fatalf("status %d %q, want 200 or 400", rec.Code, got)
		}
	})
}
