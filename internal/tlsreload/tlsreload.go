// Package tlsreload serves TLS with a certificate, key and client CA that are
// reloaded from disk when they change, so a rotated certificate (cert-manager,
// a renewed Let's Encrypt pair) takes effect without a restart. A bad or
// half-written pair is refused and the last good one stays in use.
package tlsreload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/tollgate-authz/tollgate/internal/watch"
)

// Files names what to load. ClientCAFile turns on mutual TLS: clients must
// present a certificate signed by one of its CAs.
type Files struct {
	CertFile, KeyFile, ClientCAFile string
}

type material struct {
	cert *tls.Certificate
	cas  *x509.CertPool
}

// Reloader holds the current TLS material.
type Reloader struct {
	files Files
	cur   *watch.Value[material]
}

// New loads the files once; this first load must succeed. onReload (may be
// nil) is told the outcome of every later reload.
func New(f Files, onReload func(error)) (*Reloader, error) {
	r := &Reloader{files: f}
	cur, err := watch.NewValue(r.load, onReload, f.CertFile, f.KeyFile, f.ClientCAFile)
	if err != nil {
		return nil, err
	}
	r.cur = cur
	return r, nil
}

func (r *Reloader) load() (*material, error) {
	cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	m := &material{cert: &cert}
	if r.files.ClientCAFile != "" {
		pem, err := os.ReadFile(r.files.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		m.cas = x509.NewCertPool()
		if !m.cas.AppendCertsFromPEM(pem) {
			return nil, errors.New("tls: " + r.files.ClientCAFile + ": no PEM certificates")
		}
	}
	return m, nil
}

// Reload reads the files again; on error the current material stays.
func (r *Reloader) Reload() error { return r.cur.Reload() }

// Watch reloads when any of the files changes, until ctx ends.
func (r *Reloader) Watch(ctx context.Context, every time.Duration) { r.cur.Watch(ctx, every) }

// Config returns a server tls.Config that always uses the current material.
func (r *Reloader) Config() *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := r.cur.Load()
		c := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"h2"},
			Certificates: []tls.Certificate{*m.cert},
		}
		if m.cas != nil {
			c.ClientCAs = m.cas
			c.ClientAuth = tls.RequireAndVerifyClientCert
		}
		return c, nil
	}
	return base
}

// ClientCertificate presents the current certificate, for a client
// tls.Config's GetClientCertificate: a client certificate loaded with New
// (no ClientCAFile) is then reloaded like a server's.
func (r *Reloader) ClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.cur.Load().cert, nil
}
