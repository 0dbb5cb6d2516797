package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
)

// ScaleRes is tollgate at one subject count (-scale), with one source.
type ScaleRes struct {
	// Source is file or redis (-scale-sources).
	Source    string `json:"source"`
	Subjects  int    `json:"subjects"`
	FileBytes int64  `json:"file_bytes"` // file: the entitlements file; redis: Redis's used_memory
	// RedisRSSKiB is redis-server's RSS after loading (redis source).
	RedisRSSKiB int64 `json:"redis_rss_kib,omitempty"`
	// StartupS is from starting the process to its "serving" line.
	StartupS float64 `json:"startup_s"`
	// RSS in KiB: after start-up, after the load, and the peak (VmHWM).
	RSSStartKiB  int64 `json:"rss_start_kib"`
	RSSLoadedKiB int64 `json:"rss_loaded_kib"`
	RSSPeakKiB   int64 `json:"rss_peak_kib"`
	// LoadS is, for the file source, filesource.Open of the file in the
	// harness's process (parse, policy check, index): the work of a full
	// reload; for the redis source, writing every record into Redis
	// (pipelined, from the harness).
	LoadS float64 `json:"load_s"`
	// ReloadS is from rewriting the file to the server's "entitlements
	// reloaded" line (it polls every scalePoll, included); 0 for redis,
	// which has no full reload (a change is one record and its message).
	ReloadS       float64               `json:"reload_s"`
	Servers       map[string]*Aggregate `json:"servers"`
	CPURatio      float64               `json:"server_cpu_per_check_ratio"` // tollgate ÷ floor
	ThroughputRat float64               `json:"throughput_ratio"`
	Runs          []*Measurement        `json:"runs"`
}

// scalePoll is the entitlement file's poll interval in the scale runs.
const scalePoll = 100 * time.Millisecond

var reloadedRE = regexp.MustCompile(`"msg":"entitlements reloaded"`)

// runScale measures the mix at each subject count in o.scale with each
// source in o.scaleSources, each size with a tollgate of its own beside a
// floor, one size at a time.
func runScale(ctx context.Context, o options, dir, bin string) ([]*ScaleRes, error) {
	var sizes []int
	for _, f := range strings.Split(o.scale, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < pastDueEvery {
			return nil, fmt.Errorf("-scale %q: want subject counts of at least %d", f, pastDueEvery)
		}
		sizes = append(sizes, n)
	}
	var sources []string
	for _, src := range strings.Split(o.scaleSources, ",") {
		switch src = strings.TrimSpace(src); src {
		case "file", "redis":
			sources = append(sources, src)
		default:
			return nil, fmt.Errorf("-scale-sources %q: want file or redis", src)
		}
	}
	var out []*ScaleRes
	var errs []error
	for _, src := range sources {
		for _, n := range sizes {
			r, err := scaleOne(ctx, o, dir, bin, n, src)
			if err != nil {
				// What was measured so far is still reported, and the
				// other source still runs.
				errs = append(errs, fmt.Errorf("scale %d (%s source): %w", n, src, err))
				break
			}
			out = append(out, r)
		}
	}
	return out, errors.Join(errs...)
}

func scaleOne(ctx context.Context, o options, dir, bin string, n int, source string) (*ScaleRes, error) {
	defer stopAll()
	sdir := filepath.Join(dir, fmt.Sprintf("scale-%s-%d", source, n))
	if err := os.MkdirAll(sdir, 0o755); err != nil {
		return nil, err
	}
	res := &ScaleRes{Source: source, Subjects: n, Servers: map[string]*Aggregate{}}
	var cfg, ents string
	if source == "redis" {
		rd, err := startRedis(sdir)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(os.Stderr, "bench: scale %d subjects: loading Redis\n", n)
		t0 := time.Now()
		if err := loadRedis(ctx, rd.addr, n); err != nil {
			return nil, err
		}
		res.LoadS = time.Since(t0).Seconds()
		res.FileBytes = redisUsedMemory(ctx, rd.addr)
		res.RedisRSSKiB = procStatus(rd.PID(), "VmRSS")
		// A cache as large as the harness's request list (100,000 distinct
		// subjects at most): a deployment sizes it to its working set, not
		// to every customer.
		if cfg, err = writeRedisFixture(sdir, rd.addr, 110_000); err != nil {
			return nil, err
		}
	} else {
		fmt.Fprintf(os.Stderr, "bench: scale %d subjects: writing the file\n", n)
		// The cache holds every subject, as a deployment of this size would size it.
		var err error
		if cfg, err = writeFixtureOpts(sdir, n, false, max(100_000, n+10_000), scalePoll); err != nil {
			return nil, err
		}
		ents = filepath.Join(sdir, "entitlements.yaml")
		fi, err := os.Stat(ents)
		if err != nil {
			return nil, err
		}
		res.FileBytes = fi.Size()

		// The load a reload does, here in-process.
		c, err := config.Load(cfg)
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		if _, err := filesource.Open(ents, filesource.Options{Check: c.Policy.CheckEntitlement}); err != nil {
			return nil, err
		}
		res.LoadS = time.Since(t0).Seconds()
	}

	t0 := time.Now()
	name := fmt.Sprintf("tollgate-%s-%d", source, n)
	tg, err := startTollgateWait(sdir, name, bin, cfg, nil, 10*time.Minute)
	if err != nil {
		return nil, err
	}
	res.StartupS = time.Since(t0).Seconds()
	res.RSSStartKiB = procStatus(tg.PID(), "VmRSS")
	fl, err := startFloor(sdir, o.serverOpts)
	if err != nil {
		return nil, err
	}

	enc, err := encodeRequests(genRequests(100_000, n, o.mix, 1))
	if err != nil {
		return nil, err
	}
	spec := LoadSpec{Name: fmt.Sprintf("scale %d (%s), closed c%d s%d", n, source, o.conns, o.streams), Conns: o.conns, Streams: o.streams,
		Duration: o.duration, Warmup: o.warmup, MaxReqs: o.maxReqs, Timeout: 200 * time.Millisecond, Seconds: o.duration.Seconds()}
	// One pass over the request list first, so that each size is measured
	// with its working set cached, as a server that has run a while has it:
	// a short run would otherwise measure the redis source's misses.
	fmt.Fprintf(os.Stderr, "bench: scale %d (%s): one pass over the %d requests to warm the cache\n", n, source, len(enc))
	warm := LoadSpec{Name: "warm-up pass", Conns: o.conns, Streams: o.streams, Duration: 10 * time.Minute,
		MaxReqs: int64(len(enc)), Timeout: 200 * time.Millisecond}
	if _, err := runGRPC(ctx, tg.addr, tg.pid(), warm, enc, checkNone); err != nil {
		return nil, err
	}
	servers := []named{{"floor", fl}, {"tollgate", tg}}
	for round := 1; round <= o.scaleRounds; round++ {
		for k := range servers {
			sv := servers[(k+round-1)%len(servers)]
			fmt.Fprintf(os.Stderr, "bench: %s, round %d/%d: %s\n", spec.Name, round, o.scaleRounds, sv.name)
			m, err := runGRPC(ctx, sv.s.addr, sv.s.pid(), spec, enc, sv.s.check())
			if err != nil {
				return nil, err
			}
			m.Target, m.Scenario, m.Round = sv.name, spec.Name, round
			res.Runs = append(res.Runs, m)
		}
	}
	for _, sv := range servers {
		res.Servers[sv.name] = aggregate(res.Runs, sv.name)
	}
	r := ratios(res.Servers["tollgate"], res.Servers["floor"])
	res.CPURatio, res.ThroughputRat = r["server_cpu_per_check"], r["throughput"]
	res.RSSLoadedKiB = procStatus(tg.PID(), "VmRSS")
	if source == "redis" {
		res.RSSPeakKiB = procStatus(tg.PID(), "VmHWM")
		for _, m := range res.Runs {
			m.Lat.Quantiles = nil
		}
		return res, nil
	}

	// A full reload: the same subjects, a changed file.
	fmt.Fprintf(os.Stderr, "bench: scale %d subjects: reloading the file\n", n)
	b, err := os.ReadFile(ents)
	if err != nil {
		return nil, err
	}
	b = append(b, "# reloaded\n"...)
	tmp := ents + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, err
	}
	t0 = time.Now()
	if err := os.Rename(tmp, ents); err != nil {
		return nil, err
	}
	if _, err := tg.WaitLine(reloadedRE, 5*time.Minute); err != nil {
		return nil, err
	}
	res.ReloadS = time.Since(t0).Seconds()
	res.RSSPeakKiB = procStatus(tg.PID(), "VmHWM")
	for _, m := range res.Runs {
		m.Lat.Quantiles = nil
	}
	return res, nil
}

// procStatus is a KiB figure from /proc/PID/status (VmRSS, VmHWM), 0 when
// unknown.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kib, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kib
		}
	}
	return 0
}

func printScale(w io.Writer, all []*ScaleRes) {
	for _, src := range []string{"file", "redis"} {
		var rs []*ScaleRes
		for _, r := range all {
			if r.Source == src || (r.Source == "" && src == "file") {
				rs = append(rs, r)
			}
		}
		if len(rs) > 0 {
			printScaleSource(w, src, rs)
		}
	}
}

func printScaleSource(w io.Writer, src string, rs []*ScaleRes) {
	fmt.Fprintf(w, "\n== Scale: the mix at each subject count, %s source ==\n", src)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	data, load := "file MB", "load s"
	if src == "redis" {
		data, load = "Redis MB (RSS MB)", "load into Redis s"
	}
	fmt.Fprintf(tw, "subjects\t%s\tstart-up s\t%s\treload s\tRSS start MiB\tRSS loaded MiB\tRSS peak MiB\tchecks/s\tCPU µs/check\tfloor µs/check\tCPU ÷ floor\tthroughput ÷ floor\t\n", data, load)
	for _, r := range rs {
		t, f := r.Servers["tollgate"], r.Servers["floor"]
		size := fmt.Sprintf("%.1f", float64(r.FileBytes)/1e6)
		if src == "redis" {
			size += fmt.Sprintf(" (%.1f)", float64(r.RedisRSSKiB)/1024)
		}
		fmt.Fprintf(tw, "%d\t%s\t%.2f\t%.2f\t%.2f\t%.1f\t%.1f\t%.1f\t%.0f\t%.1f\t%.1f\t%.2f\t%.3f\t\n", r.Subjects, size,
			r.StartupS, r.LoadS, r.ReloadS, float64(r.RSSStartKiB)/1024, float64(r.RSSLoadedKiB)/1024, float64(r.RSSPeakKiB)/1024,
			t.Throughput, t.ServerCPUPerCheck, f.ServerCPUPerCheck, r.CPURatio, r.ThroughputRat)
	}
	tw.Flush()
	if len(rs) >= 2 {
		a, b := rs[0], rs[len(rs)-1]
		per := float64(b.RSSLoadedKiB-a.RSSLoadedKiB) * 1024 / float64(b.Subjects-a.Subjects)
		cpu := b.Servers["tollgate"].ServerCPUPerCheck / a.Servers["tollgate"].ServerCPUPerCheck
		fmt.Fprintf(w, "RSS per subject (loaded, %d → %d): %.0f bytes; CPU per Check %d ÷ %d: %.2f\n", a.Subjects, b.Subjects, per, b.Subjects, a.Subjects, cpu)
		if src == "redis" {
			fmt.Fprintf(w, "(tollgate caches the working set only; Redis holds every subject: %.0f bytes of used_memory per subject)\n",
				float64(b.FileBytes-a.FileBytes)/float64(b.Subjects-a.Subjects))
		}
	}
}
