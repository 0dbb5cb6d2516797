package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-authz/tollgate/internal/apptest"
	"github.com/tollgate-authz/tollgate/x402"
)

// The cases here need what Envoy cannot be made to do on cue: a second
// Check of the same payment while the first is still being served, a
// response that never comes, a settlement the facilitator refuses after it
// verified. They run the app as serve does and speak to it as Envoy would:
// Checks over gRPC, then the ext_proc stream of the response. The
// facilitator is x402.LocalFacilitator over HTTP (real EIP-712 checks,
// balances in memory). The rest of x402 is in e2e/x402_test.go, through a
// real Envoy with the real client SDK.

// payOffer is the pay-per-call offer of the "paid" route: 0.001 USDC.
var payOffer = x402.PaymentRequirements{
	Scheme: x402.SchemeExact, Network: "eip155:84532", Amount: "1000",
	Asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", PayTo: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
	MaxTimeoutSeconds: 60, Extra: x402.Extra{Name: "USDC", Version: "2"},
}

// paidServe serves a copy of examples/tollgate-x402.yaml against a
// LocalFacilitator, which it returns.
func paidServe(t *testing.T) (*server, *x402.LocalFacilitator) {
	t.Helper()
	fac := x402.NewLocalFacilitator(time.Now, payOffer.Network)
	hs := httptest.NewServer(x402.FacilitatorHandler(fac))
	t.Cleanup(hs.Close)
	dir := demoDir(t, "127.0.0.1:0")
	src, err := readExample("tollgate-x402.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "tollgate.yaml")
	src = strings.Replace(src, "grpc_address: 127.0.0.1:9191", "grpc_address: 127.0.0.1:0", 1)
	src = strings.Replace(src, "admin_address: 127.0.0.1:9090", "admin_address: 127.0.0.1:0", 1)
	src = strings.Replace(src, "url: http://127.0.0.1:8402", "url: "+hs.URL, 1)
	writeFile(t, cfg, src)
	return startServe(t, cfg), fac
}

func readExample(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(apptest.Root(), "examples", name))
	return string(b), err
}

// payer signs payments from one key.
type payer struct {
	key  *secp256k1.PrivateKey
	addr string
}

func newPayer(t *testing.T, fac *x402.LocalFacilitator, funds int64) payer {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[0] = 0x42 // below the curve order
	k := secp256k1.PrivKeyFromBytes(b)
	p := payer{key: k, addr: x402.AddressOfKey(k)}
	fac.Mint(payOffer.Asset, p.addr, big.NewInt(funds))
	return p
}

// header is a fresh PAYMENT-SIGNATURE for the paid route's offer.
func (p payer) header(t *testing.T) string {
	t.Helper()
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	a := x402.Authorization{
		From: p.addr, To: payOffer.PayTo, Value: payOffer.Amount, ValidAfter: "0",
		ValidBefore: strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10), Nonce: "0x" + hex.EncodeToString(nonce),
	}
	d, err := x402.DomainOf(payOffer)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := x402.SignAuthorization(p.key, d, a)
	if err != nil {
		t.Fatal(err)
	}
	acc := payOffer
	h, err := x402.EncodeHeader(x402.PaymentPayload{X402Version: x402.Version, Accepted: &acc, Payload: x402.ExactEVMPayload{Signature: sig, Authorization: a}})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func paidCheck(t *testing.T, s *server, header string) *authv3.CheckResponse {
	t.Helper()
	return s.check(t, "GET", "/v1/paid/x", map[string]string{"payment-signature": header})
}

// respond plays Envoy's ext_proc stream for the response to a Check that
// was allowed: the response's headers with status, then the end of the
// stream. It returns tollgate's answer to the headers.
func respond(t *testing.T, s *server, resp *authv3.CheckResponse, status int) *extprocv3.ProcessingResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := extprocv3.NewExternalProcessorClient(s.conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(responseHeaders(resp, status)); err != nil {
		t.Fatal(err)
	}
	got, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	return got
}

// responseHeaders is the ext_proc message of a response's headers, with
// the Check's dynamic metadata forwarded as envoy-x402.yaml configures it.
func responseHeaders(resp *authv3.CheckResponse, status int) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.ext_authz": resp.GetDynamicMetadata()}},
		Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte(strconv.Itoa(status))}}},
		}},
	}
}

// receiptOf is the PAYMENT-RESPONSE tollgate set on the response, or "".
func receiptOf(r *extprocv3.ProcessingResponse) string {
	for _, h := range r.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == "payment-response" {
			return string(h.GetHeader().GetRawValue())
		}
	}
	return ""
}

// TestPaymentReplayedWhileServedIsRefused: the same payment sent again
// while the first request is still being served (claimed, not settled, so
// the facilitator would still call it valid) is refused by tollgate, and
// the payment settles once.
func TestPaymentReplayedWhileServedIsRefused(t *testing.T) {
	s, fac := paidServe(t)
	p := newPayer(t, fac, 1_000_000)
	h := p.header(t)
	first := paidCheck(t, s, h)
	if got, want := httpStatus(first), 200; got != want {
		t.Fatalf("first Check: %d, want %d (%s)", got, want, code(first))
	}
	again := paidCheck(t, s, h)
	if got, want := code(again), "payment_invalid"; got != want {
		t.Fatalf("replay while served: code %q (status %d), want %q", got, httpStatus(again), want)
	}
	if got := fac.Settlements(); got != 0 {
		t.Fatalf("settlements before the response = %d, want 0", got)
	}
	r := respond(t, s, first, 200)
	if receiptOf(r) == "" {
		t.Errorf("no PAYMENT-RESPONSE on the response: %v", r)
	}
	if got, want := fac.Settlements(), 1; got != want {
		t.Errorf("settlements = %d, want %d", got, want)
	}
	if got, want := fac.Balance(payOffer.Asset, p.addr).Int64(), int64(1_000_000-1000); got != want {
		t.Errorf("payer balance = %d, want %d", got, want)
	}
	// After settlement the replay is still refused.
	if got, want := code(paidCheck(t, s, h)), "payment_invalid"; got != want {
		t.Errorf("replay after settlement: code %q, want %q", got, want)
	}
}

// TestPaymentAbandonedIsReleased: a response that never comes (the ext_proc
// stream ends before the response's headers) settles nothing, and the
// same payment can be presented again.
func TestPaymentAbandonedIsReleased(t *testing.T) {
	s, fac := paidServe(t)
	p := newPayer(t, fac, 1_000_000)
	h := p.header(t)
	first := paidCheck(t, s, h)
	if got, want := httpStatus(first), 200; got != want {
		t.Fatalf("first Check: %d, want %d (%s)", got, want, code(first))
	}
	// The client went away: Envoy opens the stream with the metadata of a
	// request's headers and closes it without a response.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := extprocv3.NewExternalProcessorClient(s.conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&extprocv3.ProcessingRequest{
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.ext_authz": first.GetDynamicMetadata()}},
		Request:         &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err == nil {
		t.Fatal("the stream goes on after CloseSend")
	}
	// Released once the server's end of the stream returns.
	var again *authv3.CheckResponse
	waitFor(t, func() bool {
		again = paidCheck(t, s, h)
		return httpStatus(again) == 200
	})
	if got := fac.Settlements(); got != 0 {
		t.Errorf("settlements = %d, want 0", got)
	}
	if receiptOf(respond(t, s, again, 200)) == "" {
		t.Error("no PAYMENT-RESPONSE for the payment presented again")
	}
	if got, want := fac.Settlements(), 1; got != want {
		t.Errorf("settlements = %d, want %d", got, want)
	}
}

// TestPaymentRefusedAtSettlementReplacesTheResponse: two payments verified
// against a balance that covers one; the second is refused when it
// settles, and its response becomes a 402 instead of the upstream's answer.
func TestPaymentRefusedAtSettlementReplacesTheResponse(t *testing.T) {
	s, fac := paidServe(t)
	p := newPayer(t, fac, 1000) // one call's worth
	a, b := paidCheck(t, s, p.header(t)), paidCheck(t, s, p.header(t))
	if httpStatus(a) != 200 || httpStatus(b) != 200 {
		t.Fatalf("Checks: %d %s, %d %s; want both allowed (each verified alone)", httpStatus(a), code(a), httpStatus(b), code(b))
	}
	if receiptOf(respond(t, s, a, 200)) == "" {
		t.Fatal("first: no PAYMENT-RESPONSE")
	}
	r := respond(t, s, b, 200)
	im := r.GetImmediateResponse()
	if im == nil {
		t.Fatalf("second: %v, want an immediate 402", r)
	}
	if got, want := int(im.GetStatus().GetCode()), 402; got != want {
		t.Errorf("second: status %d, want %d", got, want)
	}
	if !strings.Contains(string(im.GetBody()), `"code":"payment_invalid"`) {
		t.Errorf("second: body %s, want code payment_invalid", im.GetBody())
	}
	if got, want := fac.Settlements(), 1; got != want {
		t.Errorf("settlements = %d, want %d", got, want)
	}
	if got := fac.Balance(payOffer.Asset, p.addr).Int64(); got != 0 {
		t.Errorf("payer balance = %d, want 0", got)
	}
}

// TestPaymentUpstreamFailureIsNotSettled: a 5xx releases the payment
// without settling it, through the served ext_proc.
func TestPaymentUpstreamFailureIsNotSettled(t *testing.T) {
	s, fac := paidServe(t)
	p := newPayer(t, fac, 1_000_000)
	h := p.header(t)
	first := paidCheck(t, s, h)
	if got, want := httpStatus(first), 200; got != want {
		t.Fatalf("Check: %d, want %d (%s)", got, want, code(first))
	}
	r := respond(t, s, first, 502)
	if receiptOf(r) != "" || r.GetImmediateResponse() != nil {
		t.Errorf("a 502 got %v, want the response untouched", r)
	}
	if got := fac.Settlements(); got != 0 {
		t.Errorf("settlements = %d, want 0", got)
	}
	if got, want := fac.Balance(payOffer.Asset, p.addr).Int64(), int64(1_000_000); got != want {
		t.Errorf("payer balance = %d, want %d", got, want)
	}
	if got, want := httpStatus(paidCheck(t, s, h)), 200; got != want {
		t.Errorf("the released payment again: %d, want %d", got, want)
	}
}
