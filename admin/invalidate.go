package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Invalidator drops cached entitlements.
type Invalidator interface {
	InvalidateSubject(subject string) int
	InvalidateKey(digest string) int
}

// InvalidateRequest is the body of POST /v1/invalidate. Set subject, or
// api_key_sha256 (the hex digest `tollgate hash-key` prints), or both.
type InvalidateRequest struct {
	Subject      string `json:"subject"`
	APIKeySHA256 string `json:"api_key_sha256"`
}

// EnableInvalidation serves POST /v1/invalidate, for billing systems to call
// the moment an entitlement changes. It requires "Authorization: Bearer
// <token>"; with an empty token the endpoint is not served at all.
func (s *Server) EnableInvalidation(token string, inv Invalidator) {
	if token == "" {
		return
	}
	want := sha256.Sum256([]byte(token))
	s.mux.HandleFunc("POST /v1/invalidate", func(w http.ResponseWriter, r *http.Request) {
		if !bearerMatches(r, want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tollgate-admin"`)
			plain(w, http.StatusUnauthorized, "a valid bearer token is required\n")
			return
		}
		var req InvalidateRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || dec.Decode(&struct{}{}) != io.EOF { // one object, nothing after it
			plain(w, http.StatusBadRequest, "body must be JSON: {\"subject\": \"...\"} or {\"api_key_sha256\": \"...\"}\n")
			return
		}
		req.APIKeySHA256 = strings.ToLower(req.APIKeySHA256)
		if b, err := hex.DecodeString(req.APIKeySHA256); req.APIKeySHA256 != "" && (err != nil || len(b) != 32) {
			plain(w, http.StatusBadRequest, "api_key_sha256 must be a hex SHA-256 digest\n")
			return
		}
		if req.Subject == "" && req.APIKeySHA256 == "" {
			plain(w, http.StatusBadRequest, "set subject or api_key_sha256\n")
			return
		}
		n := 0
		if req.Subject != "" {
			n += inv.InvalidateSubject(req.Subject)
		}
		if req.APIKeySHA256 != "" {
			n += inv.InvalidateKey(req.APIKeySHA256)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprintf(w, "{\"invalidated\":%d}\n", n)
	})
}

// bearerMatches compares the request's bearer token with the wanted digest
// in constant time (comparing digests also hides the token's length).
func bearerMatches(r *http.Request, want [32]byte) bool {
	h := r.Header.Get("Authorization")
	const p = "Bearer "
	if len(h) <= len(p) || !strings.EqualFold(h[:len(p)], p) {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(h[len(p):])))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// HandleWithToken serves h at pattern to callers with "Authorization:
// Bearer <token>" only; with an empty token the endpoint is not served.
func (s *Server) HandleWithToken(token, pattern string, h http.Handler) {
	if token == "" {
		return
	}
	want := sha256.Sum256([]byte(token))
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if !bearerMatches(r, want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tollgate-admin"`)
			plain(w, http.StatusUnauthorized, "a valid bearer token is required\n")
			return
		}
		h.ServeHTTP(w, r)
	})
}
