package settle

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/policy"
)

// ExtProc is the external processing service that reads a metered
// response's body for its usage. It never changes the request or the
// response; for a response whose route reads no body it asks Envoy to send
// no body at all (mode_override, which needs allow_mode_override: true).
// The units found go to dynamic metadata (Namespace, key "units"), where
// the access log entry carries them to the Settler.
type ExtProc struct {
	extprocv3.UnimplementedExternalProcessorServer
	s   *Settler // nil: no metered routes
	pay Payments // nil: no paid routes
}

// Payments settles an admitted x402 payment once its response's status is
// known (see payment.Gate).
type Payments interface {
	// Settle settles the payment under key after the upstream answered
	// status. It returns the receipt (PAYMENT-RESPONSE's value, or
	// Payment-Receipt's under MPPPaymentKey), or a problem+json
	// body to answer 402 with instead of the response when settlement was
	// refused; with neither, the response goes as it is.
	Settle(ctx context.Context, key string, status int) (receipt string, refusal []byte)
	// Abandon releases the payment of a request that got no response.
	Abandon(key string)
}

// PaymentKey is an admitted payment's key in AuthzNamespace; MPPPaymentKey
// holds it instead for a payment made with the Payment scheme, whose
// receipt goes in Payment-Receipt instead of PAYMENT-RESPONSE.
const (
	PaymentKey    = "x402"
	MPPPaymentKey = "mpp"
)

// NewExtProc serves the body reading of s's metered routes (s may be nil)
// and, with WithPayments, the settlement of paid ones.
func NewExtProc(s *Settler) *ExtProc { return &ExtProc{s: s} }

// WithPayments makes x settle x402 payments on the response's headers.
func (x *ExtProc) WithPayments(p Payments) *ExtProc {
	x.pay = p
	return x
}

// noBody is the mode for a response whose usage is not in its body.
var noBody = &extprocfilterv3.ProcessingMode{
	ResponseBodyMode:    extprocfilterv3.ProcessingMode_NONE,
	ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
}

// Process answers one request's stream of messages.
func (x *ExtProc) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	var body *bodyUnits
	var md *corev3.Metadata
	// payKey is an admitted payment not yet settled: if the stream ends
	// before the response's headers, nothing was served and it is released.
	var payKey string
	receiptHeader := "payment-response"
	defer func() {
		if payKey != "" {
			x.pay.Abandon(payKey)
		}
	}()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if x.pay != nil && payKey == "" && req.GetMetadataContext() != nil {
			f := req.GetMetadataContext().GetFilterMetadata()[AuthzNamespace].GetFields()
			if payKey = f[PaymentKey].GetStringValue(); payKey == "" {
				if payKey = f[MPPPaymentKey].GetStringValue(); payKey != "" {
					receiptHeader = "payment-receipt"
				}
			}
		}
		if req.GetMetadataContext() != nil {
			md = req.GetMetadataContext()
		}
		resp := &extprocv3.ProcessingResponse{}
		switch v := req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_RequestBody:
			resp.Response = &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_RequestTrailers:
			resp.Response = &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			if m := x.meterOf(md); m != nil && m.FromBody() {
				body = newBodyUnits(m, headerValue(v.ResponseHeaders.GetHeaders(), "content-type"))
			} else {
				resp.ModeOverride = noBody
			}
			hr := &extprocv3.HeadersResponse{}
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: hr}
			if payKey != "" {
				key := payKey
				payKey = ""
				receipt, refusal := x.pay.Settle(stream.Context(), key, paidStatus(v.ResponseHeaders.GetHeaders()))
				switch {
				case refusal != nil:
					resp.Response = &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: refused(refusal)}
				case receipt != "":
					hr.Response = &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
						SetHeaders: []*corev3.HeaderValueOption{{
							Header:       &corev3.HeaderValue{Key: receiptHeader, RawValue: []byte(receipt)},
							AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
						}},
					}}
				}
			}
			if v.ResponseHeaders.GetEndOfStream() {
				body = nil // no body at all
			}
		case *extprocv3.ProcessingRequest_ResponseBody:
			if body != nil {
				body.write(v.ResponseBody.GetBody())
				if v.ResponseBody.GetEndOfStream() {
					resp.DynamicMetadata = unitsMetadata(body)
					body = nil
				}
			}
			resp.Response = &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			if body != nil { // the body ended with trailers
				resp.DynamicMetadata = unitsMetadata(body)
				body = nil
			}
			resp.Response = &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}
		default:
			continue
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// meterOf is the meter of the route the reservation in md names, or nil.
func (x *ExtProc) meterOf(md *corev3.Metadata) *policy.Meter {
	tok := md.GetFilterMetadata()[AuthzNamespace].GetFields()[ReservationKey].GetStringValue()
	if tok == "" || x.s == nil {
		return nil
	}
	r, err := x.s.o.Signer.Verify(tok)
	if err != nil {
		return nil
	}
	return x.s.meter(r.Route)
}

// unitsMetadata is the dynamic metadata that carries the units found, or
// nil when the body held none.
func unitsMetadata(b *bodyUnits) *structpb.Struct {
	u, ok := b.result()
	if !ok {
		return nil
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		Namespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			// A string: a float64 loses integers past 2^53.
			"units": structpb.NewStringValue(itoa(u)),
		}}),
	}}
}

func headerValue(h *corev3.HeaderMap, name string) string {
	for _, hv := range h.GetHeaders() {
		if hv.GetKey() == name {
			if v := hv.GetValue(); v != "" {
				return v
			}
			return string(hv.GetRawValue())
		}
	}
	return ""
}

// statusOf is a response's :status, or 0.
func statusOf(h *corev3.HeaderMap) int {
	n, err := strconv.Atoi(headerValue(h, ":status"))
	if err != nil {
		return 0
	}
	return n
}

// paidStatus is the status a payment is settled on: :status, except that a
// gRPC call that failed at once (a trailers-only response: grpc-status in
// its only header block, not 0) failed, whatever its HTTP 200 says. A gRPC
// failure reported in trailers comes after the headers are settled.
func paidStatus(h *corev3.HeaderMap) int {
	st := statusOf(h)
	if !strings.HasPrefix(headerValue(h, "content-type"), "application/grpc") {
		return st
	}
	if gs := headerValue(h, "grpc-status"); gs != "" && gs != "0" {
		return http.StatusBadGateway
	}
	return st
}

// refused answers 402 with body in place of a response whose payment could
// not be settled: x402 serves nothing unpaid.
func refused(body []byte) *extprocv3.ImmediateResponse {
	return &extprocv3.ImmediateResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode_PaymentRequired},
		Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: "content-type", RawValue: []byte("application/problem+json")},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}}},
		Body:    body,
		Details: "x402_settlement_refused",
	}
}
