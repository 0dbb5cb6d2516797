package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// startPeer starts another ext_authz server for -peer name=PATH, serving
// the harness's deployment for n subjects. Only OPA-envoy-plugin is known
// (name "opa" or "opa-…"): it runs bench/opa/policy.rego with the subjects
// as data.
func startPeer(dir, repo string, p variant, n int) (*server, error) {
	if p.name != "opa" && !strings.HasPrefix(p.name, "opa-") {
		return nil, fmt.Errorf("unknown peer %q: the harness knows opa=PATH (OPA-envoy-plugin)", p.name)
	}
	pdir := filepath.Join(dir, p.name)
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return nil, err
	}
	policy, err := os.ReadFile(filepath.Join(repo, "bench", "opa", "policy.rego"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(pdir, "policy.rego"), policy, 0o644); err != nil {
		return nil, err
	}
	if err := writeOPAData(filepath.Join(pdir, "data.json"), n); err != nil {
		return nil, err
	}
	grpcAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	child, err := start(p.name, filepath.Join(dir, p.name+".log"), p.bin, p.env,
		append([]string{"run", "--server", "--addr", httpAddr, "--log-level", "error",
			"--set", "plugins.envoy_ext_authz_grpc.addr=" + grpcAddr,
			"--set", "plugins.envoy_ext_authz_grpc.path=tollgate/authz/result",
			"--set", "decision_logs.console=false",
			pdir}, p.flags...)...)
	if err != nil {
		return nil, err
	}
	// Ready when its gRPC port takes connections.
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", grpcAddr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if child.Exited() {
			return nil, fmt.Errorf("%s exited: %v\n%s", p.name, child.Err(), child.Tail())
		}
		if time.Now().After(deadline) {
			child.Stop()
			return nil, fmt.Errorf("%s: no gRPC listener on %s after 60s (see %s.log)", p.name, grpcAddr, p.name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &server{Child: child, addr: grpcAddr, peer: true}, nil
}

// writeOPAData writes data.subjects: each API key's SHA-256 → the subject.
func writeOPAData(path string, n int) error {
	type rec struct {
		ID     string `json:"id"`
		Plan   string `json:"plan"`
		Status string `json:"status"`
	}
	subjects := make(map[string]rec, n)
	for i := range n {
		status := "active"
		if i%pastDueEvery == pastDueEvery-1 {
			status = "past_due"
		}
		subjects[digest(apiKey(i))] = rec{fmt.Sprintf("sub-%d", i), planOf(i), status}
	}
	b, err := json.Marshal(map[string]any{"subjects": subjects})
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// freeAddr is a loopback address with a port free at the time of asking.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
