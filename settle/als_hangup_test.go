package settle

import (
	"context"
	"net"
	"testing"
	"time"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-authz/tollgate/usage"
)

// heldBox is an outbox whose Append waits until released, then fails as a
// store does when its context has ended.
type heldBox struct {
	memBox
	entered chan struct{} // closed by the first Append
	release chan struct{}
}

func (b *heldBox) Append(ctx context.Context, evs []usage.Event) error {
	close(b.entered)
	<-b.release
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.memBox.Append(ctx, evs)
}

// TestALSSettlesWhatEnvoyHungUpOn: an entry received is settled even when
// Envoy ends the stream while it is being settled (Envoy restarting, or
// draining): Envoy never sends it again, so dropping it would serve the
// request unbilled.
func TestALSSettlesWhatEnvoyHungUpOn(t *testing.T) {
	box := &heldBox{entered: make(chan struct{}), release: make(chan struct{})}
	s, signer := newSettler(t, box, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	streams := make(chan context.Context, 1)
	gs := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		streams <- ss.Context()
		return h(srv, ss)
	}))
	accesslogv3.RegisterAccessLogServiceServer(gs, NewALS(s))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	ctx, hangUp := context.WithCancel(context.Background())
	stream, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	entry := &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{Metadata: authzMetadata(token(signer, "req-h", "header", 100))},
		Response:         &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200), ResponseHeaders: map[string]string{"x-usage-units": "7"}},
	}
	if err := stream.Send(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{entry}},
	}}); err != nil {
		t.Fatal(err)
	}
	serverCtx := <-streams
	<-box.entered
	hangUp()
	<-serverCtx.Done() // the server has seen the hang-up
	close(box.release)

	deadline := time.Now().Add(10 * time.Second)
	for len(box.all()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if evs := box.all(); len(evs) != 1 || evs[0].Units != 7 {
		t.Fatalf("events = %+v, want the one entry received, with 7 units", evs)
	}
}
