package main

import (
	"io/fs"
	"math"
	"runtime"
	"slices"
	"testing"
	"time"
)

// fakeGC is a gcEnv over fixed variables and files that records what
// tuneGC sets instead of changing this test's runtime.
type fakeGC struct {
	env     map[string]string
	files   map[string]string
	percent int   // 0: never set
	limit   int64 // 0: never set
	inForce int64 // what reading the runtime's limit gives
}

func (f *fakeGC) gcEnv() gcEnv {
	return gcEnv{
		getenv: func(k string) string { return f.env[k] },
		readFile: func(p string) ([]byte, error) {
			if s, ok := f.files[p]; ok {
				return []byte(s), nil
			}
			return nil, fs.ErrNotExist
		},
		setGCPercent: func(p int) int { f.percent = p; return 100 },
		setMemoryLimit: func(l int64) int64 {
			if l < 0 {
				return f.inForce
			}
			f.limit = l
			return f.inForce
		},
	}
}

const noLimit = int64(^uint64(0) >> 1)

func TestTuneGC(t *testing.T) {
	const gib = 1 << 30
	// Without GOGC or a limit tuneGC sets nothing: serve's headroom loop
	// does (TestKeepGCHeadroom).
	headroom := gcTuning{GOGC: "100-400 (64 MiB headroom)", From: "headroom"}
	tests := []struct {
		name        string
		env         map[string]string
		files       map[string]string
		inForce     int64
		want        gcTuning
		wantPercent int
		wantLimit   int64
	}{
		{"GOGC set: kept, nothing set", map[string]string{"GOGC": "200"}, map[string]string{"/sys/fs/cgroup/memory.max": "1073741824\n"}, noLimit,
			gcTuning{GOGC: "200", From: "env"}, 0, 0},
		{"GOGC and GOMEMLIMIT set", map[string]string{"GOGC": "off", "GOMEMLIMIT": "1GiB"}, nil, gib,
			gcTuning{GOGC: "off", MemoryLimit: gib, From: "env"}, 0, 0},
		{"GOMEMLIMIT alone: GOGC 400 under it", map[string]string{"GOMEMLIMIT": "230MiB"}, nil, 230 << 20,
			gcTuning{GOGC: "400", MemoryLimit: 230 << 20, From: "env"}, 400, 0},
		{"cgroup v2 limit, in its own namespace", nil, map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "268435456\n"}, noLimit,
			gcTuning{GOGC: "400", MemoryLimit: 241591910, From: "cgroup"}, 400, 241591910},
		{"cgroup v2 limit, found from /proc/self/cgroup", nil, map[string]string{"/proc/self/cgroup": "0::/kubepods/pod1/c1\n", "/sys/fs/cgroup/kubepods/pod1/c1/memory.max": "1073741824"}, noLimit,
			gcTuning{GOGC: "400", MemoryLimit: 966367641, From: "cgroup"}, 400, 966367641},
		{"cgroup v2 without a limit: headroom", nil, map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "max\n"}, noLimit,
			headroom, 0, 0},
		{"cgroup v1 limit", nil, map[string]string{"/proc/self/cgroup": "5:cpu,cpuacct:/\n4:memory:/docker/abc\n", "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "536870912\n"}, noLimit,
			gcTuning{GOGC: "400", MemoryLimit: 483183820, From: "cgroup"}, 400, 483183820},
		{"cgroup v1 without a limit (page-rounded MaxInt64): headroom", nil, map[string]string{"/proc/self/cgroup": "4:memory:/\n", "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, noLimit,
			headroom, 0, 0},
		{"no cgroup files: headroom", nil, nil, noLimit, headroom, 0, 0},
		{"unreadable limit: headroom", nil, map[string]string{"/sys/fs/cgroup/memory.max": "lots"}, noLimit, headroom, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeGC{env: tt.env, files: tt.files, inForce: tt.inForce}
			if got := tuneGC(f.gcEnv()); got != tt.want {
				t.Errorf("tuneGC = %+v, want %+v", got, tt.want)
			}
			if f.percent != tt.wantPercent || f.limit != tt.wantLimit {
				t.Errorf("set GC percent %d and memory limit %d, want %d and %d", f.percent, f.limit, tt.wantPercent, tt.wantLimit)
			}
		})
	}
}

// TestTuneGCOnlyForServe: the other commands keep Go's defaults.
func TestTuneGCOnlyForServe(t *testing.T) {
	saved := processGCEnv
	t.Cleanup(func() { processGCEnv, servedGC = saved, gcTuning{} })
	f := &fakeGC{env: map[string]string{"GOMEMLIMIT": "1GiB"}, inForce: 1 << 30}
	processGCEnv = f.gcEnv()
	for _, args := range [][]string{nil, {"validate", "--config", "x"}, {"check"}, {"hash-key", "k"}} {
		tuneGCFor(args)
		if f.percent != 0 || servedGC.From != "" {
			t.Fatalf("%q: GC tuned (%d, %+v)", args, f.percent, servedGC)
		}
	}
	tuneGCFor([]string{"serve", "--config", "x"})
	if got, want := servedGC, (gcTuning{GOGC: "400", MemoryLimit: 1 << 30, From: "env"}); got != want || f.percent != 400 {
		t.Errorf("serve: %+v (percent %d), want %+v (percent 400)", got, f.percent, want)
	}
}

func TestGCHeadroomPercent(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		live uint64
		want int
	}{
		{0, 400}, // before the first collection
		{1 * mib, 400},
		{16 * mib, 400},
		{16*mib + 1, 400}, // 399.99… rounds up
		{20 * mib, 320},
		{24 * mib, 267}, // 266.67 rounded up: never less headroom than 64 MiB
		{32 * mib, 200},
		{64*mib - 1, 101},
		{64 * mib, 100},
		{5 << 30, 100},
		{math.MaxUint64 / 100, 100},
		{math.MaxUint64, 100},
	}
	for _, tt := range tests {
		if got := headroomPercent(tt.live); got != tt.want {
			t.Errorf("headroomPercent(%d) = %d, want %d", tt.live, got, tt.want)
		}
	}
}

// fakeHeadroom is a gcEnv whose live heap is what the test sends on live
// (each read waits for it) and whose ticker is a channel the test drives.
// It has no lock, on purpose: the loop writes set, and only the wait in
// stop orders those writes before the test reads them (-race tells).
type fakeHeadroom struct {
	live    chan uint64
	tick    chan time.Time
	set     []int // every setGCPercent, in order
	tickers int   // ticker calls
	stopped int   // ticker stops
}

func newFakeHeadroom() *fakeHeadroom {
	return &fakeHeadroom{live: make(chan uint64), tick: make(chan time.Time)}
}

func (f *fakeHeadroom) gcEnv() gcEnv {
	return gcEnv{
		liveHeap: func() uint64 { return <-f.live },
		setGCPercent: func(p int) int {
			f.set = append(f.set, p)
			return 0
		},
		ticker: func() (<-chan time.Time, func()) {
			f.tickers++
			return f.tick, func() { f.stopped++ }
		},
	}
}

// stopWithin calls stop and fails the test if it has not returned within
// a generous timeout (a hang, not a measurement).
func stopWithin(t *testing.T, stop func()) {
	t.Helper()
	returned := make(chan struct{})
	go func() { stop(); close(returned) }()
	select {
	case <-returned:
	case <-time.After(30 * time.Second):
		t.Fatal("stop did not return")
	}
}

// sendWithin sends v on ch, failing the test if the loop has not taken it
// within a generous timeout (a loop that is not running, not a measurement).
func sendWithin[T any](t *testing.T, ch chan<- T, v T) {
	t.Helper()
	select {
	case ch <- v:
	case <-time.After(30 * time.Second):
		t.Fatalf("nothing took %v", v)
	}
}

// TestKeepGCHeadroom: the loop reads the live heap at start and at every
// tick and sets the GC percent only when it changes.
func TestKeepGCHeadroom(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name  string
		lives []uint64 // the first at start, one per tick after
		want  []int
	}{
		{"small sidecar heap, steady", []uint64{0, 4 * mib, 12 * mib, 12 * mib}, []int{400}},
		{"data loaded, then reloaded smaller", []uint64{0, 20 * mib, 20 * mib, 32 * mib, 5 << 30, 5 << 30, 24 * mib}, []int{400, 320, 200, 100, 267}},
		{"large from the start: Go's default, never set", []uint64{64 * mib, 5 << 30, 64 * mib}, nil},
		{"growing past 64 MiB and back", []uint64{80 * mib, 16 * mib, 16*mib + 1, 100 * mib}, []int{400, 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeHeadroom()
			stop := startGCHeadroom(f.gcEnv())
			sendWithin(t, f.live, tt.lives[0])
			for _, l := range tt.lives[1:] {
				sendWithin(t, f.tick, time.Time{})
				sendWithin(t, f.live, l)
			}
			stopWithin(t, stop) // the loop has set what it will for the last reading
			if got := f.set; !slices.Equal(got, tt.want) {
				t.Errorf("setGCPercent calls %v, want %v", got, tt.want)
			}
		})
	}
}

// TestStartGCHeadroomStops: once stop returns, the loop takes no tick and
// reads nothing, and its ticker is stopped.
func TestStartGCHeadroomStops(t *testing.T) {
	f := newFakeHeadroom()
	stop := startGCHeadroom(f.gcEnv())
	sendWithin(t, f.live, 1<<20)
	stopWithin(t, stop)
	select {
	case f.tick <- time.Time{}:
		t.Fatal("the loop took a tick after stop")
	case f.live <- 1 << 20:
		t.Fatal("the loop read the live heap after stop")
	default:
	}
	stopWithin(t, stop) // a second stop is harmless
	if got, want := f.stopped, 1; got != want {
		t.Errorf("ticker stopped %d times, want %d", got, want)
	}
	if got, want := f.set, []int{400}; !slices.Equal(got, want) {
		t.Errorf("setGCPercent calls %v, want %v", got, want)
	}
}

// TestStartServedGC: serve runs the headroom loop only when tuneGC chose
// it; with GOGC set or a memory limit known, nothing runs.
func TestStartServedGC(t *testing.T) {
	savedEnv, savedGC := processGCEnv, servedGC
	t.Cleanup(func() { processGCEnv, servedGC = savedEnv, savedGC })
	tests := []struct {
		name    string
		env     map[string]string
		files   map[string]string
		from    string // servedGC.From after tuneGCFor
		tickers int
	}{
		{"GOGC set", map[string]string{"GOGC": "100"}, nil, "env", 0},
		{"GOMEMLIMIT set", map[string]string{"GOMEMLIMIT": "1GiB"}, nil, "env", 0},
		{"cgroup limit", nil, map[string]string{"/sys/fs/cgroup/memory.max": "268435456\n"}, "cgroup", 0},
		{"no limit", nil, nil, "headroom", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			limits := &fakeGC{env: tt.env, files: tt.files, inForce: noLimit}
			h := newFakeHeadroom()
			e, he := limits.gcEnv(), h.gcEnv()
			e.liveHeap, e.ticker, e.setGCPercent = he.liveHeap, he.ticker, he.setGCPercent
			processGCEnv, servedGC = e, gcTuning{}
			tuneGCFor([]string{"serve"})
			if got := servedGC.From; got != tt.from {
				t.Fatalf("servedGC.From = %q, want %q", got, tt.from)
			}
			stop := startServedGC()
			if tt.tickers > 0 {
				sendWithin(t, h.live, 0) // the loop's first reading
			}
			stopWithin(t, stop)
			if h.tickers != tt.tickers || h.stopped != tt.tickers {
				t.Errorf("tickers started %d, stopped %d; want %d", h.tickers, h.stopped, tt.tickers)
			}
		})
	}
}

// TestStartServedGCInProcess: tests that run serve in process (servedGC
// untouched) start no loop.
func TestStartServedGCInProcess(t *testing.T) {
	saved := processGCEnv
	t.Cleanup(func() { processGCEnv = saved })
	h := newFakeHeadroom()
	processGCEnv = h.gcEnv()
	if servedGC.From != "" {
		t.Fatalf("servedGC.From = %q in a test binary", servedGC.From)
	}
	stopWithin(t, startServedGC())
	if h.tickers != 0 {
		t.Errorf("ticker started %d times", h.tickers)
	}
}

// TestReadGCLiveHeap: the live heap read from runtime/metrics counts what a
// collection found live.
func TestReadGCLiveHeap(t *testing.T) {
	const size = 8 << 20
	kept := make([]byte, size)
	runtime.GC()
	got := readLiveHeap()
	runtime.KeepAlive(kept)
	if got < size {
		t.Errorf("readLiveHeap() = %d after a collection with %d bytes live, want at least that", got, size)
	}
}
