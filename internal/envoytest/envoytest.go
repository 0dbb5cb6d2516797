// Package envoytest runs a real Envoy in front of tollgate for the
// end-to-end suite (e2e/) and the load harness (bench/). The config is
// derived from the repo's own envoy.yaml, with only ports, addresses and
// test-only additions changed (Derive), so that what is tested and measured
// is what ships. Start runs Envoy on ports the kernel chooses on 127.0.0.1,
// waits until its admin API reports it ready, and leaves the stopping (by
// PID) to the caller.
//
// Envoy is found through $ENVOY, then .tools/bin/envoy (`make tools`), then
// PATH (Find).
package envoytest

import (
	"bytes"
	"encoding/json"
	"errors"
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
	"time"

	"github.com/tollgate-authz/tollgate/internal/proc"
)

// ErrNotFound is Find's error when there is no Envoy binary anywhere.
var ErrNotFound = errors.New("no envoy binary: set $ENVOY, or run `make tools` to install one at .tools/bin/envoy")

// Find returns the Envoy binary: $ENVOY, then .tools/bin/envoy under repo,
// then envoy on PATH. $ENVOY naming a missing file is an error, not a
// reason to look elsewhere.
func Find(repo string) (string, error) {
	if p := os.Getenv("ENVOY"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("ENVOY=%s does not exist: run `make tools`", p)
		}
		return p, nil
	}
	if p := filepath.Join(repo, ".tools", "bin", "envoy"); fileExists(p) {
		return p, nil
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	return "", ErrNotFound
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Options say how to run one Envoy.
type Options struct {
	// Bin is the Envoy binary (see Find).
	Bin string
	// Config is the YAML config (see Derive).
	Config []byte
	// Dir and Name place Envoy's files: Dir/Name.yaml (the config),
	// Dir/Name.log (stdout and stderr) and Dir/Name-admin-address.
	Dir, Name string
	// BaseID is the lowest --base-id; a random offset below 1<<20 is
	// added so that Envoys running at the same time do not share one.
	BaseID int
	// LogLevel is --log-level.
	LogLevel string
	// Args are more flags for Envoy.
	Args []string
	// Ready is how long Envoy has to start and answer /ready (default 30s).
	Ready time.Duration
	// Command, when set, makes the command instead of exec.Command: the
	// load harness uses it to pin Envoy to the server CPUs.
	Command func(bin string, args ...string) *exec.Cmd
}

// Envoy is a running Envoy, stopped by its PID with Stop.
type Envoy struct {
	*proc.Child
	Listen string // host:port of the first listener (the API)
	Admin  string // host:port of the admin API
}

// Start writes the config, runs Envoy with one worker (one gRPC connection
// to tollgate, as in a sidecar), and returns once /ready answers 200 and
// the listener's port is known. On failure Envoy is stopped and the error
// ends with its log.
func Start(o Options) (*Envoy, error) {
	cfgPath := filepath.Join(o.Dir, o.Name+".yaml")
	if err := os.WriteFile(cfgPath, o.Config, 0o600); err != nil {
		return nil, err
	}
	adminFile := filepath.Join(o.Dir, o.Name+"-admin-address")
	args := append([]string{
		"-c", cfgPath,
		"--base-id", strconv.Itoa(o.BaseID + rand.IntN(1<<20)),
		"--disable-hot-restart",
		"--concurrency", "1",
		"--log-level", o.LogLevel,
		"--admin-address-path", adminFile,
	}, o.Args...)
	command := o.Command
	if command == nil {
		command = exec.Command
	}
	p, err := proc.Start(o.Name, filepath.Join(o.Dir, o.Name+".log"), command(o.Bin, args...))
	if err != nil {
		return nil, err
	}
	e := &Envoy{Child: p}
	fail := func(format string, args ...any) (*Envoy, error) {
		p.Stop()
		return nil, fmt.Errorf(format+"\nenvoy log (%s):\n%s", append(args, p.Log, p.Tail())...)
	}
	if o.Ready == 0 {
		o.Ready = 30 * time.Second
	}
	deadline := time.Now().Add(o.Ready)
	for e.Admin == "" || !e.ready() {
		if p.Exited() {
			return fail("envoy exited: %v", p.Err())
		}
		if time.Now().After(deadline) {
			return fail("envoy not ready in %s", o.Ready)
		}
		if e.Admin == "" {
			if b, err := os.ReadFile(adminFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
				e.Admin = strings.TrimSpace(string(b))
			}
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
	body, err := e.adminGet("/listeners?format=json")
	if err == nil {
		err = json.Unmarshal(body, &ls)
	}
	if err != nil || len(ls.ListenerStatuses) == 0 {
		return fail("envoy /listeners: %v %s", err, body)
	}
	sa := ls.ListenerStatuses[0].LocalAddress.SocketAddress
	e.Listen = net.JoinHostPort(sa.Address, strconv.Itoa(sa.PortValue))
	return e, nil
}

// adminClient ignores any proxy settings: the admin API is on loopback.
var adminClient = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}

// adminGet reads path (with its query) from the admin API; anything but
// 200 is an error.
func (e *Envoy) adminGet(path string) ([]byte, error) {
	url := "http://" + e.Admin + path
	resp, err := adminClient.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, err
}

func (e *Envoy) ready() bool {
	_, err := e.adminGet("/ready")
	return err == nil
}
