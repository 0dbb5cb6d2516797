package x402

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"time"
)

// Facilitator verifies and settles payments. A refusal is an answer (IsValid
// or Success false, with a reason) and a nil error; an error means no answer
// was had. For Settle, an error matching ErrSettleOutcomeUnknown means the
// request may have been acted on: reconcile, never retry blindly.
type Facilitator interface {
	Verify(ctx context.Context, p PaymentPayload, req PaymentRequirements) (VerifyResponse, error)
	Settle(ctx context.Context, p PaymentPayload, req PaymentRequirements) (SettleResponse, error)
	Supported(ctx context.Context) (SupportedResponse, error)
}

// FacilitatorError is a failure to get an answer from a facilitator.
type FacilitatorError struct {
	Op         string // "verify", "settle", "supported"
	Unknown    bool   // the request may have been acted on (settle only)
	StatusCode int    // the HTTP status, when one came back
	Err        error  // the transport error, if any
}

func (e *FacilitatorError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "x402 facilitator %s: ", e.Op)
	if e.Unknown {
		b.WriteString("outcome unknown: ")
	} else {
		b.WriteString("no answer: ")
	}
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, "HTTP %d", e.StatusCode)
	}
	if e.Err != nil {
		if e.StatusCode != 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *FacilitatorError) Unwrap() error { return e.Err }

// Is lets errors.Is(err, ErrSettleOutcomeUnknown) and
// errors.Is(err, ErrFacilitatorUnavailable) tell the two apart.
func (e *FacilitatorError) Is(target error) bool {
	switch target {
	case ErrSettleOutcomeUnknown:
		return e.Unknown
	case ErrFacilitatorUnavailable:
		return !e.Unknown
	}
	return false
}

var (
	// ErrSettleOutcomeUnknown: a settle was sent and no answer came back
	// (timeout, reset, 5xx, unreadable body); the money may have moved.
	ErrSettleOutcomeUnknown = errors.New("x402: settlement outcome unknown")
	// ErrFacilitatorUnavailable: no answer, and nothing was acted on (verify
	// and supported always; settle when the request never left).
	ErrFacilitatorUnavailable = errors.New("x402: facilitator unavailable")
)

// maxFacilitatorBody bounds a facilitator's response body.
const maxFacilitatorBody = 64 << 10

// HTTPFacilitator talks to a facilitator over HTTP: POST {URL}/verify,
// POST {URL}/settle, GET {URL}/supported. Each call is bounded by its
// timeout (and by the caller's context).
type HTTPFacilitator struct {
	URL              string // base, without trailing slash
	Client           *http.Client
	VerifyTimeout    time.Duration
	SettleTimeout    time.Duration
	SupportedTimeout time.Duration
	// Header, when set, is added to every request (e.g. an API key).
	Header http.Header
}

var _ Facilitator = (*HTTPFacilitator)(nil)

// Verify asks the facilitator whether p is valid for req.
func (f *HTTPFacilitator) Verify(ctx context.Context, p PaymentPayload, req PaymentRequirements) (VerifyResponse, error) {
	var out VerifyResponse
	err := f.do(ctx, "verify", http.MethodPost, f.VerifyTimeout, facilitatorRequest{X402Version: p.X402Version, PaymentPayload: p, PaymentRequirements: req}, &out,
		func() bool { return !out.IsValid && out.InvalidReason != "" })
	return out, err
}

// Settle asks the facilitator to execute p. See ErrSettleOutcomeUnknown.
func (f *HTTPFacilitator) Settle(ctx context.Context, p PaymentPayload, req PaymentRequirements) (SettleResponse, error) {
	var out SettleResponse
	err := f.do(ctx, "settle", http.MethodPost, f.SettleTimeout, facilitatorRequest{X402Version: p.X402Version, PaymentPayload: p, PaymentRequirements: req}, &out,
		func() bool { return !out.Success && out.ErrorReason != "" })
	return out, err
}

// Supported lists the kinds the facilitator handles.
func (f *HTTPFacilitator) Supported(ctx context.Context) (SupportedResponse, error) {
	var out SupportedResponse
	err := f.do(ctx, "supported", http.MethodGet, f.SupportedTimeout, nil, &out, nil)
	return out, err
}

// do sends one request. A 200 with a JSON body is an answer; a 4xx whose
// body is a refusal (refusal() true after decoding) is an answer too, as
// facilitators answer 400 with {isValid:false, invalidReason}. Anything
// else is a *FacilitatorError; for settle it is "outcome unknown" once the
// request was written.
func (f *HTTPFacilitator) do(ctx context.Context, op, method string, timeout time.Duration, body any, out any, refusal func() bool) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return &FacilitatorError{Op: op, Err: err}
		}
		rd = bytes.NewReader(b)
	}
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteHeaders: func() { wrote.Store(true) },
	})
	hreq, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(f.URL, "/")+"/"+op, rd)
	if err != nil {
		return &FacilitatorError{Op: op, Err: err}
	}
	if body != nil {
		hreq.Header.Set("Content-Type", "application/json")
	}
	hreq.Header.Set("Accept", "application/json")
	for k, vs := range f.Header {
		for _, v := range vs {
			hreq.Header.Add(k, v)
		}
	}
	client := f.Client
	if client == nil {
		client = http.DefaultClient
	}
	unknown := func() bool { return op == "settle" && wrote.Load() }
	resp, err := client.Do(hreq)
	if err != nil {
		return &FacilitatorError{Op: op, Unknown: unknown(), Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxFacilitatorBody+1))
	if err != nil {
		return &FacilitatorError{Op: op, Unknown: unknown(), StatusCode: resp.StatusCode, Err: err}
	}
	if len(raw) > maxFacilitatorBody {
		return &FacilitatorError{Op: op, Unknown: unknown(), StatusCode: resp.StatusCode, Err: errors.New("response body too large")}
	}
	decodeErr := json.Unmarshal(raw, out)
	switch {
	case resp.StatusCode == http.StatusOK && decodeErr == nil:
		return nil
	case resp.StatusCode >= 400 && resp.StatusCode < 500 && decodeErr == nil && refusal != nil && refusal():
		return nil
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		// The facilitator refused the request itself: nothing was done.
		return &FacilitatorError{Op: op, StatusCode: resp.StatusCode, Err: errors.New(string(ReasonFacilitatorRejected))}
	case decodeErr != nil:
		return &FacilitatorError{Op: op, Unknown: unknown(), StatusCode: resp.StatusCode, Err: errors.New("response is not the expected JSON")}
	}
	return &FacilitatorError{Op: op, Unknown: unknown(), StatusCode: resp.StatusCode}
}

// FacilitatorHandler serves f over the facilitator HTTP API (POST /verify,
// POST /settle, GET /supported), e.g. to run LocalFacilitator as a separate
// process or inside a test. Requests are decoded strictly; a malformed one
// gets 400 with a refusal body.
func FacilitatorHandler(f Facilitator) http.Handler {
	mux := http.NewServeMux()
	decode := func(w http.ResponseWriter, r *http.Request) (facilitatorRequest, bool) {
		var in facilitatorRequest
		raw, err := io.ReadAll(io.LimitReader(r.Body, maxFacilitatorBody+1))
		if err != nil || len(raw) > maxFacilitatorBody {
			return in, false
		}
		var env struct {
			X402Version         int             `json:"x402Version"`
			PaymentPayload      json.RawMessage `json:"paymentPayload"`
			PaymentRequirements json.RawMessage `json:"paymentRequirements"`
		}
		if err := json.Unmarshal(raw, &env); err != nil || len(env.PaymentPayload) == 0 || len(env.PaymentRequirements) == 0 {
			return in, false
		}
		p, err := decodePayloadJSON(env.PaymentPayload)
		if err != nil {
			return in, false
		}
		if checkJSON(env.PaymentRequirements) != nil || json.Unmarshal(env.PaymentRequirements, &in.PaymentRequirements) != nil ||
			ValidateRequirements(in.PaymentRequirements, "paymentRequirements.") != nil {
			return in, false
		}
		in.X402Version, in.PaymentPayload = env.X402Version, p
		return in, true
	}
	mux.HandleFunc("POST /verify", func(w http.ResponseWriter, r *http.Request) {
		in, ok := decode(w, r)
		if !ok {
			writeJSON(w, http.StatusBadRequest, VerifyResponse{InvalidReason: string(ReasonInvalidPayload)})
			return
		}
		out, err := f.Verify(r.Context(), in.PaymentPayload, in.PaymentRequirements)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, VerifyResponse{InvalidReason: string(ReasonUnexpectedVerify)})
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /settle", func(w http.ResponseWriter, r *http.Request) {
		in, ok := decode(w, r)
		if !ok {
			writeJSON(w, http.StatusBadRequest, SettleResponse{ErrorReason: string(ReasonInvalidPayload)})
			return
		}
		out, err := f.Settle(r.Context(), in.PaymentPayload, in.PaymentRequirements)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, SettleResponse{ErrorReason: string(ReasonUnexpectedSettle), Network: in.PaymentRequirements.Network})
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /supported", func(w http.ResponseWriter, r *http.Request) {
		out, err := f.Supported(r.Context())
		if err != nil {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
