// Command tollgate is an external-authorization server for Envoy and Istio
// that decides each API request from the caller's entitlements.
//
// main only wires: run does the work so that tests can call it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// A closed stdout or stderr (a log reader gone, `| head`) must not kill
	// the server: writes to it fail with EPIPE instead, and the log counts
	// the lines it could not write.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: tollgate <command> [flags]

commands:
  serve     --config FILE                     run the ext_authz gRPC server and admin HTTP
  validate  --config FILE                     check a config and its entitlements file
  check     --config FILE --method M --path P [-H 'k: v']...
                                              decide one request offline and print the decision
  hash-key  KEY | -                           print the SHA-256 digest to store for an API key
  entitlements set|get|delete --redis ADDR --subject S ...
                                              write, read or delete a record in the redis source
  version                                     print the version
`

// errUsage marks errors in how tollgate was called (exit status 2).
var errUsage = errors.New("usage")

// run executes one command and returns the process exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = cmdServe(ctx, rest, stderr)
	case "validate":
		err = cmdValidate(rest, stdout)
	case "check":
		err = cmdCheck(ctx, rest, stdout)
	case "entitlements":
		err = cmdEntitlements(ctx, rest, stdin, stdout)
	case "hash-key":
		err = cmdHashKey(rest, stdin, stdout)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "tollgate %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = fmt.Errorf("%w: unknown command %q (try: tollgate help)", errUsage, cmd)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		writeBounded(stderr, "tollgate: "+strings.TrimPrefix(err.Error(), "usage: ")+"\n")
		return 2
	default:
		// A config can have several problems: one line each, all prefixed.
		var b strings.Builder
		for _, line := range strings.Split(err.Error(), "\n") {
			b.WriteString("tollgate: " + line + "\n")
		}
		writeBounded(stderr, b.String())
		return 1
	}
}

// finalWriteBound is how long run waits to write its last error. serve's
// own log is asynchronous and closed by then; this write is direct, and
// stderr may be a pipe nobody reads: the process must still exit.
var finalWriteBound = 2 * time.Second

// writeBounded writes s to w, giving up after finalWriteBound.
func writeBounded(w io.Writer, s string) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.WriteString(w, s)
	}()
	t := time.NewTimer(finalWriteBound)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// newFlags makes a FlagSet whose errors come back as usage errors instead of
// printing the whole flag list.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected argument %q", errUsage, fs.Name(), fs.Arg(0))
	}
	return nil
}

func requireConfig(fs *flag.FlagSet, path string) error {
	if path == "" {
		return fmt.Errorf("%w: %s: --config FILE is required", errUsage, fs.Name())
	}
	return nil
}
