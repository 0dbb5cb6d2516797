package authz_test

import (
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/internal/mppx"
	"github.com/tollgate-authz/tollgate/internal/x402test"
	"github.com/tollgate-authz/tollgate/mpp"
	"github.com/tollgate-authz/tollgate/payment"
	"github.com/tollgate-authz/tollgate/policy"
	"github.com/tollgate-authz/tollgate/x402"
	"github.com/tollgate-authz/tollgate/x402/paystore"
)

// TestInteropMppxThroughTheDecisionServer: mppx 0.11.0's client (the
// Payment scheme's TypeScript SDK, pinned in mpp/testdata/client), with
// its evm method and a local key, pays a priced route of the decision
// server in-process. The HTTP handler stands in for Envoy: it asks Decide,
// answers a denial as Envoy would (headers in order, the second
// WWW-Authenticate appended), and on an allow serves the upstream's answer
// and settles by the metadata key as the ext_proc server does. The client
// must pick the Payment challenge out of `Bearer …, Payment …`, sign,
// retry, and accept the Payment-Receipt; the facilitator (x402's
// LocalFacilitator: real signature checks, balances in memory) must have
// moved the price once.
func TestInteropMppxThroughTheDecisionServer(t *testing.T) {
	dir, script := mppx.Client(t, filepath.Join("..", "mpp", "testdata", "client"))

	payer := x402test.Key(7)
	fac := x402.NewLocalFacilitator(time.Now, "eip155:84532")
	fac.Mint(payAsset, x402.AddressOfKey(payer), big.NewInt(1_000_000))
	s, g, _ := paidServerGate(t, func(o *payment.Options) {
		// mppx reads the clock: the gate's must be real too.
		o.Now, o.Facilitator, o.Store = time.Now, fac, paystore.NewMemory(time.Now, 100)
		o.MPP = &payment.MPP{Key: []byte("0123456789abcdef0123456789abcdef-interop"), Realm: "api.example.com"}
	})
	routes := func(string) *policy.Route { return &policy.Route{Name: "forecast", Price: "0.001"} }

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := map[string]string{}
		for k, v := range r.Header {
			h[strings.ToLower(k)] = strings.Join(v, ",") // as Envoy joins them
		}
		resp, _ := s.Decide(r.Context(), req(r.Method, r.URL.RequestURI(), h))
		if d := resp.GetDeniedResponse(); d != nil {
			for _, hv := range d.GetHeaders() {
				if hv.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
					w.Header().Add(hv.GetHeader().GetKey(), hv.GetHeader().GetValue())
				} else {
					w.Header().Set(hv.GetHeader().GetKey(), hv.GetHeader().GetValue())
				}
			}
			w.WriteHeader(int(d.GetStatus().GetCode()))
			w.Write([]byte(d.GetBody()))
			return
		}
		md := resp.GetDynamicMetadata().GetFields()
		key, header := md[authz.PaymentKey].GetStringValue(), "Payment-Response"
		if k := md[authz.MPPPaymentKey].GetStringValue(); k != "" {
			key, header = k, mpp.HeaderPaymentReceipt
		}
		receipt, err := g.Settle(r.Context(), key, http.StatusOK, routes)
		if err != nil || receipt == "" {
			t.Errorf("settle %q: %q, %v", key, receipt, err)
			http.Error(w, "not settled", http.StatusInternalServerError)
			return
		}
		w.Header().Set(header, receipt)
		w.Header().Set("Cache-Control", "private")
		w.Write([]byte(`{"answer":42}`))
	}))
	defer srv.Close()

	out := mppx.Pay(t, dir, script, srv.URL+"/forecast", "0x"+hex.EncodeToString(payer.Serialize()), "USDC", "2")
	var got struct {
		Status   int         `json:"status"`
		Body     string      `json:"body"`
		Receipt  mpp.Receipt `json:"receipt"`
		Error    string      `json:"error"`
		Requests []struct {
			Authorization   *string `json:"authorization"`
			Status          int     `json:"status"`
			WWWAuthenticate *string `json:"wwwAuthenticate"`
		} `json:"requests"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("client output: %v\n%s", err, out)
	}
	if got.Error != "" {
		t.Fatalf("client error: %s", got.Error)
	}
	if got.Status != http.StatusOK || got.Body != `{"answer":42}` {
		t.Fatalf("status %d body %q, want 200 {\"answer\":42}; requests %+v", got.Status, got.Body, got.Requests)
	}
	if len(got.Requests) != 2 || got.Requests[0].Status != 402 || got.Requests[1].Authorization == nil {
		t.Fatalf("requests = %+v, want a 402, then a paid retry", got.Requests)
	}
	if w := got.Requests[0].WWWAuthenticate; w == nil || !strings.HasPrefix(*w, "Bearer ") || strings.Count(*w, "Payment id=") != 1 {
		t.Errorf("the 402 carried WWW-Authenticate %v, want Bearer then one Payment challenge", w)
	}
	if got.Receipt.Status != mpp.StatusSuccess || got.Receipt.Method != mpp.MethodEVM || got.Receipt.ChainID != 84532 || !strings.HasPrefix(got.Receipt.Reference, "0x") {
		t.Errorf("receipt = %+v", got.Receipt)
	}
	if got, want := fac.Balance(payAsset, payTo).Int64(), int64(1000); got != want {
		t.Errorf("payee balance = %d, want %d", got, want)
	}
	if got, want := fac.Settlements(), 1; got != want {
		t.Errorf("settlements = %d, want %d", got, want)
	}
}
