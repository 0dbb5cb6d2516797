package stripesource

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	whsecOld = "whsec_OldEndpointSecretForRotation0001"
	whsecNew = "whsec_NewEndpointSecretForRotation0002"
)

var webhookNow = time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)

// recorder is a hand-written Invalidate that remembers its calls.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) invalidate(customer string) {
	r.mu.Lock()
	r.calls = append(r.calls, customer)
	r.mu.Unlock()
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func eventJSON(id, typ, object string) string {
	return fmt.Sprintf(`{"id":%q,"object":"event","api_version":"2025-03-31.basil","created":1795770000,"type":%q,"livemode":false,"data":{"object":%s}}`, id, typ, object)
}

const subObject = `{"id":"sub_1","object":"subscription","customer":"cus_acme","status":"active"}`

func newWebhook(t *testing.T, rec *recorder, secrets ...string) *Webhook {
	t.Helper()
	h, err := NewWebhook(WebhookOptions{
		Secrets:    secrets,
		Invalidate: rec.invalidate,
		Now:        func() time.Time { return webhookNow },
		MaxBody:    4096,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func deliver(h http.Handler, header, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", strings.NewReader(body))
	if header != "" {
		req.Header.Set("Stripe-Signature", header)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestWebhook(t *testing.T) {
	updated := eventJSON("evt_1", "customer.subscription.updated", subObject)
	sign := func(secret string, at time.Time, body string) string {
		return SignatureHeader(secret, at, []byte(body))
	}
	v1 := func(secret string, at time.Time, body string) string { // just the "v1=…" part
		_, sig, _ := strings.Cut(sign(secret, at, body), ",")
		return sig
	}
	ts := fmt.Sprintf("t=%d", webhookNow.Unix())
	tests := []struct {
		name       string
		secrets    []string
		header     string
		body       string
		wantStatus int
		wantReason string
		wantCalls  []string
	}{
		{name: "valid", header: sign(whsecNew, webhookNow, updated), body: updated, wantStatus: 200, wantCalls: []string{"cus_acme"}},
		{name: "signed a little in the past", header: sign(whsecNew, webhookNow.Add(-4*time.Minute), updated), body: updated, wantStatus: 200, wantCalls: []string{"cus_acme"}},
		{name: "bad signature", header: sign("whsec_wrong", webhookNow, updated), body: updated, wantStatus: 400, wantReason: reasonBadSig},
		{name: "body changed after signing", header: sign(whsecNew, webhookNow, updated), body: strings.Replace(updated, "cus_acme", "cus_evil", 1), wantStatus: 400, wantReason: reasonBadSig},
		{name: "missing header", body: updated, wantStatus: 400, wantReason: reasonNoHeader},
		{name: "no timestamp", header: v1(whsecNew, webhookNow, updated), body: updated, wantStatus: 400, wantReason: reasonBadHeader},
		{name: "no v1", header: ts + ",v0=abcd", body: updated, wantStatus: 400, wantReason: reasonBadHeader},
		{name: "garbage header", header: "hello", body: updated, wantStatus: 400, wantReason: reasonBadHeader},
		{name: "stale timestamp", header: sign(whsecNew, webhookNow.Add(-6*time.Minute), updated), body: updated, wantStatus: 400, wantReason: reasonStale},
		{name: "future timestamp", header: sign(whsecNew, webhookNow.Add(6*time.Minute), updated), body: updated, wantStatus: 400, wantReason: reasonStale},
		{name: "several v1, one valid", body: updated, wantStatus: 200, wantCalls: []string{"cus_acme"},
			header: ts + ",v1=" + strings.Repeat("0", 64) + "," + v1(whsecNew, webhookNow, updated) + ",v1=zz,v0=" + strings.Repeat("1", 64)},
		{name: "rotation: signed with the old secret", secrets: []string{whsecNew, whsecOld}, header: sign(whsecOld, webhookNow, updated), body: updated, wantStatus: 200, wantCalls: []string{"cus_acme"}},
		{name: "rotation: old secret retired", header: sign(whsecOld, webhookNow, updated), body: updated, wantStatus: 400, wantReason: reasonBadSig},
		{name: "rotation: Stripe signs with both", secrets: []string{whsecOld}, body: updated, wantStatus: 200, wantCalls: []string{"cus_acme"},
			header: sign(whsecNew, webhookNow, updated) + "," + v1(whsecOld, webhookNow, updated)},
		{name: "unrelated event", body: eventJSON("evt_2", "invoice.created", `{"id":"in_1","object":"invoice","customer":"cus_acme"}`), wantStatus: 200},
		{name: "entitlement summary", body: eventJSON("evt_3", "entitlements.active_entitlement_summary.updated",
			`{"object":"entitlements.active_entitlement_summary","customer":"cus_acme","entitlements":{"object":"list","data":[],"has_more":false},"livemode":false}`),
			wantStatus: 200, wantCalls: []string{"cus_acme"}},
		{name: "subscription deleted", body: eventJSON("evt_4", "customer.subscription.deleted", subObject), wantStatus: 200, wantCalls: []string{"cus_acme"}},
		{name: "trial will end", body: eventJSON("evt_5", "customer.subscription.trial_will_end", subObject), wantStatus: 200, wantCalls: []string{"cus_acme"}},
		{name: "customer deleted", body: eventJSON("evt_6", "customer.deleted", `{"id":"cus_acme","object":"customer","deleted":true}`), wantStatus: 200, wantCalls: []string{"cus_acme"}},
		{name: "expanded customer", body: eventJSON("evt_7", "customer.subscription.paused", `{"id":"sub_1","object":"subscription","customer":{"id":"cus_acme","object":"customer"}}`), wantStatus: 200, wantCalls: []string{"cus_acme"}},
		{name: "malformed JSON, validly signed", body: `{"id":"evt_8","type":`, wantStatus: 400, wantReason: reasonBadJSON},
		{name: "no customer in a subscription event", body: eventJSON("evt_9", "customer.subscription.updated", `{"id":"sub_1","object":"subscription"}`), wantStatus: 400, wantReason: reasonNoCustomer},
		{name: "body too large", body: eventJSON("evt_10", "customer.subscription.updated", `{"customer":"cus_acme","pad":"`+strings.Repeat("x", 5000)+`"}`), wantStatus: 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			secrets := tt.secrets
			if secrets == nil {
				secrets = []string{whsecNew}
			}
			h := newWebhook(t, rec, secrets...)
			header := tt.header
			if header == "" && tt.wantReason != reasonNoHeader {
				header = sign(whsecNew, webhookNow, tt.body)
			}
			w := deliver(h, header, tt.body)
			body, _ := io.ReadAll(w.Body)
			if w.Code != tt.wantStatus {
				t.Fatalf("status = %d (%s), want %d", w.Code, strings.TrimSpace(string(body)), tt.wantStatus)
			}
			if tt.wantReason != "" && strings.TrimSpace(string(body)) != tt.wantReason {
				t.Errorf("body = %q, want %q", body, tt.wantReason)
			}
			for _, s := range []string{whsecNew, whsecOld} {
				if strings.Contains(string(body), s) {
					t.Errorf("body %q holds a signing secret", body)
				}
			}
			if got := rec.got(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("invalidated %v, want %v", got, tt.wantCalls)
			}
		})
	}
}

func TestWebhookRedelivery(t *testing.T) {
	rec := &recorder{}
	h := newWebhook(t, rec, whsecNew)
	body := eventJSON("evt_dup", "customer.subscription.updated", subObject)
	for i := 0; i < 3; i++ {
		if w := deliver(h, SignatureHeader(whsecNew, webhookNow, []byte(body)), body); w.Code != 200 {
			t.Fatalf("delivery %d: status %d", i, w.Code)
		}
	}
	if got := rec.got(); len(got) != 1 {
		t.Errorf("invalidated %d times for one event id, want 1", len(got))
	}
	other := eventJSON("evt_other", "customer.subscription.updated", subObject)
	deliver(h, SignatureHeader(whsecNew, webhookNow, []byte(other)), other)
	if got := rec.got(); len(got) != 2 {
		t.Errorf("a new event id: invalidated %d times in all, want 2", len(got))
	}
}

func TestWebhookMethod(t *testing.T) {
	h := newWebhook(t, &recorder{}, whsecNew)
	req := httptest.NewRequest(http.MethodGet, "/webhooks/stripe", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "POST" {
		t.Errorf("GET: status %d, Allow %q; want 405 and POST", w.Code, w.Header().Get("Allow"))
	}
}

func TestNewWebhookChecksOptions(t *testing.T) {
	inv := func(string) {}
	for _, tt := range []struct {
		name string
		opts WebhookOptions
	}{
		{"no secret", WebhookOptions{Invalidate: inv}},
		{"empty secret", WebhookOptions{Secrets: []string{whsecNew, " "}, Invalidate: inv}},
		{"no callback", WebhookOptions{Secrets: []string{whsecNew}}},
	} {
		if _, err := NewWebhook(tt.opts); err == nil {
			t.Errorf("%s: accepted", tt.name)
		} else if strings.Contains(err.Error(), whsecNew) {
			t.Errorf("%s: err %q holds the secret", tt.name, err)
		}
	}
}
