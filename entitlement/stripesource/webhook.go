package stripesource

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults for WebhookOptions.
const (
	DefaultTolerance   = 5 * time.Minute
	DefaultMaxBody     = 1 << 20
	DefaultDedupWindow = 10 * time.Minute
	maxRemembered      = 10000
)

// WebhookOptions configure a Webhook. Zero values take the defaults.
type WebhookOptions struct {
	// Secrets are the endpoint's signing secrets (whsec_…). During a
	// rotation list the new and the old: a signature by either is accepted.
	Secrets []string
	// Tolerance is how far the signed timestamp may be from now, either
	// way, before the event counts as a replay. Default 5 minutes.
	Tolerance time.Duration
	// MaxBody bounds the request body. Default 1 MiB.
	MaxBody int64
	// DedupWindow is how long an event id is remembered so that a redelivery
	// does not invalidate twice. Default 10 minutes; negative turns it off.
	DedupWindow time.Duration
	// Invalidate is called with the Stripe customer id of every event that
	// can change a customer's entitlements, before the 200 is sent. It must
	// be quick (dropping cache entries is): Stripe waits for the answer.
	Invalidate func(customerID string)
	// Log, when set, gets one line per rejected request (reason only) and,
	// at debug, one per event handled or ignored.
	Log *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Webhook is the http.Handler for Stripe's webhook events. It verifies the
// Stripe-Signature header, and on subscription and entitlement events calls
// Invalidate with the customer. It is safe for concurrent use.
type Webhook struct {
	opts    WebhookOptions
	secrets [][]byte

	mu   sync.Mutex
	seen map[string]time.Time // event id → when it was handled
}

// NewWebhook checks opts and returns the handler.
func NewWebhook(opts WebhookOptions) (*Webhook, error) {
	if opts.Tolerance <= 0 {
		opts.Tolerance = DefaultTolerance
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = DefaultMaxBody
	}
	if opts.DedupWindow == 0 {
		opts.DedupWindow = DefaultDedupWindow
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Invalidate == nil {
		return nil, errors.New("stripe webhook: an Invalidate callback is required")
	}
	h := &Webhook{opts: opts, seen: make(map[string]time.Time)}
	for i, s := range opts.Secrets {
		if strings.TrimSpace(s) == "" {
			return nil, fmt.Errorf("stripe webhook: signing secret %d is empty", i)
		}
		h.secrets = append(h.secrets, []byte(s))
	}
	if len(h.secrets) == 0 {
		return nil, errors.New("stripe webhook: at least one signing secret is required")
	}
	return h, nil
}

// event is the part of a Stripe event the handler reads.
type event struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Data struct {
		Object struct {
			Object   string          `json:"object"`
			ID       string          `json:"id"`
			Customer json.RawMessage `json:"customer"`
		} `json:"object"`
	} `json:"data"`
}

// Rejection reasons, sent as the plain-text body of a 400.
const (
	reasonNoHeader   = "missing Stripe-Signature header"
	reasonBadHeader  = "malformed Stripe-Signature header"
	reasonBadSig     = "no valid signature"
	reasonStale      = "timestamp outside the tolerance"
	reasonBadJSON    = "malformed event"
	reasonNoCustomer = "event names no customer"
	reasonTooLarge   = "body too large"
)

// ServeHTTP implements http.Handler.
func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.reject(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.reject(w, http.StatusRequestEntityTooLarge, reasonTooLarge)
			return
		}
		h.reject(w, http.StatusBadRequest, "cannot read body")
		return
	}
	if reason := h.verify(r.Header.Get("Stripe-Signature"), body); reason != "" {
		h.reject(w, http.StatusBadRequest, reason)
		return
	}
	var ev event
	if err := json.Unmarshal(body, &ev); err != nil || ev.Type == "" {
		h.reject(w, http.StatusBadRequest, reasonBadJSON)
		return
	}
	if !relevant(ev.Type) {
		h.debug(r.Context(), "stripe webhook: event ignored", ev, "")
		ok(w)
		return
	}
	customer := customerOf(ev)
	if customer == "" {
		h.reject(w, http.StatusBadRequest, reasonNoCustomer)
		return
	}
	if h.duplicate(ev.ID) {
		h.debug(r.Context(), "stripe webhook: duplicate event", ev, customer)
		ok(w)
		return
	}
	h.opts.Invalidate(customer)
	h.remember(ev.ID)
	h.debug(r.Context(), "stripe webhook: customer invalidated", ev, customer)
	ok(w)
}

// relevant says whether an event type can change a customer's entitlements.
func relevant(typ string) bool {
	return strings.HasPrefix(typ, "customer.subscription.") ||
		typ == "entitlements.active_entitlement_summary.updated" ||
		typ == "customer.deleted"
}

// customerOf finds the customer an event is about: data.object.customer
// (an id, or an object when expanded), or the customer object itself.
func customerOf(ev event) string {
	o := ev.Data.Object
	if len(o.Customer) > 0 && o.Customer[0] == '"' {
		var id string
		if json.Unmarshal(o.Customer, &id) == nil {
			return id
		}
	}
	if len(o.Customer) > 0 && o.Customer[0] == '{' {
		var c struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(o.Customer, &c) == nil {
			return c.ID
		}
	}
	if o.Object == "customer" {
		return o.ID
	}
	return ""
}

// verify checks the Stripe-Signature header, "t=<unix>,v1=<hex>[,v1=…]",
// against HMAC-SHA256("<t>.<body>") under each secret. It returns the reason
// for a rejection, or "".
func (h *Webhook) verify(header string, body []byte) string {
	if header == "" {
		return reasonNoHeader
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, found := strings.Cut(strings.TrimSpace(part), "=")
		if !found {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil && len(b) == sha256.Size {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return reasonBadHeader
	}
	// The signature first: an unsigned caller learns nothing about the clock.
	if !h.signed(ts, body, sigs) {
		return reasonBadSig
	}
	age := h.opts.Now().Sub(time.Unix(sec, 0))
	if age > h.opts.Tolerance || age < -h.opts.Tolerance {
		return reasonStale
	}
	return ""
}

func (h *Webhook) signed(ts string, body []byte, sigs [][]byte) bool {
	for _, secret := range h.secrets {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(ts))
		m.Write([]byte{'.'})
		m.Write(body)
		want := m.Sum(nil)
		for _, s := range sigs {
			if hmac.Equal(want, s) {
				return true
			}
		}
	}
	return false
}

// SignatureHeader builds the Stripe-Signature header Stripe would send for
// payload at time t, for tests and for replaying an event by hand.
func SignatureHeader(secret string, t time.Time, payload []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "."))
	m.Write(payload)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

func (h *Webhook) duplicate(id string) bool {
	if h.opts.DedupWindow < 0 || id == "" {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	at, ok := h.seen[id]
	return ok && h.opts.Now().Sub(at) < h.opts.DedupWindow
}

// remember records a handled event id, forgetting the expired ones when
// the set grows, and everything if it is still full (a redelivery then
// merely invalidates again).
func (h *Webhook) remember(id string) {
	if h.opts.DedupWindow < 0 || id == "" {
		return
	}
	now := h.opts.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.seen) >= maxRemembered {
		for k, at := range h.seen {
			if now.Sub(at) >= h.opts.DedupWindow {
				delete(h.seen, k)
			}
		}
		if len(h.seen) >= maxRemembered {
			clear(h.seen)
		}
	}
	h.seen[id] = now
}

func (h *Webhook) reject(w http.ResponseWriter, status int, reason string) {
	if h.opts.Log != nil {
		h.opts.Log.Warn("stripe webhook: request rejected", "status", status, "reason", reason)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, reason+"\n")
}

func (h *Webhook) debug(ctx context.Context, msg string, ev event, customer string) {
	if h.opts.Log != nil && h.opts.Log.Enabled(ctx, slog.LevelDebug) {
		h.opts.Log.DebugContext(ctx, msg, "event_id", ev.ID, "type", ev.Type, "customer", customer)
	}
}

func ok(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "ok\n")
}
