package main

import (
	"io/fs"
	"testing"
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
		{"cgroup v2 without a limit", nil, map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "max\n"}, noLimit,
			gcTuning{GOGC: "100", From: "none"}, 0, 0},
		{"cgroup v1 limit", nil, map[string]string{"/proc/self/cgroup": "5:cpu,cpuacct:/\n4:memory:/docker/abc\n", "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "536870912\n"}, noLimit,
			gcTuning{GOGC: "400", MemoryLimit: 483183820, From: "cgroup"}, 400, 483183820},
		{"cgroup v1 without a limit (page-rounded MaxInt64)", nil, map[string]string{"/proc/self/cgroup": "4:memory:/\n", "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, noLimit,
			gcTuning{GOGC: "100", From: "none"}, 0, 0},
		{"no cgroup files", nil, nil, noLimit, gcTuning{GOGC: "100", From: "none"}, 0, 0},
		{"unreadable limit", nil, map[string]string{"/sys/fs/cgroup/memory.max": "lots"}, noLimit, gcTuning{GOGC: "100", From: "none"}, 0, 0},
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
