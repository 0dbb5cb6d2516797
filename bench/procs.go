package main

import (
	"bufio"
	"encoding/json"
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
)

// proc is a child process the harness started; it is stopped by its PID.
type proc struct {
	name string
	pid0 int // the PID of a process started elsewhere (-target-pid)
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// procs is every child started, so that an interrupted run stops them all.
var procs struct {
	sync.Mutex
	list []*proc
}

// serverEnv is added to every child's environment (-gogc).
var serverEnv []string

// pinning is the CPU list each side runs on ("" for no pinning).
var pinning struct {
	client, server string
}

// start runs bin with args, on the server CPUs when pinning, with its
// stdout and stderr in logPath.
func start(name, logPath, bin string, env []string, args ...string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	if pinning.server != "" {
		args = append([]string{"-c", pinning.server, bin}, args...)
		bin = "taskset"
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if env = append(append([]string(nil), serverEnv...), env...); len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	procs.Lock()
	procs.list = append(procs.list, p)
	procs.Unlock()
	return p, nil
}

func (p *proc) pid() int {
	if p.cmd == nil {
		return p.pid0
	}
	return p.cmd.Process.Pid
}

// stop sends SIGTERM to the process's PID, then SIGKILL after 5 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func stopAll() {
	procs.Lock()
	defer procs.Unlock()
	for i := len(procs.list) - 1; i >= 0; i-- {
		procs.list[i].stop()
	}
	procs.list = nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitLine waits for a line of the process's log that re matches.
func (p *proc) waitLine(re *regexp.Regexp, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.exited() {
			return "", fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail())
		}
		if f, err := os.Open(p.log); err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				if re.Match(sc.Bytes()) {
					f.Close()
					return sc.Text(), nil
				}
			}
			f.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("%s: no line matching %s in %s:\n%s", p.name, re, timeout, p.tail())
}

// server is a gRPC ext_authz server under test.
type server struct {
	*proc
	addr  string // gRPC host:port
	admin string // tollgate's admin host:port
	floor bool   // a do-nothing server: every Check is allowed
}

var servingRE = regexp.MustCompile(`"msg":"serving"`)

// startTollgate serves cfg with the tollgate binary bin, with env added to
// the environment.
func startTollgate(dir, name, bin, cfg string, env []string) (*server, error) {
	p, err := start(name, filepath.Join(dir, name+".log"), bin, env, "serve", "--config", cfg)
	if err != nil {
		return nil, err
	}
	line, err := p.waitLine(servingRE, 30*time.Second)
	if err != nil {
		p.stop()
		return nil, err
	}
	var l struct{ GRPC, Admin string }
	if err := json.Unmarshal([]byte(line), &l); err != nil {
		p.stop()
		return nil, fmt.Errorf("tollgate serving line %q: %v", line, err)
	}
	return &server{proc: p, addr: l.GRPC, admin: l.Admin}, nil
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
	line, err := p.waitLine(listeningRE, 10*time.Second)
	if err != nil {
		p.stop()
		return nil, err
	}
	return &server{proc: p, addr: strings.TrimPrefix(line, "listening "), floor: true}, nil
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
