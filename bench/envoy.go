package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// The Envoy measurement: the same HTTP load through Envoy with ext_authz
// calling tollgate, and through Envoy with ext_authz disabled on the route.
// The difference is what tollgate adds to a request as a client sees it.

// envoyConfig renders the repo's envoy.yaml with ports chosen by the
// kernel, tollgate and the upstream at the given addresses, and, when
// authz is false, ext_authz disabled on every route (as envoy.yaml does
// for /healthz). Nothing else changes: the access log, path normalisation
// and the ext_authz settings are the shipped ones.
func envoyConfig(repo, tollgate, upstream string, authz bool) ([]byte, error) {
	src, err := os.ReadFile(filepath.Join(repo, "envoy.yaml"))
	if err != nil {
		return nil, err
	}
	var root map[string]any
	if err := yaml.Unmarshal(src, &root); err != nil {
		return nil, fmt.Errorf("envoy.yaml: %w", err)
	}
	var out []byte
	err = func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("envoy.yaml does not have the expected shape: %v", r)
			}
		}()
		mapAt(root, "admin", "address", "socket_address")["port_value"] = 0
		sr := mapAt(root, "static_resources")
		listener := listAt(sr, "listeners")[0].(map[string]any)
		mapAt(listener, "address", "socket_address")["port_value"] = 0
		hcm := mapAt(findNamed(listAt(listAt(listener, "filter_chains")[0].(map[string]any), "filters"),
			"envoy.filters.network.http_connection_manager"), "typed_config")
		if !authz {
			vh := listAt(mapAt(hcm, "route_config"), "virtual_hosts")[0].(map[string]any)
			for _, r := range listAt(vh, "routes") {
				r.(map[string]any)["typed_per_filter_config"] = map[string]any{
					"envoy.filters.http.ext_authz": map[string]any{
						"@type":    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
						"disabled": true,
					},
				}
			}
		}
		clusters := listAt(sr, "clusters")
		for name, addr := range map[string]string{"tollgate": tollgate, "upstream": upstream} {
			c := findNamed(clusters, name)
			ep := listAt(listAt(mapAt(c, "load_assignment"), "endpoints")[0].(map[string]any), "lb_endpoints")[0].(map[string]any)
			sa := mapAt(ep, "endpoint", "address", "socket_address")
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return err
			}
			p, _ := strconv.Atoi(port)
			sa["address"], sa["port_value"] = host, p
		}
		out, err = yaml.Marshal(root)
		return err
	}()
	return out, err
}

type envoyProc struct {
	*proc
	listen string
	admin  string
}

// startEnvoy runs Envoy with one worker (so one gRPC connection to
// tollgate, as in a sidecar) on the server CPUs.
func startEnvoy(dir, bin, name string, cfg []byte) (*envoyProc, error) {
	cfgPath := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return nil, err
	}
	adminFile := filepath.Join(dir, name+"-admin-address")
	p, err := start(name, filepath.Join(dir, name+".log"), bin, nil,
		"-c", cfgPath,
		"--base-id", strconv.Itoa(20000+rand.IntN(1<<20)),
		"--disable-hot-restart",
		"--concurrency", "1",
		"--log-level", "warn",
		"--admin-address-path", adminFile)
	if err != nil {
		return nil, err
	}
	e := &envoyProc{proc: p}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.exited() {
			return nil, fmt.Errorf("envoy exited: %v\n%s", p.err, p.tail())
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("envoy not ready in time:\n%s", p.tail())
		}
		if e.admin == "" {
			if b, err := os.ReadFile(adminFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
				e.admin = strings.TrimSpace(string(b))
			}
		}
		if e.admin != "" && httpOK("http://"+e.admin+"/ready") {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	var ls struct {
		ListenerStatuses []struct {
			LocalAddress struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	body, err := httpGet("http://" + e.admin + "/listeners?format=json")
	if err == nil {
		err = json.Unmarshal(body, &ls)
	}
	if err != nil || len(ls.ListenerStatuses) == 0 {
		p.stop()
		return nil, fmt.Errorf("envoy /listeners: %v %s", err, body)
	}
	sa := ls.ListenerStatuses[0].LocalAddress.SocketAddress
	e.listen = net.JoinHostPort(sa.Address, strconv.Itoa(sa.PortValue))
	return e, nil
}

// adminClient ignores any proxy settings: everything here is loopback.
var adminClient = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}

func httpGet(url string) ([]byte, error) {
	resp, err := adminClient.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, err
}

func httpOK(url string) bool {
	_, err := httpGet(url)
	return err == nil
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

	var (
		next    atomic.Uint64
		late    atomic.Int64
		stop    atomic.Bool
		workers = make([]*worker, spec.Streams)
	)
	start := time.Now()
	measureFrom := start.Add(spec.Warmup)
	measureTo := measureFrom.Add(spec.Duration)
	var due chan time.Time
	if spec.Rate > 0 {
		due = make(chan time.Time, spec.Streams*256)
		go dispatch(ctx, due, spec.Rate, start, measureTo, &stop, &late, measureFrom)
	}
	for i := range workers {
		w := &worker{hist: NewHistogram(), byKind: make([]int64, numKinds)}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				sent := time.Now()
				if due != nil {
					t, ok := <-due
					if !ok {
						return
					}
					sent = t
				} else if sent.After(measureTo) {
					return
				}
				r := &reqs[next.Add(1)%uint64(len(reqs))]
				status, err := do(r)
				done := time.Now()
				if sent.Before(measureFrom) || done.After(measureTo) {
					continue
				}
				if err != nil || status != 200 {
					w.errors++
					if ctx.Err() != nil {
						return
					}
					continue
				}
				w.hist.Record(done.Sub(sent))
				w.byKind[r.Kind]++
			}
		}()
	}
	sleepUntil(ctx, measureFrom)
	cli0 := selfCPU()
	t0 := time.Now()
	sleepUntil(ctx, measureTo)
	cli1 := selfCPU()
	elapsed := time.Since(t0)
	stop.Store(true)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m := &Measurement{Spec: spec, Elapsed: elapsed.Seconds(), ByKind: map[string]int64{}, Late: late.Load(), hist: NewHistogram()}
	for _, w := range workers {
		m.hist.Merge(w.hist)
		m.Errors += w.errors
		for k, n := range w.byKind {
			m.ByKind[Kind(k).String()] += n
		}
	}
	m.Requests = m.hist.Count()
	m.Throughput = float64(m.Requests) / elapsed.Seconds()
	m.Lat = m.hist.Summary()
	m.ClientCPU = cli1 - cli0
	return m, nil
}

// envoyPath finds Envoy: $ENVOY, then .tools/bin/envoy, then PATH.
func envoyPath(repo string) string {
	if p := os.Getenv("ENVOY"); p != "" {
		return p
	}
	if p := filepath.Join(repo, ".tools", "bin", "envoy"); fileExists(p) {
		return p
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// YAML tree helpers. They panic on an unexpected shape; envoyConfig recovers.

func mapAt(m map[string]any, path ...string) map[string]any {
	cur := m
	for _, k := range path {
		next, ok := cur[k].(map[string]any)
		if !ok {
			if cur[k] != nil {
				panic(fmt.Sprintf("%s is %T, not a mapping", k, cur[k]))
			}
			next = map[string]any{}
			cur[k] = next
		}
		cur = next
	}
	return cur
}

func listAt(m map[string]any, key string) []any {
	l, ok := m[key].([]any)
	if !ok || len(l) == 0 {
		panic(fmt.Sprintf("%s is missing or empty", key))
	}
	return l
}

func findNamed(l []any, name string) map[string]any {
	for _, x := range l {
		if m, ok := x.(map[string]any); ok && m["name"] == name {
			return m
		}
	}
	panic(fmt.Sprintf("nothing named %s", name))
}
