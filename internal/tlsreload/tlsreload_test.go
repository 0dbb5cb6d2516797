package tlsreload

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/testcerts"
)

type certKey = testcerts.Cert

func issue(t *testing.T, serial int64, parent *certKey, isCA bool, names ...string) *certKey {
	return testcerts.Issue(t, serial, parent, isCA, names...)
}

func writePair(t *testing.T, dir string, ck *certKey) {
	ck.WriteCert(t, filepath.Join(dir, "tls.crt"))
	ck.WriteKey(t, filepath.Join(dir, "tls.key"))
}

// served connects and returns the serial of the server's certificate, or
// the handshake error.
func served(t *testing.T, addr string, ca *certKey, client *certKey) (int64, error) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "tollgate.test", NextProtos: []string{"h2"}}
	if client != nil {
		cfg.Certificates = []tls.Certificate{client.TLS()}
	}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	// TLS 1.3 reports a refused client certificate on the first read.
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		return 0, err
	}
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
}

func serve(t *testing.T, r *Reloader) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", r.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err == nil {
					c.Write([]byte{1})
				}
			}()
		}
	}()
	return lis.Addr().String()
}

func TestReloadAndMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := issue(t, 1, nil, true)
	writePair(t, dir, issue(t, 100, ca, false, "tollgate.test"))
	caFile := filepath.Join(dir, "ca.crt")
	ca.WriteCert(t, caFile)
	var reloads []error
	r, err := New(Files{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), ClientCAFile: caFile},
		func(err error) { reloads = append(reloads, err) })
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r)
	client := issue(t, 7, ca, false)
	stranger := issue(t, 8, issue(t, 2, nil, true), false)

	steps := []struct {
		name       string
		action     func()
		client     *certKey
		wantSerial int64 // 0: the handshake must fail
	}{
		{"client certificate from the CA", func() {}, client, 100},
		{"no client certificate", func() {}, nil, 0},
		{"client certificate from another CA", func() {}, stranger, 0},
		{"rotated certificate is served", func() {
			writePair(t, dir, issue(t, 101, ca, false, "tollgate.test"))
			if err := r.Reload(); err != nil {
				t.Fatal(err)
			}
		}, client, 101},
		{"a bad pair keeps the last good one", func() {
			os.WriteFile(filepath.Join(dir, "tls.key"), []byte("garbage"), 0o600)
			if err := r.Reload(); err == nil {
				t.Fatal("reload of a bad key: want error")
			}
		}, client, 101},
	}
	for _, st := range steps {
		st.action()
		got, err := served(t, addr, ca, st.client)
		if st.wantSerial == 0 {
			if err == nil {
				t.Errorf("%s: handshake succeeded, want it refused", st.name)
			}
			continue
		}
		if err != nil || got != st.wantSerial {
			t.Errorf("%s: serial %d, err %v; want %d", st.name, got, err, st.wantSerial)
		}
	}
	if len(reloads) != 2 || reloads[0] != nil || reloads[1] == nil {
		t.Errorf("reload outcomes = %v, want [nil, error]", reloads)
	}
	if _, err := New(Files{CertFile: filepath.Join(dir, "nope.crt"), KeyFile: filepath.Join(dir, "tls.key")}, nil); err == nil {
		t.Error("New with missing files: want error")
	}
}
