package settle

import (
	"context"
	"errors"
	"io"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// AuthzNamespace is the ext_authz filter's dynamic metadata namespace,
// where the Check put the reservation token (key "reservation").
const AuthzNamespace = "envoy.filters.http.ext_authz"

// ReservationKey is the token's key in AuthzNamespace.
const ReservationKey = "reservation"

// ALS is the gRPC access log service Envoy streams finished requests to.
// Entries without a reservation (requests on routes that are not metered)
// are skipped at the cost of one map lookup.
type ALS struct {
	accesslogv3.UnimplementedAccessLogServiceServer
	s *Settler
}

// NewALS serves s's settlements as an access log service.
func NewALS(s *Settler) *ALS { return &ALS{s: s} }

// StreamAccessLogs settles each HTTP entry as it arrives. Envoy does not
// wait for an answer (the stream has none until it ends), so settling never
// delays a response.
func (a *ALS) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	// An entry received is settled even if Envoy ends the stream meanwhile
	// (a restart, a drain): Envoy never sends it again. Options.Timeout
	// bounds each settlement.
	ctx := context.WithoutCancel(stream.Context())
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		for _, le := range msg.GetHttpLogs().GetLogEntry() {
			a.settle(ctx, le)
		}
	}
}

func (a *ALS) settle(ctx context.Context, le *accesslogdatav3.HTTPAccessLogEntry) {
	c := le.GetCommonProperties()
	if c.GetIntermediateLogEntry() {
		return // a periodic log of a request still running
	}
	fm := c.GetMetadata().GetFilterMetadata()
	tok := fm[AuthzNamespace].GetFields()[ReservationKey].GetStringValue()
	if tok == "" {
		return
	}
	resp := le.GetResponse()
	e := Entry{
		Token:   tok,
		Status:  int(resp.GetResponseCode().GetValue()),
		Headers: resp.GetResponseHeaders(), Trailers: resp.GetResponseTrailers(),
	}
	if u, ok := unitsOf(fm[Namespace].GetFields()["units"]); ok {
		e.BodyUnits, e.HasBodyUnits = u, true
	}
	if st := c.GetStartTime(); st != nil {
		e.End = st.AsTime()
		if d := c.GetTimeToLastDownstreamTxByte(); d != nil {
			e.End = e.End.Add(d.AsDuration())
		} else if d := c.GetDuration(); d != nil {
			e.End = e.End.Add(d.AsDuration())
		}
	}
	if _, _, err := a.s.Settle(ctx, e); err != nil {
		a.s.o.Log.Warn("settle: entry not settled", "error", err.Error())
	}
}

// unitsOf reads a whole number of units from a metadata value.
func unitsOf(v *structpb.Value) (int64, bool) {
	switch x := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		n := x.NumberValue
		if n < 0 || n > 1<<53 || n != float64(int64(n)) {
			return 0, false
		}
		return int64(n), true
	case *structpb.Value_StringValue:
		return parseUnits(x.StringValue)
	}
	return 0, false
}
