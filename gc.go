package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// serveGCPercent is the GOGC serve runs with when a memory limit is known
// and GOGC is not set: a heap goal of about 5× the live heap instead of 2×,
// a quarter as many collections. On refusal floods GC was the largest
// single cost of a Check (BENCHMARKS.md, issue 13); with GOGC=400 the
// harness measured 0.07–0.29 less of the floor's CPU per Check on every path.
const serveGCPercent = 400

// memoryLimitShare is the share of a cgroup's memory limit serve gives the
// Go runtime as its soft limit (GOMEMLIMIT), leaving the rest to what the
// runtime does not count (stacks of threads in C, the binary, page tables).
const memoryLimitShare = 0.9

// gcTuning is what tuneGC found and set, for the start-up log.
type gcTuning struct {
	GOGC        string // the GC percent in force: the env's GOGC, or what tuneGC set
	MemoryLimit int64  // the soft memory limit in force, bytes; 0 for none
	From        string // env (GOGC or GOMEMLIMIT set), cgroup, or none (Go's defaults)
}

// gcEnv is what tuneGC reads and sets; tests replace it.
type gcEnv struct {
	getenv         func(string) string
	readFile       func(string) ([]byte, error)
	setGCPercent   func(int) int
	setMemoryLimit func(int64) int64
}

var processGCEnv = gcEnv{getenv: os.Getenv, readFile: os.ReadFile, setGCPercent: debug.SetGCPercent, setMemoryLimit: debug.SetMemoryLimit}

// tuneGC sets serve's GC defaults. An operator's GOGC is kept as it is. A
// higher GOGC is safe only under a memory limit, which keeps the larger
// heap goal below what the container may use: so serve sets GOGC=400 when
// GOMEMLIMIT is set, or when the process runs in a cgroup with a memory
// limit (it then sets GOMEMLIMIT to 90% of it). Without a limit, Go's
// defaults stay: a heap of a million subjects would otherwise be let grow
// to five times its size.
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
		return gcTuning{GOGC: "100", From: "none"}
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
