package settle

import (
	"context"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// serveGRPC serves s's ALS and ext_proc on a loopback port and dials it.
func serveGRPC(t *testing.T, s *Settler) *grpc.ClientConn {
	t.Helper()
	return serveWith(t, func(gs *grpc.Server) {
		accesslogv3.RegisterAccessLogServiceServer(gs, NewALS(s))
		extprocv3.RegisterExternalProcessorServer(gs, NewExtProc(s))
	})
}

// payClient serves an ext_proc that settles payments with pay, and dials it.
func payClient(t *testing.T, pay Payments) extprocv3.ExternalProcessorClient {
	t.Helper()
	return extprocv3.NewExternalProcessorClient(serveWith(t, func(gs *grpc.Server) {
		extprocv3.RegisterExternalProcessorServer(gs, NewExtProc(nil).WithPayments(pay))
	}))
}

// serveWith serves what register registers on a loopback port and dials it.
func serveWith(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	register(gs)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func authzMetadata(tok string) *corev3.Metadata {
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}
	if tok != "" {
		md.FilterMetadata[AuthzNamespace] = &structpb.Struct{Fields: map[string]*structpb.Value{
			"decision": structpb.NewStringValue("allow"), ReservationKey: structpb.NewStringValue(tok),
		}}
	}
	return md
}

// TestALSSettlesEachMeteredEntry: entries stream in as Envoy sends them;
// the metered ones are settled with their units, the rest are skipped.
func TestALSSettlesEachMeteredEntry(t *testing.T) {
	box, adj := &memBox{}, &adjusts{}
	s, signer := newSettler(t, box, adj)
	conn := serveGRPC(t, s)
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	entry := func(md *corev3.Metadata, status uint32, headers map[string]string, intermediate bool) *accesslogdatav3.HTTPAccessLogEntry {
		return &accesslogdatav3.HTTPAccessLogEntry{
			CommonProperties: &accesslogdatav3.AccessLogCommon{
				Metadata: md, StartTime: timestamppb.New(start), TimeToLastDownstreamTxByte: durationpb.New(1500 * time.Millisecond),
				IntermediateLogEntry: intermediate,
			},
			Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(status), ResponseHeaders: headers},
		}
	}
	bodyMD := authzMetadata(token(signer, "req-b", "body", 10))
	bodyMD.FilterMetadata[Namespace] = &structpb.Struct{Fields: map[string]*structpb.Value{"units": structpb.NewStringValue("12")}}
	stream, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	msgs := []*accesslogdatav3.HTTPAccessLogEntry{
		entry(authzMetadata(""), 200, nil, false), // not metered
		entry(authzMetadata(token(signer, "req-a", "header", 100)), 200, map[string]string{"x-usage-units": "64"}, false),
		entry(authzMetadata(token(signer, "req-c", "header", 100)), 200, nil, true), // intermediate: not yet
		entry(bodyMD, 200, nil, false),
	}
	if err := stream.Send(&accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{LogName: "tollgate"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: msgs}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	evs := box.all()
	if len(evs) != 2 {
		t.Fatalf("events = %+v, want 2", evs)
	}
	for i, want := range []struct {
		route string
		units int64
	}{{"header", 64}, {"body", 12}} {
		if evs[i].Route != want.route || evs[i].Units != want.units || !evs[i].End.Equal(start.Add(1500*time.Millisecond)) || evs[i].Customer != "cus_1" {
			t.Errorf("event %d = %+v, want route %s, %d units, end %v", i, evs[i], want.route, want.units, start.Add(1500*time.Millisecond))
		}
	}
}

// TestExtProcReadsTheBody: a metered body route's response body is read
// and its units returned as dynamic metadata; other responses are told
// to send no body.
func TestExtProcReadsTheBody(t *testing.T) {
	s, signer := newSettler(t, &memBox{}, nil)
	conn := serveGRPC(t, s)
	client := extprocv3.NewExternalProcessorClient(conn)
	run := func(md *corev3.Metadata, contentType string, chunks ...string) []*extprocv3.ProcessingResponse {
		t.Helper()
		stream, err := client.Process(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []*extprocv3.ProcessingResponse
		send := func(r *extprocv3.ProcessingRequest) {
			t.Helper()
			if err := stream.Send(r); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, resp)
		}
		send(&extprocv3.ProcessingRequest{MetadataContext: md, Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte("200")}, {Key: "content-type", RawValue: []byte(contentType)}}},
		}}})
		for i, c := range chunks {
			send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{
				Body: []byte(c), EndOfStream: i == len(chunks)-1,
			}}})
		}
		_ = stream.CloseSend()
		return out
	}

	out := run(authzMetadata(token(signer, "r1", "body", 10)), "text/event-stream",
		"data: {\"choices\":[]}\n\n", "data: {\"usage\":{\"total_tokens\":77}}\n\ndata: [DONE]\n\n")
	if len(out) != 3 || out[0].GetModeOverride() != nil {
		t.Fatalf("responses = %v", out)
	}
	if got := out[2].GetDynamicMetadata().GetFields()[Namespace].GetStructValue().GetFields()["units"].GetStringValue(); got != "77" {
		t.Errorf("units metadata = %q, want 77", got)
	}
	if out[1].GetDynamicMetadata() != nil {
		t.Errorf("metadata before the end of the body: %v", out[1].GetDynamicMetadata())
	}

	out = run(authzMetadata(token(signer, "r2", "header", 10)), "application/json")
	if got := out[0].GetModeOverride().GetResponseBodyMode(); got != extprocfilterv3.ProcessingMode_NONE {
		t.Errorf("a header-metered route's body mode = %v, want NONE", got)
	}
	out = run(authzMetadata(""), "application/json")
	if got := out[0].GetModeOverride().GetResponseBodyMode(); got != extprocfilterv3.ProcessingMode_NONE {
		t.Errorf("an unmetered response's body mode = %v, want NONE", got)
	}
}
