package settle

import (
	"context"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// fakePayments is a Payments with function fields.
type fakePayments struct {
	mu      sync.Mutex
	settled []string // keys, in order
	settle  func(key string, status int) (string, []byte)
}

func (f *fakePayments) Settle(_ context.Context, key string, status int) (string, []byte) {
	f.mu.Lock()
	f.settled = append(f.settled, key)
	f.mu.Unlock()
	return f.settle(key, status)
}

func (f *fakePayments) Abandon(string) {}

// TestExtProcPaymentReceiptHeader: the receipt of a payment admitted under
// PaymentKey (x402) goes in PAYMENT-RESPONSE; under MPPPaymentKey (the
// Payment scheme) in Payment-Receipt.
func TestExtProcPaymentReceiptHeader(t *testing.T) {
	pay := &fakePayments{settle: func(key string, _ int) (string, []byte) { return "receipt-of-" + key, nil }}
	client := payClient(t, pay)

	tests := []struct {
		name, mdKey, header string // header "": none set
	}{
		{"x402", PaymentKey, "payment-response"},
		{"the Payment scheme", MPPPaymentKey, "payment-receipt"},
		{"nothing paid", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{AuthzNamespace: {Fields: map[string]*structpb.Value{}}}}
			if tt.mdKey != "" {
				md.FilterMetadata[AuthzNamespace].Fields[tt.mdKey] = structpb.NewStringValue("k-" + tt.mdKey)
			}
			stream, err := client.Process(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&extprocv3.ProcessingRequest{MetadataContext: md, Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
				Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte("200")}}},
			}}}); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			_ = stream.CloseSend()
			set := resp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()
			if tt.header == "" {
				if len(set) != 0 {
					t.Errorf("headers set %v on an unpaid response", set)
				}
				return
			}
			if len(set) != 1 || set[0].GetHeader().GetKey() != tt.header || string(set[0].GetHeader().GetRawValue()) != "receipt-of-k-"+tt.mdKey {
				t.Errorf("headers set %v, want %s: receipt-of-k-%s", set, tt.header, tt.mdKey)
			}
		})
	}
	if got := len(pay.settled); got != 2 {
		t.Errorf("settled %v, want the two paid responses", pay.settled)
	}
}
