package settle

import (
	"errors"
	"io"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
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
	s *Settler
}

// NewExtProc serves the body reading of s's metered routes.
func NewExtProc(s *Settler) *ExtProc { return &ExtProc{s: s} }

// noBody is the mode for a response whose usage is not in its body.
var noBody = &extprocfilterv3.ProcessingMode{
	ResponseBodyMode:    extprocfilterv3.ProcessingMode_NONE,
	ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
}

// Process answers one request's stream of messages.
func (x *ExtProc) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	var body *bodyUnits
	var md *corev3.Metadata
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
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
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}
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
	if tok == "" {
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
