package redisconn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// patient is the timeout given to calls in these tests: the machine may be
// busy (-race, other builds), and nothing here measures latency.
const patient = 5 * time.Second

// TestMain keeps go-redis's own lines (dial failures the tests cause on
// purpose) out of the test output; TestSetLogger sets its own.
func TestMain(m *testing.M) {
	SetLogger(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

func dial(t *testing.T, o Options) *Conn {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = patient
	}
	c, err := Dial(o)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ping(c *Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), patient)
	defer cancel()
	return c.Ping(ctx).Err()
}

// pingSoon pings until an answer, a few times: each failure drops the
// pooled connection it used (two idle ones are kept with TLS).
func pingSoon(c *Conn) (err error) {
	for range 8 {
		if err = ping(c); err == nil {
			return nil
		}
	}
	return err
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDialTLS: the server's certificate is verified against ca_file and
// server_name, and a server that requires a client certificate gets it.
func TestDialTLS(t *testing.T) {
	rs := redistest.StartTLS(t, true)
	f := rs.TLS()
	other := redistest.StartTLS(t, false).TLS() // a CA that did not sign rs's certificate
	good := TLS{Enabled: true, CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: f.KeyFile}
	cases := []struct {
		name   string
		tls    TLS
		wantOK bool
	}{
		{"mutual tls, server name from the address", good, true},
		{"server name given", TLS{Enabled: true, CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: f.KeyFile, ServerName: "localhost"}, true},
		{"server name not in the certificate", TLS{Enabled: true, CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: f.KeyFile, ServerName: "redis.example"}, false},
		{"untrusted server", TLS{Enabled: true, CAFile: other.CAFile, CertFile: f.CertFile, KeyFile: f.KeyFile}, false},
		{"no client certificate", TLS{Enabled: true, CAFile: f.CAFile}, false},
		{"client certificate from another CA", TLS{Enabled: true, CAFile: f.CAFile, CertFile: other.CertFile, KeyFile: other.KeyFile}, false},
		{"tls off", TLS{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn := dial(t, Options{Address: rs.Addr(), TLS: c.tls})
			err := ping(conn)
			if got := err == nil; got != c.wantOK {
				t.Fatalf("ping: %v; want success %v", err, c.wantOK)
			}
			if c.tls.CertFile != "" && conn.Watch == nil {
				t.Error("a client certificate and no Watch")
			}
		})
	}
}

// TestDialTLSErrors: TLS files that cannot work are refused by Dial, with
// the field at fault.
func TestDialTLSErrors(t *testing.T) {
	f := redistest.StartTLS(t, true).TLS()
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		tls       TLS
		wantField string
	}{
		{"missing ca file", TLS{Enabled: true, CAFile: filepath.Join(t.TempDir(), "none.pem")}, "tls.ca_file"},
		{"ca file without a certificate", TLS{Enabled: true, CAFile: notPEM}, "tls.ca_file"},
		{"cert without key", TLS{Enabled: true, CertFile: f.CertFile}, "tls"},
		{"key is not the cert's", TLS{Enabled: true, CertFile: f.CertFile, KeyFile: notPEM}, "tls"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Dial(Options{Address: "127.0.0.1:6379", TLS: c.tls})
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != c.wantField {
				t.Fatalf("Dial: %v; want an error in field %s", err, c.wantField)
			}
		})
	}
}

// TestClientCertificateReloaded: Watch picks up a rewritten client
// certificate, and a half-written one is refused while the last good one
// is still presented on new connections.
func TestClientCertificateReloaded(t *testing.T) {
	rs := redistest.StartTLS(t, true)
	f := rs.TLS()
	other := redistest.StartTLS(t, false).TLS()
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	copyFile(t, other.CertFile, cert) // signed by a CA rs does not trust
	copyFile(t, other.KeyFile, key)

	reloads := make(chan error, 16)
	conn := dial(t, Options{
		Address: rs.Addr(), TLS: TLS{Enabled: true, CAFile: f.CAFile, CertFile: cert, KeyFile: key},
		OnReload: func(err error) { reloads <- err },
	})
	if err := ping(conn); err == nil {
		t.Fatal("ping with a client certificate rs does not trust: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go conn.Watch(ctx, 5*time.Millisecond)
	// rewrite writes the files until the watch reports a reload with (or
	// without) an error: the watch takes the files' first stamps when its
	// goroutine starts, which may be after a single write.
	rewrite := func(wantErr bool, write func()) {
		t.Helper()
		for range 120 { // a guard against hanging, not a measure
			write()
			deadline := time.After(500 * time.Millisecond)
			for {
				select {
				case err := <-reloads:
					if (err != nil) == wantErr {
						return
					}
					continue
				case <-deadline:
				}
				break
			}
		}
		t.Fatalf("no reload with error %v", wantErr)
	}

	rewrite(false, func() {
		copyFile(t, f.KeyFile, key)
		copyFile(t, f.CertFile, cert)
	})
	// Connections made with the old certificate may still be in the pool
	// (in TLS 1.3 the server refuses a client certificate after the client
	// has finished its handshake): they fail once and are dropped.
	if err := pingSoon(conn); err != nil {
		t.Fatalf("ping after the certificate was replaced: %v", err)
	}

	rewrite(true, func() {
		if err := os.WriteFile(cert, []byte("-----BEGIN CERTIFICATE-----\ntruncated"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	rs.Restart() // every connection is new from here
	if err := pingSoon(conn); err != nil {
		t.Fatalf("ping on a new connection after a bad rewrite: %v; want the last good certificate", err)
	}
}

// TestDialCluster: with Cluster, one node's address is enough to reach
// every key of a three-node cluster; without, the keys on other nodes
// answer MOVED.
func TestDialCluster(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cases := []struct {
		name      string
		cluster   bool
		wantMoved bool
	}{
		{"cluster", true, false},
		{"single node", false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn := dial(t, Options{Address: rc.Nodes[0].Addr(), Cluster: c.cluster})
			if _, ok := conn.UniversalClient.(*redis.ClusterClient); ok != c.cluster {
				t.Fatalf("client %T with cluster %v", conn.UniversalClient, c.cluster)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			moved := false
			for i := range 30 {
				err := conn.Set(ctx, fmt.Sprintf("%s-%d", c.name, i), "v", 0).Err()
				switch {
				case err != nil && strings.HasPrefix(err.Error(), "MOVED"):
					moved = true
				case err != nil:
					t.Fatalf("set: %v", err)
				}
			}
			if moved != c.wantMoved {
				t.Fatalf("MOVED seen: %v; want %v", moved, c.wantMoved)
			}
			if c.cluster {
				for _, n := range rc.Nodes {
					keys, err := n.Client().Keys(ctx, c.name+"-*").Result()
					if err != nil || len(keys) == 0 {
						t.Errorf("node %s holds none of the keys: %v %v", n.Addr(), keys, err)
					}
				}
			}
		})
	}
}

// TestPasswordFromEnv: the password is read from the environment variable
// named by PasswordEnv, for the default user and an ACL user; an unset or
// empty variable is refused by Dial, naming the variable.
func TestPasswordFromEnv(t *testing.T) {
	rs := redistest.Start(t)
	admin := rs.Client()
	ctx := context.Background()
	if err := admin.Do(ctx, "ACL", "SETUSER", "billing", "on", ">billing-secret", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigSet(ctx, "requirepass", "default-secret").Err(); err != nil {
		t.Fatal(err)
	}
	const env = "TOLLGATE_TEST_REDIS_PASSWORD"
	cases := []struct {
		name     string
		user     string
		value    *string // nil: unset
		wantDial bool    // Dial succeeds
		wantPing bool
	}{
		{"default user", "", ptr(" default-secret\n"), true, true},
		{"acl user", "billing", ptr("billing-secret"), true, true},
		{"wrong password", "", ptr("guess"), true, false},
		{"empty", "", ptr("  "), false, false},
		{"unset", "", nil, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.value != nil {
				t.Setenv(env, *c.value)
			} else {
				t.Setenv(env, "")
				os.Unsetenv(env)
			}
			conn, err := Dial(Options{Address: rs.Addr(), Username: c.user, PasswordEnv: env, Timeout: patient})
			if got := err == nil; got != c.wantDial {
				t.Fatalf("Dial: %v; want success %v", err, c.wantDial)
			}
			if err != nil {
				var fe *FieldError
				if !errors.As(err, &fe) || fe.Field != "password_env" || !strings.Contains(err.Error(), env) {
					t.Fatalf("Dial: %v; want an error in password_env naming %s", err, env)
				}
				return
			}
			defer conn.Close()
			if err := ping(conn); (err == nil) != c.wantPing {
				t.Fatalf("ping: %v; want success %v", err, c.wantPing)
			}
		})
	}
}

func ptr(s string) *string { return &s }

// TestDialNeedsAnAddress: an empty address is refused in field address
// (config.CheckHostPort, which its callers run first, checks the rest).
func TestDialNeedsAnAddress(t *testing.T) {
	_, err := Dial(Options{})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "address" {
		t.Errorf("Dial: %v; want an error in field address", err)
	}
	c, err := Dial(Options{Address: "127.0.0.1:6379"})
	if err != nil {
		t.Fatalf("host:port refused: %v", err)
	}
	c.Close()
}

// TestSetLogger: go-redis's own dial failures land in the slog logger, at
// debug level, and not at all when debug is off.
func TestSetLogger(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := lis.Addr().String()
	lis.Close() // nothing listens here: every dial fails
	cases := []struct {
		name  string
		level slog.Level
		want  bool
	}{
		{"debug", slog.LevelDebug, true},
		{"info", slog.LevelInfo, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			SetLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: c.level})))
			conn := dial(t, Options{Address: down})
			if err := ping(conn); err == nil {
				t.Fatal("ping a closed port: no error")
			}
			conn.Close() // no more background dials writing to buf
			got := false
			for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				if l == "" {
					continue
				}
				var line struct{ Msg, Message string }
				if err := json.Unmarshal([]byte(l), &line); err != nil {
					t.Fatalf("not a JSON line: %q", l)
				}
				if line.Msg == "redis client" && strings.Contains(line.Message, "failed to dial") {
					got = true
				}
			}
			if got != c.want {
				t.Fatalf("a dial failure logged: %v, want %v; log:\n%s", got, c.want, buf.String())
			}
		})
	}
}

// TestLazyKeepsNoConnectionsReady: with TLS the client keeps idle
// connections warm, which dials at once; Lazy (validate) must not.
func TestLazyKeepsNoConnectionsReady(t *testing.T) {
	f := redistest.StartTLS(t, false).TLS()
	tlsOn := TLS{Enabled: true, CAFile: f.CAFile}
	cases := []struct {
		name    string
		o       Options
		wantMin int
	}{
		{"tls", Options{Address: "127.0.0.1:1", TLS: tlsOn}, 2},
		{"tls, lazy", Options{Address: "127.0.0.1:1", TLS: tlsOn, Lazy: true}, 0},
		{"cluster, tls, lazy", Options{Address: "127.0.0.1:1", TLS: tlsOn, Cluster: true, Lazy: true}, 0},
		{"cluster, tls", Options{Address: "127.0.0.1:1", TLS: tlsOn, Cluster: true}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn := dial(t, c.o)
			var got int
			switch cl := conn.UniversalClient.(type) {
			case *redis.Client:
				got = cl.Options().MinIdleConns
			case *redis.ClusterClient:
				got = cl.Options().MinIdleConns
			}
			if got != c.wantMin {
				t.Errorf("MinIdleConns = %d, want %d", got, c.wantMin)
			}
		})
	}
}
