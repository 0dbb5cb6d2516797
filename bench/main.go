// Command bench is tollgate's load harness. It measures a running tollgate
// over gRPC with Envoy-shaped CheckRequests, and in the same run a
// do-nothing ext_authz server under the same load, and reports tollgate's
// throughput and latency as ratios to that floor. It also measures the
// latency tollgate adds to a request through a real Envoy.
//
//	go run ./bench                      (make bench)
//	go run ./bench -duration 20s -rounds 5 -streams 16 -conns 1
//	go run ./bench -rate 5000           (open loop at a fixed rate)
//
// Everything runs on loopback. The harness builds tollgate (or takes
// -tollgate-bin), writes a config and an entitlements file with 10,000
// subjects to a temp dir, starts tollgate, the floor server and Envoy as
// child processes, and stops each by its PID when done. With two or more
// CPUs it pins itself and the servers to separate CPUs with taskset.
package main

import (
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tollgate-authz/tollgate/internal/envoytest"
)

type options struct {
	repo, tollgateBin, envoyBin string
	out                         string
	keep                        bool
	profile                     string
	trace                       string
	traceSeconds                int

	subjects int
	mix      Mix
	conns    int
	streams  int
	duration time.Duration
	warmup   time.Duration
	rounds   int
	rate     float64 // fixed open-loop rate; 0: openFrac of the floor's closed-loop throughput
	openFrac float64
	maxReqs  int64
	sweep    string
	variants variants
	openLoop bool
	closed   bool

	envoy       bool
	envoyRate   float64
	envoyConns  int
	envoyRounds int

	pin          string
	clientCPUs   string
	serverCPUs   string
	serverOpts   ServerOptions
	serveFloor   bool
	floorWorkers int
	floorStreams uint
	floorWindow  int
	gogc         string
	target       string
	targetPID    int
	fixtureDir   string
	buildTags    string
	paths        string
	peers        variants
	scale        string
	scaleRounds  int
	scaleSources string
}

func main() {
	var o options
	flag.StringVar(&o.repo, "repo", "", "repository root (default: found from the working directory)")
	flag.StringVar(&o.tollgateBin, "tollgate-bin", "", "tollgate binary to measure (default: go build the repo)")
	flag.StringVar(&o.buildTags, "tags", "vtprotobuf", "build tags for building tollgate (vtprotobuf: go-control-plane's fast marshalling, see authz.Codec)")
	flag.StringVar(&o.envoyBin, "envoy-bin", "", "Envoy binary (default: $ENVOY, .tools/bin/envoy, PATH)")
	flag.StringVar(&o.out, "out", "bin/bench-results.json", "results file (JSON); a .csv with one row per measurement goes next to it")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (configs, logs)")
	flag.StringVar(&o.profile, "profile", "", "write a CPU profile of tollgate under the first closed-loop load to this file")
	flag.StringVar(&o.trace, "trace", "", "write an execution trace (go tool trace) and a CPU profile (FILE.pprof) of tollgate under the first open-loop run to these files")
	flag.IntVar(&o.traceSeconds, "trace-seconds", 3, "length of the -trace execution trace, from the start of the measured window")
	flag.IntVar(&o.subjects, "subjects", 10000, "subjects in the generated entitlements")
	flag.Float64Var(&o.mix.Deny, "deny", 0.08, "share of requests refused with 402")
	flag.Float64Var(&o.mix.Unknown, "unknown", 0.02, "share of requests with an unknown API key (401)")
	flag.IntVar(&o.conns, "conns", 1, "gRPC connections (Envoy opens one per worker)")
	flag.IntVar(&o.streams, "streams", 16, "concurrent Checks in flight, over all connections")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per run")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "load before each measured run")
	flag.IntVar(&o.rounds, "rounds", 3, "runs per server and scenario, alternating floor and tollgate")
	flag.Float64Var(&o.rate, "rate", 0, "open-loop rate in checks/s (default: -open-frac of the floor's closed-loop throughput)")
	flag.Float64Var(&o.openFrac, "open-frac", 0.5, "open-loop rate as a share of the floor's closed-loop throughput")
	flag.Int64Var(&o.maxReqs, "max-requests", 5_000_000, "stop a run after this many measured requests")
	flag.BoolVar(&o.closed, "closed", true, "run the closed loop (-streams in flight)")
	flag.BoolVar(&o.openLoop, "open", true, "also run an open loop (see -rate and -open-frac)")
	flag.Var(&o.variants, "variant", "also measure another tollgate build, name=path[,ENV=value...] (repeatable)")
	flag.StringVar(&o.sweep, "sweep", "", "also run closed loops at these stream counts, e.g. 1,4,64")
	flag.BoolVar(&o.envoy, "envoy", true, "measure through Envoy too (skipped when there is no Envoy binary)")
	flag.Float64Var(&o.envoyRate, "envoy-rate", 1000, "open-loop HTTP rate through Envoy, requests/s")
	flag.IntVar(&o.envoyConns, "envoy-conns", 8, "HTTP connections to Envoy")
	flag.IntVar(&o.envoyRounds, "envoy-rounds", 3, "runs per Envoy config, alternating")
	flag.StringVar(&o.pin, "pin", "auto", "pin harness and servers to separate CPUs with taskset: auto, off")
	flag.StringVar(&o.clientCPUs, "client-cpus", "0", "CPUs for the harness (load, upstream) when pinning")
	flag.StringVar(&o.serverCPUs, "server-cpus", "1", "CPUs for tollgate, the floor server and Envoy when pinning")
	flag.UintVar(&o.floorStreams, "max-streams", 1024, "floor server: grpc.MaxConcurrentStreams (serve's default)")
	flag.IntVar(&o.floorWorkers, "stream-workers", -1, "floor server: grpc.NumStreamWorkers; -1: 16 per GOMAXPROCS, as serve is recommended to use (BENCHMARKS.md); 0: a goroutine per stream")
	flag.IntVar(&o.floorWindow, "static-window", 0, "floor server: fixed HTTP/2 flow-control window in bytes (0: grpc-go's dynamic window, as serve)")
	flag.StringVar(&o.gogc, "gogc", "", "GOGC for the servers (tollgate and the floor alike); default: inherited")
	flag.StringVar(&o.target, "target", "", "drive a tollgate already running at host:port instead of starting one (serving the -write-fixture config)")
	flag.IntVar(&o.targetPID, "target-pid", 0, "the -target server's PID, to measure its CPU time")
	flag.StringVar(&o.fixtureDir, "write-fixture", "", "write the generated config and entitlements to this directory and exit")
	flag.BoolVar(&o.serveFloor, "serve-floor", false, "run as the do-nothing server (used by the harness itself)")
	flag.StringVar(&o.paths, "paths", strings.Join(pathNames, ","), "also run a closed loop for each of these paths alone (every request of a run takes it): "+strings.Join(pathNames, ", ")+"; \"\" for none")
	flag.Var(&o.peers, "peer", "also measure another ext_authz server in the same rounds: opa=PATH runs OPA-envoy-plugin with bench/opa/policy.rego (repeatable)")
	flag.StringVar(&o.scale, "scale", "", "also measure the mix at these subject counts, e.g. 10000,100000,1000000: start-up, RSS, CPU per Check, and the time to load the file or Redis (see -scale-sources)")
	flag.IntVar(&o.scaleRounds, "scale-rounds", 1, "closed-loop runs per size in -scale")
	flag.StringVar(&o.scaleSources, "scale-sources", "file", "entitlement sources for -scale: file, redis, or both (redis: a redis-server the harness starts and loads, pipelined)")
	flag.Parse()
	o.serverOpts = ServerOptions{MaxConcurrentStreams: uint32(o.floorStreams), NumStreamWorkers: o.floorWorkers, StaticWindow: int32(o.floorWindow)}

	if o.serveFloor {
		if err := serveFloor(o.serverOpts); err != nil {
			fmt.Fprintln(os.Stderr, "bench: floor:", err)
			os.Exit(1)
		}
		return
	}
	if o.pin == "auto" && runtime.NumCPU() >= 2 && os.Getenv("TOLLGATE_BENCH_PINNED") == "" {
		if err := pinSelf(o.clientCPUs); err != nil {
			fmt.Fprintln(os.Stderr, "bench: not pinning:", err)
			o.pin = "off"
		}
	}
	if o.pin == "auto" && os.Getenv("TOLLGATE_BENCH_PINNED") != "" {
		pinning.client, pinning.server = o.clientCPUs, o.serverCPUs
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, o)
	cancel()
	stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Report is the results file.
type Report struct {
	Started  time.Time      `json:"started"`
	Machine  Machine        `json:"machine"`
	Settings map[string]any `json:"settings"`
	GRPC     []*ScenarioRes `json:"grpc"`
	Envoy    *EnvoyRes      `json:"envoy,omitempty"`
	Scale    []*ScaleRes    `json:"scale,omitempty"`
	Targets  []Target       `json:"targets"`
	Notes    []string       `json:"notes,omitempty"`
	all      []*Measurement
}

// Machine describes where the numbers come from.
type Machine struct {
	NumCPU     int    `json:"nproc"`
	CPUModel   string `json:"cpu_model"`
	GoVersion  string `json:"go_version"`
	Kernel     string `json:"kernel"`
	ClientCPUs string `json:"client_cpus,omitempty"`
	ServerCPUs string `json:"server_cpus,omitempty"`
	Tollgate   string `json:"tollgate_version"`
}

// ScenarioRes is one load shape against both servers.
type ScenarioRes struct {
	Name    string                `json:"name"`
	Spec    LoadSpec              `json:"spec"`
	Runs    []*Measurement        `json:"runs"`
	Servers map[string]*Aggregate `json:"servers"`
	Ratios  map[string]float64    `json:"ratios"` // tollgate ÷ floor
	ByRound []map[string]float64  `json:"ratios_by_round"`
	// VariantRatios are the other builds' ratios to the floor (-variant).
	VariantRatios map[string]map[string]float64 `json:"variant_ratios,omitempty"`
}

// Aggregate is every round of one server in one scenario, merged.
type Aggregate struct {
	Requests          int64   `json:"requests"`
	Errors            int64   `json:"errors"`
	Mismatched        int64   `json:"mismatched"`
	Throughput        float64 `json:"checks_per_s"`
	Lat               Summary `json:"latency_us"`
	ServerCPUPerCheck float64 `json:"server_cpu_us_per_check"`
	ClientCPUPerCheck float64 `json:"client_cpu_us_per_check"`
	// OtherCPU is the share of one CPU that other processes used during
	// the runs: above ~0.1 the numbers are disturbed.
	OtherCPU float64 `json:"other_cpu"`
}

// EnvoyRes is the Envoy measurement.
type EnvoyRes struct {
	Spec    LoadSpec              `json:"spec"`
	Runs    []*Measurement        `json:"runs"`
	Configs map[string]*Aggregate `json:"configs"` // "ext_authz" and "no_ext_authz"
	// Added is ext_authz minus no_ext_authz at each percentile, µs.
	Added map[string]float64 `json:"added_us"`
	// AddedFloor is the same with the do-nothing server behind ext_authz:
	// what any ext_authz server costs through Envoy.
	AddedFloor map[string]float64 `json:"added_by_floor_us"`
}

// Target is one of the goals, met or not.
type Target struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Limit string  `json:"limit"`
	Met   bool    `json:"met"`
}

func run(ctx context.Context, o options) error {
	if o.repo == "" {
		r, err := findRepo()
		if err != nil {
			return err
		}
		o.repo = r
	}
	dir, err := os.MkdirTemp("", "tollgate-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "bench: keeping configs and logs in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	bin := o.tollgateBin
	if bin == "" && o.target == "" && o.fixtureDir == "" {
		bin = filepath.Join(dir, "tollgate")
		fmt.Fprintln(os.Stderr, "bench: building tollgate")
		build := exec.CommandContext(ctx, "go", "build", "-tags", o.buildTags, "-o", bin, ".")
		build.Dir = o.repo
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	if o.fixtureDir != "" {
		path, err := writeFixture(o.fixtureDir, o.subjects, false)
		if err == nil {
			fmt.Println(path)
		}
		return err
	}
	cfg, err := writeFixture(dir, o.subjects, o.profile != "" || o.trace != "")
	if err != nil {
		return err
	}
	if o.gogc != "" {
		serverEnv = append(serverEnv, "GOGC="+o.gogc)
	}
	rep := &Report{Started: time.Now().UTC(), Machine: machine(bin), Settings: map[string]any{
		"subjects": o.subjects, "mix_deny402": o.mix.Deny, "mix_unknown": o.mix.Unknown,
		"rounds": o.rounds, "warmup_s": o.warmup.Seconds(), "duration_s": o.duration.Seconds(),
		"floor_server_options": o.serverOpts, "tollgate_bin": bin,
	}}
	rep.Machine.ClientCPUs, rep.Machine.ServerCPUs = pinning.client, pinning.server
	if pinning.server == "" {
		rep.Notes = append(rep.Notes, "not pinned: harness and servers share the CPUs")
	}

	reqs := genRequests(100_000, o.subjects, o.mix, 1)
	enc, err := encodeRequests(reqs)
	if err != nil {
		return err
	}

	fmt.Fprintln(os.Stderr, "bench: starting tollgate and the floor server")
	var tg *server
	if o.target != "" {
		tg = &server{targetPID: o.targetPID, addr: o.target}
	} else if tg, err = startTollgate(dir, "tollgate", bin, cfg, nil); err != nil {
		return err
	}
	fl, err := startFloor(dir, o.serverOpts)
	if err != nil {
		return err
	}
	servers := []named{{"floor", fl}, {"tollgate", tg}}
	for _, p := range o.peers {
		s, err := startPeer(dir, o.repo, p, o.subjects)
		if err != nil {
			return fmt.Errorf("peer %s: %w", p.name, err)
		}
		servers = append(servers, named{p.name, s})
	}
	for _, v := range o.variants {
		var s *server
		var err error
		if v.bin == "@floor" {
			s, err = startFloorArgs(dir, v.name, v.flags, v.env)
		} else {
			s, err = startTollgate(dir, v.name, v.bin, cfg, v.env)
		}
		if err != nil {
			return err
		}
		servers = append(servers, named{v.name, s})
	}

	base := LoadSpec{Conns: o.conns, Streams: o.streams, Duration: o.duration, Warmup: o.warmup,
		MaxReqs: o.maxReqs, Timeout: 200 * time.Millisecond, Seconds: o.duration.Seconds()}
	closed := base
	closed.Name = fmt.Sprintf("closed c%d s%d", o.conns, o.streams)
	var scenarios []LoadSpec
	if o.closed || o.rate <= 0 {
		scenarios = append(scenarios, closed) // the open loop's default rate comes from it
	}
	pathEnc := map[string][]encoded{}
	for _, p := range strings.Split(o.paths, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		reqs, err := genPath(p, 50_000, o.subjects, 3)
		if err != nil {
			return err
		}
		if pathEnc[p], err = encodeRequests(reqs); err != nil {
			return err
		}
		ps := base
		ps.Path, ps.Name = p, fmt.Sprintf("path %s, closed c%d s%d", p, o.conns, o.streams)
		scenarios = append(scenarios, ps)
	}
	for _, s := range strings.Split(o.sweep, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 && n != o.streams {
			sw := base
			sw.Streams, sw.Name = n, fmt.Sprintf("closed c%d s%d", o.conns, n)
			scenarios = append(scenarios, sw)
		}
	}
	open := base
	open.Name = fmt.Sprintf("open c%d s%d", o.conns, o.streams)
	if o.openLoop {
		scenarios = append(scenarios, open)
	}

	profiled, traced := false, false
	for _, spec := range scenarios {
		if spec.Name == open.Name {
			spec.Rate = o.rate
			if spec.Rate <= 0 {
				spec.Rate = o.openFrac * rep.GRPC[0].Servers["floor"].Throughput
			}
			spec.Name = fmt.Sprintf("%s @%.0f/s", spec.Name, spec.Rate)
		}
		sc := &ScenarioRes{Name: spec.Name, Spec: spec, Servers: map[string]*Aggregate{}, VariantRatios: map[string]map[string]float64{}}
		for round := 1; round <= o.rounds; round++ {
			byName := map[string]*Measurement{}
			// Rotate the order, so that drift favours no server.
			for k := range servers {
				sv := servers[(k+round-1)%len(servers)]
				fmt.Fprintf(os.Stderr, "bench: %s, round %d/%d: %s\n", spec.Name, round, o.rounds, sv.name)
				var prof chan error
				if o.profile != "" && !profiled && sv.name == "tollgate" && spec.Rate == 0 {
					profiled = true
					prof = make(chan error, 1)
					go func() { prof <- fetchDebug(sv.s.admin, "profile", o.profile, spec.Warmup, spec.Duration) }()
				}
				if o.trace != "" && !traced && sv.name == "tollgate" && spec.Rate > 0 {
					// The trace and a CPU profile of the same window: where
					// the open loop's tail comes from.
					traced = true
					prof = make(chan error, 2)
					d := min(spec.Duration, time.Duration(o.traceSeconds)*time.Second)
					go func() { prof <- fetchDebug(sv.s.admin, "trace", o.trace, spec.Warmup, d) }()
					go func() { prof <- fetchDebug(sv.s.admin, "profile", o.trace+".pprof", spec.Warmup, spec.Duration) }()
				}
				reqs := enc
				if spec.Path != "" {
					reqs = pathEnc[spec.Path]
				}
				m, err := runGRPC(ctx, sv.s.addr, sv.s.pid(), spec, reqs, sv.s.check())
				if err != nil {
					return fmt.Errorf("%s %s: %w", spec.Name, sv.name, err)
				}
				for range cap(prof) {
					if err := <-prof; err != nil {
						fmt.Fprintln(os.Stderr, "bench: profile:", err)
					}
				}
				m.Target, m.Scenario, m.Round = sv.name, spec.Name, round
				sc.Runs = append(sc.Runs, m)
				rep.all = append(rep.all, m)
				byName[sv.name] = m
			}
			f, t := byName["floor"], byName["tollgate"]
			sc.ByRound = append(sc.ByRound, map[string]float64{
				"throughput": t.Throughput / f.Throughput, "p99": t.Lat.P99 / f.Lat.P99,
			})
		}
		for _, sv := range servers {
			sc.Servers[sv.name] = aggregate(sc.Runs, sv.name)
		}
		sc.Ratios = ratios(sc.Servers["tollgate"], sc.Servers["floor"])
		for _, sv := range servers[2:] {
			sc.VariantRatios[sv.name] = ratios(sc.Servers[sv.name], sc.Servers["floor"])
		}
		rep.GRPC = append(rep.GRPC, sc)
	}

	if o.envoy {
		eb := o.envoyBin
		if eb == "" {
			if eb, err = envoyPath(o.repo); err != nil {
				return err
			}
		}
		if eb == "" {
			rep.Notes = append(rep.Notes, "Envoy not measured: no Envoy binary (make tools)")
			fmt.Fprintln(os.Stderr, "bench: no Envoy binary: skipping the Envoy measurement (make tools installs one)")
		} else {
			er, err := runEnvoy(ctx, o, dir, eb, tg.addr, fl.addr)
			if err != nil {
				return err
			}
			rep.Envoy = er
			rep.all = append(rep.all, er.Runs...)
		}
	}

	if len(o.scale) > 0 {
		// The servers above are idle from here: stop them, so that each
		// size runs alone beside a floor of its own.
		stopAll()
		sr, err := runScale(ctx, o, dir, bin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			rep.Notes = append(rep.Notes, err.Error())
		}
		rep.Scale = sr
	}

	// Issue 13's targets: every path and the mix at or below the floor's
	// CPU per Check, throughput ≥ 0.95 × in the closed loop; the open
	// loop's p99 ≤ 1.3 ×; through Envoy, tollgate's added p99 ≤ 1.5 × the
	// floor's.
	for _, sc := range rep.GRPC {
		if sc.Spec.Rate > 0 {
			rep.Targets = append(rep.Targets, Target{Name: "p99 vs floor, " + sc.Name, Value: sc.Ratios["p99"], Limit: "≤ 1.3", Met: sc.Ratios["p99"] <= 1.3})
			continue
		}
		cpu := sc.Ratios["server_cpu_per_check"]
		rep.Targets = append(rep.Targets,
			Target{Name: "CPU/Check vs floor, " + sc.Name, Value: cpu, Limit: "≤ 1.00", Met: cpu > 0 && cpu <= 1.00},
			Target{Name: "throughput vs floor, " + sc.Name, Value: sc.Ratios["throughput"], Limit: "≥ 0.95", Met: sc.Ratios["throughput"] >= 0.95})
	}
	if e := rep.Envoy; e != nil && e.AddedFloor["p99"] > 0 {
		v := e.Added["p99"] / e.AddedFloor["p99"]
		rep.Targets = append(rep.Targets, Target{Name: "Envoy: p99 added by tollgate ÷ by the floor", Value: v, Limit: "≤ 1.5", Met: v <= 1.5})
	}
	for _, sc := range rep.GRPC {
		for name, a := range sc.Servers {
			if a.OtherCPU > 0.05 {
				rep.Notes = append(rep.Notes, fmt.Sprintf("%s, %s: other processes used %.0f%% of a CPU during the runs: the numbers are disturbed, run again on a quiet machine", sc.Name, name, 100*a.OtherCPU))
			}
		}
		if t := sc.Servers["tollgate"]; t.Mismatched > 0 || t.Errors > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s: tollgate had %d errors and %d unexpected decisions", sc.Name, t.Errors, t.Mismatched))
		}
	}

	printReport(os.Stdout, rep)
	return writeResults(o.out, rep)
}

type named struct {
	name string
	s    *server
}

// ratios are a server's figures divided by the floor's.
func ratios(t, f *Aggregate) map[string]float64 {
	r := map[string]float64{
		"throughput": t.Throughput / f.Throughput,
		"p50":        t.Lat.P50 / f.Lat.P50,
		"p90":        t.Lat.P90 / f.Lat.P90,
		"p99":        t.Lat.P99 / f.Lat.P99,
		"p99_9":      t.Lat.P999 / f.Lat.P999,
	}
	if f.ServerCPUPerCheck > 0 {
		r["server_cpu_per_check"] = t.ServerCPUPerCheck / f.ServerCPUPerCheck
	}
	return r
}

// variant is another tollgate build (or environment) measured in the same
// rounds, for before/after comparisons: -variant name=path[,ENV=value...].
// With the path @floor it is another floor server; parts that start with
// "-" are its flags: -variant floor_gc=@floor,-stream-workers=16,GOGC=400.
type variant struct {
	name, bin string
	env       []string // NAME=value
	flags     []string // -flag=value, for a floor
}

type variants []variant

func (v *variants) String() string { return fmt.Sprint(*v) }

func (v *variants) Set(s string) error {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" || name == "floor" || name == "tollgate" {
		return errors.New("want name=path[,ENV=value...], name not floor or tollgate")
	}
	parts := strings.Split(rest, ",")
	x := variant{name: name, bin: parts[0]}
	for _, p := range parts[1:] {
		if strings.HasPrefix(p, "-") {
			x.flags = append(x.flags, p)
		} else {
			x.env = append(x.env, p)
		}
	}
	*v = append(*v, x)
	return nil
}

func aggregate(runs []*Measurement, target string) *Aggregate {
	a := &Aggregate{}
	h := NewHistogram()
	var elapsed, srvCPU, cliCPU, other float64
	for _, m := range runs {
		if m.Target != target {
			continue
		}
		h.Merge(m.hist)
		a.Errors += m.Errors
		a.Mismatched += m.Mismatched
		elapsed += m.Elapsed
		srvCPU += m.ServerCPU
		cliCPU += m.ClientCPU
		other += m.OtherCPU
	}
	a.Requests = h.Count()
	if elapsed > 0 {
		a.Throughput = float64(a.Requests) / elapsed
		a.OtherCPU = other / elapsed
	}
	if a.Requests > 0 {
		a.ServerCPUPerCheck = srvCPU / float64(a.Requests) * 1e6
		a.ClientCPUPerCheck = cliCPU / float64(a.Requests) * 1e6
	}
	a.Lat = h.Summary()
	return a
}

// runEnvoy measures the same allowed HTTP requests through Envoy with and
// without ext_authz, in alternating rounds.
func runEnvoy(ctx context.Context, o options, dir, bin, tollgate, floor string) (*EnvoyRes, error) {
	up, stopUp, err := startUpstream()
	if err != nil {
		return nil, err
	}
	defer stopUp()
	type cfg struct {
		name string
		e    *envoytest.Envoy
	}
	var cfgs []cfg
	for _, c := range []struct {
		name   string
		authz  bool
		server string
	}{{"no_ext_authz", false, tollgate}, {"ext_authz", true, tollgate}, {"ext_authz_floor", true, floor}} {
		e, err := startEnvoy(o.repo, dir, bin, "envoy-"+c.name, c.server, up, c.authz)
		if err != nil {
			return nil, err
		}
		defer e.Stop()
		cfgs = append(cfgs, cfg{c.name, e})
	}
	reqs := genRequests(20_000, o.subjects, Mix{}, 2) // allowed only: both paths reach the upstream
	spec := LoadSpec{Name: fmt.Sprintf("http open %d conns @%.0f/s", o.envoyConns, o.envoyRate), Conns: o.envoyConns,
		Streams: o.envoyConns, Rate: o.envoyRate, Duration: o.duration, Warmup: o.warmup,
		Timeout: 5 * time.Second, Seconds: o.duration.Seconds()}
	res := &EnvoyRes{Spec: spec, Configs: map[string]*Aggregate{}, Added: map[string]float64{}}
	for round := 1; round <= o.envoyRounds; round++ {
		for k := range cfgs {
			c := cfgs[(k+round-1)%len(cfgs)]
			fmt.Fprintf(os.Stderr, "bench: Envoy %s, round %d/%d\n", c.name, round, o.envoyRounds)
			m, err := runHTTP(ctx, c.e.Listen, spec, reqs)
			if err != nil {
				return nil, err
			}
			m.Target, m.Scenario, m.Round = "envoy+"+c.name, spec.Name, round
			res.Runs = append(res.Runs, m)
		}
	}
	for _, c := range cfgs {
		res.Configs[c.name] = aggregate(res.Runs, "envoy+"+c.name)
	}
	added := func(a, n Summary) map[string]float64 {
		return map[string]float64{"p50": a.P50 - n.P50, "p90": a.P90 - n.P90, "p99": a.P99 - n.P99, "p99_9": a.P999 - n.P999}
	}
	res.Added = added(res.Configs["ext_authz"].Lat, res.Configs["no_ext_authz"].Lat)
	res.AddedFloor = added(res.Configs["ext_authz_floor"].Lat, res.Configs["no_ext_authz"].Lat)
	return res, nil
}

// fetchDebug saves tollgate's /debug/pprof/KIND (profile: CPU; trace:
// execution trace) taken over d from wait on (the measured window; admin.pprof
// is on in the generated config when profiling or tracing).
func fetchDebug(admin, kind, path string, wait, d time.Duration) error {
	time.Sleep(wait)
	c := &http.Client{Timeout: d + 10*time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", admin, kind, max(1, int(d.Seconds()))))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("pprof: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func findRepo() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/tollgate-authz/tollgate\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the tollgate repository, or pass -repo")
		}
		dir = parent
	}
}

func machine(bin string) Machine {
	m := Machine{NumCPU: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command(bin, "version").Output(); err == nil {
		m.Tollgate = strings.TrimSpace(string(out))
	}
	// The harness itself runs on fewer CPUs when pinned; report the machine's.
	if b, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		if n := countCPUs(strings.TrimSpace(string(b))); n > 0 {
			m.NumCPU = n
		}
	}
	return m
}

// countCPUs counts a CPU list such as "0-1" or "0,2-3".
func countCPUs(list string) int {
	n := 0
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}

// serverNames lists floor, tollgate, then any variants.
func serverNames(sc *ScenarioRes) []string {
	names := []string{"floor", "tollgate"}
	var rest []string
	for n := range sc.Servers {
		if n != "floor" && n != "tollgate" {
			rest = append(rest, n)
		}
	}
	slices.Sort(rest)
	return append(names, rest...)
}

func printReport(w io.Writer, rep *Report) {
	m := rep.Machine
	fmt.Fprintf(w, "\ntollgate load harness — %d CPUs (%s), %s", m.NumCPU, m.CPUModel, m.GoVersion)
	if m.ServerCPUs != "" {
		fmt.Fprintf(w, ", harness on CPU %s, servers on CPU %s", m.ClientCPUs, m.ServerCPUs)
	}
	fmt.Fprintln(w)
	for _, sc := range rep.GRPC {
		fmt.Fprintf(w, "\n== gRPC Check, %s (%d rounds × %.0fs) ==\n", sc.Name, len(sc.ByRound), sc.Spec.Seconds)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "server\tchecks/s\tp50 µs\tp90 µs\tp99 µs\tp99.9 µs\terrors\tserver CPU µs/check\tharness CPU µs/check\tother load\t")
		for _, name := range serverNames(sc) {
			a := sc.Servers[name]
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t%.1f\t%.1f\t%.2f\t\n", name, a.Throughput, a.Lat.P50, a.Lat.P90, a.Lat.P99, a.Lat.P999,
				a.Errors+a.Mismatched, a.ServerCPUPerCheck, a.ClientCPUPerCheck, a.OtherCPU)
		}
		r := sc.Ratios
		fmt.Fprintf(tw, "tollgate ÷ floor\t%.3f\t%.2f\t%.2f\t%.2f\t%.2f\t\t%.2f\t\n", r["throughput"], r["p50"], r["p90"], r["p99"], r["p99_9"], r["server_cpu_per_check"])
		for _, name := range serverNames(sc)[2:] {
			r := sc.VariantRatios[name]
			fmt.Fprintf(tw, "%s ÷ floor\t%.3f\t%.2f\t%.2f\t%.2f\t%.2f\t\t%.2f\t\n", name, r["throughput"], r["p50"], r["p90"], r["p99"], r["p99_9"], r["server_cpu_per_check"])
		}
		tw.Flush()
		var byRound []string
		for _, br := range sc.ByRound {
			byRound = append(byRound, fmt.Sprintf("%.3f/%.2f", br["throughput"], br["p99"]))
		}
		fmt.Fprintf(w, "per round (throughput/p99 ratio): %s\n", strings.Join(byRound, "  "))
	}
	if e := rep.Envoy; e != nil {
		fmt.Fprintf(w, "\n== Through Envoy: %s, allowed requests (%d rounds × %.0fs) ==\n", e.Spec.Name, len(e.Runs)/3, e.Spec.Seconds)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "Envoy\treq/s\tp50 µs\tp90 µs\tp99 µs\tp99.9 µs\terrors\t")
		for _, name := range []string{"no_ext_authz", "ext_authz_floor", "ext_authz"} {
			a := e.Configs[name]
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t\n", name, a.Throughput, a.Lat.P50, a.Lat.P90, a.Lat.P99, a.Lat.P999, a.Errors)
		}
		fmt.Fprintf(tw, "added by the floor server\t\t%+.0f\t%+.0f\t%+.0f\t%+.0f\t\t\n", e.AddedFloor["p50"], e.AddedFloor["p90"], e.AddedFloor["p99"], e.AddedFloor["p99_9"])
		fmt.Fprintf(tw, "added by tollgate\t\t%+.0f\t%+.0f\t%+.0f\t%+.0f\t\t\n", e.Added["p50"], e.Added["p90"], e.Added["p99"], e.Added["p99_9"])
		tw.Flush()
	}
	if len(rep.Scale) > 0 {
		printScale(w, rep.Scale)
	}
	fmt.Fprintln(w, "\n== Targets ==")
	for _, t := range rep.Targets {
		mark := "MET"
		if !t.Met {
			mark = "NOT MET"
		}
		fmt.Fprintf(w, "%-48s %6.3f  (%s)  %s\n", t.Name, t.Value, t.Limit, mark)
	}
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "note:", n)
	}
}

// writeResults writes the JSON report and a CSV of every run. Each run
// keeps its percentiles; the whole latency curve is kept for the merged
// runs only, which is what the plot draws.
func writeResults(path string, rep *Report) error {
	for _, m := range rep.all {
		m.Lat.Quantiles = nil
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	csvPath := strings.TrimSuffix(path, filepath.Ext(path)) + ".csv"
	f, err := os.Create(csvPath)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"scenario", "target", "round", "connections", "streams", "rate", "requests", "errors", "checks_per_s", "p50_us", "p90_us", "p99_us", "p99_9_us", "max_us", "server_cpu_us_per_check"})
	runs := slices.Clone(rep.all)
	slices.SortStableFunc(runs, func(a, b *Measurement) int { return cmp.Compare(a.Scenario, b.Scenario) })
	for _, m := range runs {
		f := func(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) }
		_ = w.Write([]string{m.Scenario, m.Target, strconv.Itoa(m.Round), strconv.Itoa(m.Spec.Conns), strconv.Itoa(m.Spec.Streams),
			f(m.Spec.Rate), strconv.FormatInt(m.Requests, 10), strconv.FormatInt(m.Errors, 10), f(m.Throughput),
			f(m.Lat.P50), f(m.Lat.P90), f(m.Lat.P99), f(m.Lat.P999), f(m.Lat.Max), f(m.ServerCPUPerCheck)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: results in %s and %s\n", path, csvPath)
	return f.Close()
}
