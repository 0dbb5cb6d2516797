package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tollgate-authz/tollgate/internal/proc"
)

// procs is every child started, so that an interrupted run stops them all.
var procs struct {
	sync.Mutex
	list []*proc.Child
}

// serverEnv is added to every child's environment (-gogc).
var serverEnv []string

// pinning is the CPU list each side runs on ("" for no pinning).
var pinning struct {
	client, server string
}

// command runs bin with args on the server CPUs when pinning, with
// serverEnv and env added to the environment.
func command(bin string, env []string, args ...string) *exec.Cmd {
	if pinning.server != "" {
		args = append([]string{"-c", pinning.server, bin}, args...)
		bin = "taskset"
	}
	cmd := exec.Command(bin, args...)
	if env = append(append([]string(nil), serverEnv...), env...); len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	return cmd
}

// start runs bin with args (see command), with its stdout and stderr in
// logPath.
func start(name, logPath, bin string, env []string, args ...string) (*proc.Child, error) {
	p, err := proc.Start(name, logPath, command(bin, env, args...))
	if err != nil {
		return nil, err
	}
	track(p)
	return p, nil
}

// track adds p to the children stopAll stops.
func track(p *proc.Child) {
	procs.Lock()
	procs.list = append(procs.list, p)
	procs.Unlock()
}

// stopAll stops every child, the last started first, each by its PID.
func stopAll() {
	procs.Lock()
	defer procs.Unlock()
	for i := len(procs.list) - 1; i >= 0; i-- {
		procs.list[i].Stop()
	}
	procs.list = nil
}

// server is a gRPC ext_authz server under test.
type server struct {
	*proc.Child        // nil for a server started elsewhere (-target)
	targetPID   int    // the PID of a server started elsewhere (-target-pid)
	addr        string // gRPC host:port
	admin       string // tollgate's admin host:port
	floor       bool   // a do-nothing server: every Check is allowed
	// peer is another ext_authz server (-peer): its answers are checked for
	// allowed or refused only, since its status codes are its own.
	peer bool
}

// check says how the harness checks the server's answers.
func (s *server) check() answerCheck {
	switch {
	case s.floor:
		return checkNone
	case s.peer:
		return checkAllowed
	}
	return checkCodes
}

// pid is the server's process, or 0 when unknown.
func (s *server) pid() int {
	if s.Child == nil {
		return s.targetPID
	}
	return s.PID()
}

var servingRE = regexp.MustCompile(`"msg":"serving"`)

// startTollgate serves cfg with the tollgate binary bin, with env added to
// the environment.
func startTollgate(dir, name, bin, cfg string, env []string) (*server, error) {
	return startTollgateWait(dir, name, bin, cfg, env, 30*time.Second)
}

// startTollgateWait is startTollgate waiting up to wait for it to serve.
func startTollgateWait(dir, name, bin, cfg string, env []string, wait time.Duration) (*server, error) {
	p, err := start(name, filepath.Join(dir, name+".log"), bin, env, "serve", "--config", cfg)
	if err != nil {
		return nil, err
	}
	var l struct{ GRPC, Admin string }
	if err := p.WaitJSON(servingRE, wait, &l); err != nil {
		p.Stop()
		return nil, err
	}
	return &server{Child: p, addr: l.GRPC, admin: l.Admin}, nil
}

var listeningRE = regexp.MustCompile(`^listening `)

// startFloor runs this program as the do-nothing server.
func startFloor(dir string, o ServerOptions) (*server, error) {
	return startFloorArgs(dir, "floor", []string{
		"-max-streams", strconv.FormatUint(uint64(o.MaxConcurrentStreams), 10),
		"-stream-workers", strconv.Itoa(o.NumStreamWorkers),
		"-static-window", strconv.Itoa(int(o.StaticWindow))}, nil)
}

// startFloorArgs runs this program as a do-nothing server with flags and
// env added to its environment.
func startFloorArgs(dir, name string, flags, env []string) (*server, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p, err := start(name, filepath.Join(dir, name+".log"), self, env, append([]string{"-serve-floor"}, flags...)...)
	if err != nil {
		return nil, err
	}
	line, err := p.WaitLine(listeningRE, 10*time.Second)
	if err != nil {
		p.Stop()
		return nil, err
	}
	return &server{Child: p, addr: strings.TrimPrefix(line, "listening "), floor: true}, nil
}

// procCPU is a process's user+system CPU time in seconds, from
// /proc/PID/stat; 0 when unknown.
func procCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14
	st, _ := strconv.ParseFloat(f[12], 64) // field 15
	return (ut + st) / clockTicks
}

// machineCPU is the busy time of every CPU together, in seconds, from /proc/stat.
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy float64
	for i := 1; i < len(f); i++ {
		if i == 4 || i == 5 { // idle, iowait
			continue
		}
		v, _ := strconv.ParseFloat(f[i], 64)
		busy += v
	}
	return busy / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// pinSelf re-executes the harness on the client CPUs with taskset, once.
// It reports why it did not pin.
func pinSelf(client string) error {
	if os.Getenv("TOLLGATE_BENCH_PINNED") != "" {
		return nil
	}
	ts, err := exec.LookPath("taskset")
	if err != nil {
		return fmt.Errorf("taskset not found")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	env := append(os.Environ(), "TOLLGATE_BENCH_PINNED=1")
	return syscall.Exec(ts, append([]string{"taskset", "-c", client, self}, os.Args[1:]...), env)
}
