package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tollgate-authz/tollgate/internal/testcerts"
)

// TestServeMutualTLS serves gRPC over mTLS: a client with a certificate from
// the configured CA is answered, one without is refused, and a rotated
// server certificate is picked up without a restart.
func TestServeMutualTLS(t *testing.T) {
	dir := demoDir(t, "127.0.0.1:0")
	ca := testcerts.Issue(t, 1, nil, true)
	ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
	srvCert := testcerts.Issue(t, 100, ca, false, "tollgate.test")
	srvCert.WriteCert(t, filepath.Join(dir, "tls.crt"))
	srvCert.WriteKey(t, filepath.Join(dir, "tls.key"))
	cfg := filepath.Join(dir, "tollgate.yaml")
	b, _ := os.ReadFile(cfg)
	writeFile(t, cfg, strings.Replace(string(b), "  drain_timeout: 10s\n",
		"  drain_timeout: 10s\n  tls: {cert_file: tls.crt, key_file: tls.key, client_ca_file: ca.crt}\n", 1))

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	client := testcerts.Issue(t, 7, ca, false)
	var seenSerial int64
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "tollgate.test", Certificates: []tls.Certificate{client.TLS()},
		VerifyConnection: func(cs tls.ConnectionState) error {
			seenSerial = cs.PeerCertificates[0].SerialNumber.Int64()
			return nil
		}}
	s := startServe(t, cfg, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if got := code(s.check(t, "GET", "/v1/search", map[string]string{"x-api-key": "demo-free-key"})); got != "ok" {
		t.Fatalf("with a client certificate: %s", got)
	}
	if seenSerial != 100 {
		t.Errorf("server certificate serial %d, want 100", seenSerial)
	}

	// Without a client certificate the handshake fails: an RPC error, not a decision.
	noCert := &tls.Config{RootCAs: pool, ServerName: "tollgate.test"}
	conn, err := grpc.NewClient(s.grpc, grpc.WithTransportCredentials(credentials.NewTLS(noCert)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{}); err == nil {
		t.Error("a client without a certificate was answered")
	}

	// Rotate the server certificate: new connections see it.
	rotated := testcerts.Issue(t, 101, ca, false, "tollgate.test")
	rotated.WriteCert(t, filepath.Join(dir, "tls.crt"))
	rotated.WriteKey(t, filepath.Join(dir, "tls.key"))
	waitFor(t, func() bool {
		c, err := tls.Dial("tcp", s.grpc, &tls.Config{RootCAs: pool, ServerName: "tollgate.test",
			Certificates: []tls.Certificate{client.TLS()}, NextProtos: []string{"h2"}})
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64() == 101
	})
}
