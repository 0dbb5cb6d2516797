package settle

import (
	"context"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// statusPayments records the status each payment was settled with.
type statusPayments struct {
	mu     sync.Mutex
	status map[string]int
}

func (p *statusPayments) Settle(_ context.Context, key string, status int) (string, []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status[key] = status
	return "", nil
}

func (p *statusPayments) Abandon(string) {}

// TestExtProcGRPCErrorIsNotSettled: a gRPC upstream answers HTTP 200 even
// when the call failed; a call that fails at once is a trailers-only
// response, whose one header block holds grpc-status. A paid call that
// failed so must not be settled as a success.
func TestExtProcGRPCErrorIsNotSettled(t *testing.T) {
	pay := &statusPayments{status: map[string]int{}}
	client := payClient(t, pay)

	tests := []struct {
		name    string
		headers map[string]string
		eos     bool
		settled bool // settled with a 2xx
	}{
		{"HTTP 200", map[string]string{":status": "200", "content-type": "application/json"}, false, true},
		{"gRPC headers, status in trailers later", map[string]string{":status": "200", "content-type": "application/grpc"}, false, true},
		{"gRPC trailers-only OK", map[string]string{":status": "200", "content-type": "application/grpc", "grpc-status": "0"}, true, true},
		{"gRPC trailers-only UNAVAILABLE", map[string]string{":status": "200", "content-type": "application/grpc", "grpc-status": "14"}, true, false},
		{"gRPC-Web trailers-only INTERNAL", map[string]string{":status": "200", "content-type": "application/grpc-web+proto", "grpc-status": "13"}, true, false},
		{"gRPC status unreadable", map[string]string{":status": "200", "content-type": "application/grpc", "grpc-status": "x"}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := "k-" + tt.name
			md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{AuthzNamespace: {Fields: map[string]*structpb.Value{
				PaymentKey: structpb.NewStringValue(key),
			}}}}
			var hs []*corev3.HeaderValue
			for k, v := range tt.headers {
				hs = append(hs, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
			}
			stream, err := client.Process(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&extprocv3.ProcessingRequest{MetadataContext: md, Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
				Headers: &corev3.HeaderMap{Headers: hs}, EndOfStream: tt.eos,
			}}}); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			_ = stream.CloseSend()
			pay.mu.Lock()
			status, ok := pay.status[key]
			pay.mu.Unlock()
			if !ok {
				t.Fatal("Settle was not called")
			}
			if got := status >= 200 && status < 400; got != tt.settled {
				t.Errorf("settled with status %d (a success: %v), want a success: %v", status, got, tt.settled)
			}
		})
	}
}
