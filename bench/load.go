package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

const checkMethod = "/envoy.service.auth.v3.Authorization/Check"

// rawMsg carries a pre-encoded CheckRequest out, and the decision back.
type rawMsg struct {
	b       []byte
	code    int32 // CheckResponse.status.code: 0 allowed, else the gRPC code of the denial
	allowed bool  // the response holds an ok_response
}

// rawCodec sends pre-encoded requests and reads only the decision from a
// response, so that the harness spends its CPU on the load, not on protobuf.
// Its name is "proto": the server sees an ordinary application/grpc+proto call.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(*rawMsg).b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m := v.(*rawMsg)
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		b = data.Materialize()
	}
	return m.parse(b)
}

// parse reads CheckResponse fields 1 (status, whose field 1 is the code)
// and 3 (ok_response).
func (m *rawMsg) parse(b []byte) error {
	m.code, m.allowed = 0, false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 1: // google.rpc.Status
			for len(v) > 0 {
				sn, st, k := protowire.ConsumeTag(v)
				if k < 0 {
					return protowire.ParseError(k)
				}
				v = v[k:]
				if sn == 1 && st == protowire.VarintType {
					c, k := protowire.ConsumeVarint(v)
					if k < 0 {
						return protowire.ParseError(k)
					}
					m.code = int32(c)
					break
				}
				if k = protowire.ConsumeFieldValue(sn, st, v); k < 0 {
					return protowire.ParseError(k)
				}
				v = v[k:]
			}
		case 3:
			m.allowed = true
		}
	}
	return nil
}

// LoadSpec is one load shape.
type LoadSpec struct {
	Name     string        `json:"name"`
	Path     string        `json:"path,omitempty"` // every request takes this path (see genPath); "": the mix
	Conns    int           `json:"connections"`
	Streams  int           `json:"streams"`    // requests in flight at most, over all connections
	Rate     float64       `json:"rate"`       // checks/s for an open loop; 0 for a closed loop
	Duration time.Duration `json:"-"`          // measured
	Warmup   time.Duration `json:"-"`          // before measuring
	MaxReqs  int64         `json:"max_reqs"`   // stop after this many measured requests
	Timeout  time.Duration `json:"-"`          // per request, as Envoy's ext_authz timeout
	Seconds  float64       `json:"duration_s"` // Duration, for the JSON
}

func (s LoadSpec) loop() string {
	if s.Rate > 0 {
		return fmt.Sprintf("open loop at %.0f/s", s.Rate)
	}
	return "closed loop"
}

// Measurement is what one load run against one server measured.
type Measurement struct {
	Target     string           `json:"target"`
	Scenario   string           `json:"scenario"`
	Round      int              `json:"round"`
	Spec       LoadSpec         `json:"spec"`
	Requests   int64            `json:"requests"`
	Errors     int64            `json:"errors"`
	Late       int64            `json:"late"` // open loop: sent more than 1 ms after their time
	ByKind     map[string]int64 `json:"by_kind"`
	Mismatched int64            `json:"mismatched"` // decision not the one the request was made for
	Elapsed    float64          `json:"elapsed_s"`
	Throughput float64          `json:"checks_per_s"`
	Lat        Summary          `json:"latency_us"`
	ServerCPU  float64          `json:"server_cpu_s"`
	ClientCPU  float64          `json:"client_cpu_s"`
	// OtherCPU is CPU time used by everything else on the machine during
	// the run, in seconds: high values mark a noisy run.
	OtherCPU float64 `json:"other_cpu_s"`
	// ServerCPUPerCheck is the server's CPU time per Check, in µs.
	ServerCPUPerCheck float64 `json:"server_cpu_us_per_check"`
	hist              *Histogram
}

// runGRPC drives addr with spec and returns what it measured. pid, when
// not 0, is the server's process, whose CPU time is read from /proc.
func runGRPC(ctx context.Context, addr string, pid int, spec LoadSpec, reqs []encoded, check answerCheck) (*Measurement, error) {
	conns := make([]*grpc.ClientConn, spec.Conns)
	for i := range conns {
		cc, err := grpc.NewClient("passthrough:///"+addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			return nil, err
		}
		defer cc.Close()
		cc.Connect()
		conns[i] = cc
	}
	// Every connection is up before the clock starts.
	for _, cc := range conns {
		m := &rawMsg{b: reqs[0].b}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := cc.Invoke(cctx, checkMethod, m, m, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s: first Check: %w", addr, err)
		}
	}
	newSend := func(stream int) send {
		cc := conns[stream%len(conns)]
		var msg rawMsg
		return func(n uint64) (Kind, bool, error) {
			e := &reqs[n%uint64(len(reqs))]
			msg.b = e.b
			cctx, cancel := context.WithTimeout(ctx, spec.Timeout)
			err := cc.Invoke(cctx, checkMethod, &msg, &msg)
			cancel()
			return e.kind, check.fits(e.kind, &msg), err
		}
	}
	// CPU time of the server, the harness and the machine.
	sample := func() cpuTimes { return cpuTimes{procCPU(pid), selfCPU(), machineCPU()} }
	return drive(ctx, spec, newSend, sample)
}

// A send makes request n (to be taken modulo the requests) and reports
// its kind, whether the answer is the one the kind expects, and whether it
// failed.
type send func(n uint64) (k Kind, fits bool, err error)

// cpuTimes are CPU seconds used so far by the server (0 when unknown), by
// the harness, and by the whole machine (0 when not measured).
type cpuTimes struct{ server, client, machine float64 }

// drive runs spec's load with one goroutine per stream, each sending with
// its own send from newSend: a closed loop, or at spec.Rate an open loop.
// It measures latency, and CPU time from sample, over the window after the
// warm-up only.
func drive(ctx context.Context, spec LoadSpec, newSend func(stream int) send, sample func() cpuTimes) (*Measurement, error) {
	var (
		next     atomic.Uint64
		late     atomic.Int64
		stop     atomic.Bool
		measured atomic.Int64
		wg       sync.WaitGroup
		workers  = make([]*worker, spec.Streams)
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
		call := newSend(i)
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
				kind, fits, err := call(next.Add(1))
				done := time.Now()
				if sent.Before(measureFrom) || done.After(measureTo) {
					continue
				}
				if err != nil {
					w.errors++
					if ctx.Err() != nil {
						return
					}
					continue
				}
				w.hist.Record(done.Sub(sent))
				w.byKind[kind]++
				if !fits {
					w.mismatched++
				}
				if spec.MaxReqs > 0 && measured.Add(1) >= spec.MaxReqs {
					stop.Store(true)
				}
			}
		}()
	}

	sleepUntil(ctx, measureFrom)
	cpu0 := sample()
	t0 := time.Now()
	if spec.MaxReqs > 0 {
		// The request cap can end the window early: watch for it.
		for time.Now().Before(measureTo) && !stop.Load() && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
	} else {
		sleepUntil(ctx, measureTo)
	}
	cpu1 := sample()
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
		m.Mismatched += w.mismatched
		for k, n := range w.byKind {
			m.ByKind[Kind(k).String()] += n
		}
	}
	m.Requests = m.hist.Count()
	m.Throughput = float64(m.Requests) / elapsed.Seconds()
	m.Lat = m.hist.Summary()
	m.ServerCPU = cpu1.server - cpu0.server
	if m.Requests > 0 {
		m.ServerCPUPerCheck = m.ServerCPU / float64(m.Requests) * 1e6
	}
	m.ClientCPU = cpu1.client - cpu0.client
	m.OtherCPU = max(cpu1.machine-cpu0.machine-m.ServerCPU-m.ClientCPU, 0)
	return m, nil
}

type worker struct {
	hist       *Histogram
	byKind     []int64
	errors     int64
	mismatched int64
}

// answerCheck is how much of an answer the harness checks.
type answerCheck uint8

const (
	checkNone    answerCheck = iota // the floor allows everything
	checkAllowed                    // allowed or refused, as the kind wants
	checkCodes                      // and the refusal's gRPC code (tollgate)
)

func (c answerCheck) fits(k Kind, m *rawMsg) bool {
	switch c {
	case checkNone:
		return true
	case checkAllowed:
		return m.allowed == (k == KindAllow)
	}
	return decisionFits(k, m)
}

// decisionFits reports whether the answer is the one the request was
// generated for: allowed, refused (402 maps to PERMISSION_DENIED), or
// unknown (401 maps to UNAUTHENTICATED).
func decisionFits(k Kind, m *rawMsg) bool {
	switch k {
	case KindAllow:
		return m.allowed && m.code == 0
	case KindDeny402:
		return !m.allowed && m.code == 7
	case KindUnknown:
		return !m.allowed && m.code == 16
	}
	return false
}

// dispatch sends each request's due time at rate, from start until end. A
// request that waits for a free stream is measured from its due time, so
// queueing shows in the latency (no coordinated omission).
func dispatch(ctx context.Context, due chan<- time.Time, rate float64, start, end time.Time, stop *atomic.Bool, late *atomic.Int64, measureFrom time.Time) {
	defer close(due)
	interval := time.Duration(float64(time.Second) / rate)
	for i := int64(0); ; i++ {
		t := start.Add(time.Duration(i) * interval)
		if t.After(end) || stop.Load() || ctx.Err() != nil {
			return
		}
		if d := time.Until(t); d > 0 {
			time.Sleep(d)
		} else if d < -time.Millisecond && t.After(measureFrom) {
			late.Add(1)
		}
		select {
		case due <- t:
		case <-ctx.Done():
			return
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) {
	select {
	case <-time.After(time.Until(t)):
	case <-ctx.Done():
	}
}

// selfCPU is this process's user+system CPU time in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return tv(ru.Utime) + tv(ru.Stime)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
