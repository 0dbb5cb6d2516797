package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

// serveGCPercent is the GOGC serve runs with when a memory limit is known
// and GOGC is not set: a heap goal of about 5× the live heap instead of 2×,
// a quarter as many collections. On refusal floods GC was the largest
// single cost of a Check (BENCHMARKS.md, issue 13); with GOGC=400 the
// harness measured 0.07–0.29 less of the floor's CPU per Check on every path.
// Without a limit it is the most the headroom rule (gcHeadroom) goes to.
const serveGCPercent = 400

// gcHeadroom is the least the heap may grow between collections when
// neither GOGC nor a memory limit is set: the GC percent is raised from
// Go's 100, up to serveGCPercent, until the heap goal is this much over
// the live heap. A sidecar's live heap is tens of MB, so at Go's
// default the GC would run several times a second (its mark work was ~15%
// of the CPU at 10,000 subjects); the cost is at most this much more heap
// than Go's default, and nothing once the live heap is this large.
const gcHeadroom = 64 << 20

// gcHeadroomInterval is how often serve rereads the live heap to keep
// gcHeadroom. The live heap changes when data is loaded or reloaded, not
// from one Check to the next.
const gcHeadroomInterval = time.Second

// memoryLimitShare is the share of a cgroup's memory limit serve gives the
// Go runtime as its soft limit (GOMEMLIMIT), leaving the rest to what the
// runtime does not count (stacks of threads in C, the binary, page tables).
const memoryLimitShare = 0.9

// gcTuning is what tuneGC found and set, for the start-up log.
type gcTuning struct {
	GOGC        string // the GC percent in force: the env's GOGC, what tuneGC set, or the headroom range
	MemoryLimit int64  // the soft memory limit in force, bytes; 0 for none
	From        string // env (GOGC or GOMEMLIMIT set), cgroup, or headroom (no limit: keepGCHeadroom runs)
}

// gcEnv is what tuneGC and keepGCHeadroom read and set; tests replace it.
type gcEnv struct {
	getenv         func(string) string
	readFile       func(string) ([]byte, error)
	setGCPercent   func(int) int
	setMemoryLimit func(int64) int64
	// liveHeap is the heap GOGC is a percentage of: the live heap at the
	// last collection plus the stacks and globals it scanned.
	liveHeap func() uint64
	// ticker ticks every gcHeadroomInterval until stop.
	ticker func() (tick <-chan time.Time, stop func())
}

var processGCEnv = gcEnv{
	getenv: os.Getenv, readFile: os.ReadFile, setGCPercent: debug.SetGCPercent, setMemoryLimit: debug.SetMemoryLimit,
	liveHeap: readLiveHeap,
	ticker: func() (<-chan time.Time, func()) {
		t := time.NewTicker(gcHeadroomInterval)
		return t.C, t.Stop
	},
}

// gcHeadroomInForce is the log's gogc when keepGCHeadroom runs.
const gcHeadroomInForce = "100-400 (64 MiB headroom)"

// tuneGC sets serve's GC defaults. An operator's GOGC is kept as it is.
// A flat higher GOGC is safe only under a memory limit, which keeps the
// larger heap goal below what the container may use: so serve sets
// GOGC=400 when GOMEMLIMIT is set, or when the process runs in a cgroup
// with a memory limit (it then sets GOMEMLIMIT to 90% of it). Without a
// limit, a heap of a million subjects would be let grow to five times its
// size; so serve keeps gcHeadroom instead (From "headroom": the caller
// runs keepGCHeadroom), which is Go's default for a live heap of 64 MiB
// or more.
func tuneGC(e gcEnv) gcTuning {
	if v := e.getenv("GOGC"); v != "" {
		return gcTuning{GOGC: v, MemoryLimit: limitInForce(e), From: "env"}
	}
	percent := strconv.Itoa(serveGCPercent)
	if e.getenv("GOMEMLIMIT") != "" {
		e.setGCPercent(serveGCPercent)
		return gcTuning{GOGC: percent, MemoryLimit: limitInForce(e), From: "env"}
	}
	limit := cgroupMemoryLimit(e.readFile)
	if limit <= 0 {
		return gcTuning{GOGC: gcHeadroomInForce, From: "headroom"}
	}
	soft := int64(float64(limit) * memoryLimitShare)
	e.setMemoryLimit(soft)
	e.setGCPercent(serveGCPercent)
	return gcTuning{GOGC: percent, MemoryLimit: soft, From: "cgroup"}
}

// limitInForce is the runtime's soft memory limit, 0 when there is none.
func limitInForce(e gcEnv) int64 {
	l := e.setMemoryLimit(-1) // a negative limit reads without setting
	if l == int64(^uint64(0)>>1) {
		return 0
	}
	return l
}

// cgroupMemoryLimit is the memory limit of the cgroup this process runs
// in, in bytes, or 0 when there is none or it cannot be read: cgroup v2's
// memory.max, or v1's memory.limit_in_bytes, found from /proc/self/cgroup
// (with a cgroup namespace, the group is the mount's root).
func cgroupMemoryLimit(readFile func(string) ([]byte, error)) int64 {
	var candidates []string
	if b, err := readFile("/proc/self/cgroup"); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			parts := strings.SplitN(l, ":", 3)
			if len(parts) != 3 {
				continue
			}
			switch {
			case parts[0] == "0" && parts[1] == "":
				candidates = append(candidates, filepath.Join("/sys/fs/cgroup", parts[2], "memory.max"))
			case hasController(parts[1], "memory"):
				candidates = append(candidates, filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes"))
			}
		}
	}
	candidates = append(candidates, "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
	for _, path := range candidates {
		b, err := readFile(path)
		if err != nil {
			continue
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 || n >= 1<<62 { // v1 writes a page-rounded MaxInt64 for "no limit"
			return 0
		}
		return n
	}
	return 0
}

func hasController(list, name string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// headroomPercent is the GC percent that gives a heap goal gcHeadroom over
// live (GOGC's base, gcEnv.liveHeap), kept between Go's default 100 and
// serveGCPercent: 400 up to 16 MiB, 100 from 64 MiB. It never sets a heap
// goal more than gcHeadroom over Go's default one.
func headroomPercent(live uint64) int {
	if live >= gcHeadroom {
		return 100
	}
	if live == 0 {
		return serveGCPercent
	}
	p := (gcHeadroom*100 + live - 1) / live // rounded up; no overflow below gcHeadroom
	return int(min(p, serveGCPercent))
}

// keepGCHeadroom sets the GC percent to headroomPercent of the live heap,
// now and at every tick until done is closed. It calls e.setGCPercent only
// when the percent changes (Go's 100 is in force when it starts).
func keepGCHeadroom(e gcEnv, tick <-chan time.Time, done <-chan struct{}) {
	inForce := 100
	for {
		if p := headroomPercent(e.liveHeap()); p != inForce {
			e.setGCPercent(p)
			inForce = p
		}
		select {
		case <-done:
			return
		case <-tick:
		}
	}
}

// startGCHeadroom runs keepGCHeadroom in a goroutine on e's ticker; stop
// ends it and returns once it has.
func startGCHeadroom(e gcEnv) (stop func()) {
	tick, stopTicker := e.ticker()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { keepGCHeadroom(e, tick, done) })
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
			stopTicker()
		})
	}
}

// readLiveHeap is what GOGC is a percentage of, from runtime/metrics: the
// heap marked live by the last collection plus the stacks and globals it
// scanned (0 before the first collection).
func readLiveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}
	metrics.Read(s)
	var sum uint64
	for _, v := range s {
		if v.Value.Kind() == metrics.KindUint64 {
			sum += v.Value.Uint64()
		}
	}
	return sum
}

// servedGC is what tuneGC did for this process: main tunes the GC before
// serve starts, and serve logs it. In-process tests of run leave the test
// binary's GC as it is (servedGC.From is then "").
var servedGC gcTuning

// tuneGCFor tunes the GC when the command is serve (the others are short
// and keep Go's defaults).
func tuneGCFor(args []string) {
	if len(args) > 0 && args[0] == "serve" {
		servedGC = tuneGC(processGCEnv)
	}
}

// startServedGC starts what servedGC needs while serve runs (the headroom
// loop, when From is "headroom"), and returns the func that stops it.
func startServedGC() (stop func()) {
	if servedGC.From != "headroom" {
		return func() {}
	}
	return startGCHeadroom(processGCEnv)
}
