package stripesource

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzWebhook sends any Stripe-Signature header and any body, signed with
// the endpoint's secret or not, to the webhook. Every request gets 200,
// 400 or 413 with a one-line plain answer; Invalidate runs at most once,
// with a customer, and only for a body signed by the secret within the
// tolerance; no answer or log line holds the secret or echoes the header.
func FuzzWebhook(f *testing.F) {
	signedAt := func(d time.Duration) string { return strconv.FormatInt(webhookNow.Add(d).Unix(), 10) }
	for _, seed := range []struct {
		header string
		body   string
		sign   bool
	}{
		{"", eventJSON("evt_1", "customer.subscription.updated", subObject), true},
		{"", eventJSON("evt_2", "customer.deleted", `{"id":"cus_gone","object":"customer"}`), true},
		{"", eventJSON("evt_3", "invoice.paid", `{"id":"in_1","customer":"cus_acme"}`), true},
		{"", eventJSON("evt_4", "customer.subscription.created", `{"id":"sub_2","customer":{"id":"cus_exp"}}`), true},
		{"", `{"id":"evt_5","type":"customer.subscription.deleted","data":{"object":{"customer":7}}}`, true},
		{"", `{"type":`, true},
		{"t=" + signedAt(0) + ",v1=" + strings.Repeat("ab", 32), eventJSON("evt_6", "customer.subscription.updated", subObject), false},
		{"t=" + signedAt(-time.Hour) + ",v1=00,v0=zz, v1 = 11", "{}", false},
		{"t=,v1=", "", false},
		{strings.Repeat("v1=", 100), "x", false},
	} {
		f.Add(seed.header, []byte(seed.body), seed.sign, int64(0))
	}
	f.Fuzz(func(t *testing.T, header string, body []byte, sign bool, skew int64) {
		var rec recorder
		var logs bytes.Buffer
		h, err := NewWebhook(WebhookOptions{
			Secrets:    []string{whsecNew},
			Invalidate: rec.invalidate,
			Now:        func() time.Time { return webhookNow },
			MaxBody:    4096,
			Log:        slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
		if err != nil {
			t.Fatal(err)
		}
		if sign {
			// A valid signature, made skew seconds off the clock, so that
			// the event JSON and the tolerance are explored too.
			header = SignatureHeader(whsecNew, webhookNow.Add(time.Duration(skew%7200)*time.Second), body)
		}
		req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", header)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)

		switch w.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d", w.Code)
		}
		answer := w.Body.String()
		if strings.Count(answer, "\n") != 1 || !strings.HasSuffix(answer, "\n") || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
			t.Fatalf("answer %q (%s) is not one plain line", answer, w.Header().Get("Content-Type"))
		}
		calls := rec.got()
		if len(calls) > 1 || len(calls) == 1 && (calls[0] == "" || w.Code != http.StatusOK) {
			t.Fatalf("Invalidate calls %q with status %d", calls, w.Code)
		}
		if len(calls) == 1 && !validlySigned(header, body) {
			t.Fatalf("Invalidate(%q) for a body not signed by the secret within the tolerance (header %q)", calls[0], header)
		}
		for _, out := range []string{answer, logs.String()} {
			if strings.Contains(out, whsecNew) || len(header) >= 8 && strings.Contains(out, header) {
				t.Fatalf("output holds the secret or the signature header: %q", out)
			}
		}
	})
}

// validlySigned is an independent reading of Stripe's scheme: some v1 in
// header is HMAC-SHA256 of "t.body" under the secret, for a t within five
// minutes of the clock.
func validlySigned(header string, body []byte) bool {
	var ts []string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = append(ts, v)
		case "v1":
			sigs = append(sigs, strings.ToLower(v))
		}
	}
	for _, t := range ts {
		sec, err := strconv.ParseInt(t, 10, 64)
		if err != nil {
			continue
		}
		if age := webhookNow.Sub(time.Unix(sec, 0)); age > DefaultTolerance || age < -DefaultTolerance {
			continue
		}
		m := hmac.New(sha256.New, []byte(whsecNew))
		m.Write([]byte(t + "."))
		m.Write(body)
		want := hex.EncodeToString(m.Sum(nil))
		for _, s := range sigs {
			if s == want {
				return true
			}
		}
	}
	return false
}
