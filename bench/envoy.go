package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-authz/tollgate/internal/envoytest"
)

// The Envoy measurement: the same HTTP load through Envoy with ext_authz
// calling tollgate, and through Envoy with ext_authz disabled on the route.
// The difference is what tollgate adds to a request as a client sees it.

// startEnvoy runs Envoy from the repo's envoy.yaml on the server CPUs, with
// tollgate and the upstream at the given addresses and, when authz is
// false, ext_authz disabled on every route (as envoy.yaml does for
// /healthz). Nothing else changes: the access log, path normalisation and
// the ext_authz settings are the shipped ones.
func startEnvoy(repo, dir, bin, name, tollgate, upstream string, authz bool) (*envoytest.Envoy, error) {
	src, err := os.ReadFile(filepath.Join(repo, "envoy.yaml"))
	if err != nil {
		return nil, err
	}
	cfg, _, err := envoytest.Derive(src, envoytest.Changes{Tollgate: tollgate, Upstream: upstream, NoAuthz: !authz})
	if err != nil {
		return nil, err
	}
	e, err := envoytest.Start(envoytest.Options{
		Bin: bin, Config: cfg, Dir: dir, Name: name,
		BaseID: 20000, LogLevel: "warn", Ready: 30 * time.Second,
		Command: func(bin string, args ...string) *exec.Cmd { return command(bin, nil, args...) },
	})
	if err != nil {
		return nil, err
	}
	track(e.Child)
	return e, nil
}

// envoyPath finds Envoy (see envoytest.Find): "" when there is none.
func envoyPath(repo string) (string, error) {
	p, err := envoytest.Find(repo)
	if errors.Is(err, envoytest.ErrNotFound) {
		return "", nil
	}
	return p, err
}

// startUpstream is the API behind Envoy: a tiny Go server that answers
// 200 "ok". It runs in the harness, on the client CPUs.
func startUpstream() (string, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	body := []byte(`{"ok":true}`)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("content-type", "application/json")
		_, _ = w.Write(body)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	return lis.Addr().String(), func() { _ = srv.Close() }, nil
}

// runHTTP drives Envoy at addr with allowed requests, spec.Streams
// connections, open or closed loop, and measures client-side latency.
func runHTTP(ctx context.Context, addr string, spec LoadSpec, reqs []HTTPRequest) (*Measurement, error) {
	tr := &http.Transport{
		Proxy: nil, MaxIdleConnsPerHost: spec.Streams, MaxConnsPerHost: spec.Streams,
		DisableCompression: true, IdleConnTimeout: time.Minute,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: spec.Timeout}
	do := func(r *HTTPRequest) (int, error) {
		var body io.Reader
		if r.Method == "POST" {
			body = strings.NewReader(`{"messages":[{"role":"user","content":"hello"}]}`)
		}
		req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+addr+r.Path, body)
		if err != nil {
			return 0, err
		}
		req.Header.Set("x-api-key", r.Key)
		req.Header.Set("x-request-id", r.ID)
		req.Header.Set("accept", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// Open every connection before measuring.
	var wg sync.WaitGroup
	for i := range spec.Streams {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = do(&reqs[i%len(reqs)]) }()
	}
	wg.Wait()

	newSend := func(int) send {
		return func(n uint64) (Kind, bool, error) {
			r := &reqs[n%uint64(len(reqs))]
			status, err := do(r)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("status %d", status)
			}
			return r.Kind, true, err
		}
	}
	// Only the harness's CPU time: Envoy's and the servers' are not read.
	sample := func() cpuTimes { return cpuTimes{client: selfCPU()} }
	return drive(ctx, spec, newSend, sample)
}
