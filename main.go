// Command tollgate is an external-authorization server for Envoy and Istio
// that decides each API request from the caller's entitlements.
//
// This package is the command line only: flags, usage, output and exit
// codes. internal/app builds and runs the server. run does the work so
// that tests can call it.
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

	"github.com/tollgate-authz/tollgate/internal/app"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// A closed stdout or stderr (a log reader gone, `| head`) must not kill
	// the server: writes to it fail with EPIPE instead, and the log counts
	// the lines it could not write.
	signal.Ignore(syscall.SIGPIPE)
	// gRPC's own log joins serve's JSON log (app.SetGRPCLogger).
	app.RouteGRPCLog()
	tuneGCFor(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// stdio is where a command reads and writes.
type stdio struct {
	in          io.Reader
	out, errOut io.Writer
}

// command is one subcommand: its synopsis and summary make the usage text.
type command struct {
	name     string
	synopsis string // the arguments, after "tollgate NAME"
	summary  string
}

// commands lists every subcommand, in the order the usage shows them.
var commands = []command{
	{"serve", "--config FILE", "run the ext_authz gRPC server and the admin HTTP server; drain on SIGTERM or SIGINT"},
	{"validate", "--config FILE [--connect]", "check a config and what it names (entitlements file, certificates); --connect also reaches each Redis"},
	{"check", "--config FILE --method M --path P [-H 'name: value']...", "decide one request offline and print the decision, with the headers serve would send"},
	{"hash-key", "KEY | -", "print the SHA-256 digest to store for an API key (- reads the key from stdin)"},
	{"entitlements", "set|get|delete --redis ADDR --subject S ...", "write, read or delete a record in the redis source"},
	{"usage", "SUBJECT [--admin ADDR] [--token-env VAR]", "print a subject's quotas and credits (used, remaining) and the export backlog, from a running server"},
	{"version", "", "print the version"},
	{"help", "[COMMAND]", "print this help, or a command's flags"},
}

// usage is the top-level help.
func usage() string {
	var b strings.Builder
	b.WriteString("usage: tollgate <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-13s %s\n  %-13s   %s\n", c.name, c.synopsis, "", c.summary)
	}
	b.WriteString("\nRun 'tollgate COMMAND --help' for a command's flags.\n")
	return b.String()
}

// runner returns the function that runs the command name, or nil.
func runner(name string) func(ctx context.Context, args []string, std stdio) error {
	switch name {
	case "serve":
		return cmdServe
	case "validate":
		return cmdValidate
	case "check":
		return cmdCheck
	case "hash-key":
		return cmdHashKey
	case "entitlements":
		return cmdEntitlements
	case "usage":
		return cmdUsage
	case "version":
		return cmdVersion
	}
	return nil
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

var (
	// errUsage marks errors in how tollgate was called (exit status 2).
	errUsage = errors.New("usage")
	// errHelp: help was asked for and printed to stdout (exit status 0).
	errHelp = errors.New("help printed")
)

// run executes one command and returns the process exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return 2
	}
	std := stdio{stdin, stdout, stderr}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "help", "-h", "-help", "--help":
		err = cmdHelp(ctx, rest, std)
	case "--version", "-v":
		err = cmdVersion(ctx, nil, std)
	default:
		f := runner(cmd)
		if f == nil {
			err = fmt.Errorf("%w: unknown command %q (try: tollgate help)", errUsage, cmd)
			break
		}
		err = f(ctx, rest, std)
	}
	switch {
	case err == nil, errors.Is(err, errHelp):
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

// cmdHelp prints the usage, or with a command name that command's help.
func cmdHelp(ctx context.Context, args []string, std stdio) error {
	if len(args) == 0 {
		fmt.Fprint(std.out, usage())
		return nil
	}
	f := runner(args[0])
	if f == nil {
		return fmt.Errorf("%w: help: unknown command %q (try: tollgate help)", errUsage, args[0])
	}
	return f(ctx, append(args[1:], "--help"), std)
}

func cmdVersion(_ context.Context, args []string, std stdio) error {
	fs := newFlags("version", std.out)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(std.out, "tollgate %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
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

// flagSet is a command's flags and where its help goes.
type flagSet struct {
	*flag.FlagSet
	stdout io.Writer
}

// newFlags makes the flags of the command name ("entitlements set"):
// errors come back as usage errors instead of printing the whole flag
// list, and -h or --help prints the command's help to stdout.
func newFlags(name string, stdout io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // flag calls it on every error; parseFlags prints help when asked
	return &flagSet{fs, stdout}
}

// printHelp writes a command's synopsis, summary and flags.
func printHelp(w io.Writer, fs *flag.FlagSet) {
	name := fs.Name()
	synopsis, summary := "", ""
	if c := lookup(name); c != nil {
		synopsis, summary = c.synopsis, c.summary
	} else if s, ok := subcommands[name]; ok {
		synopsis, summary = s[0], s[1]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "usage: tollgate %s %s\n", name, synopsis)
	if summary != "" {
		fmt.Fprintf(&b, "\n%s\n", summary)
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		b.WriteString("\nflags:\n")
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	_, _ = io.WriteString(w, strings.TrimRight(b.String(), "\n")+"\n")
}

func parseFlags(fs *flagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(fs.stdout, fs.FlagSet)
			return errHelp
		}
		return fmt.Errorf("%w: %s: %v (see: tollgate %s --help)", errUsage, fs.Name(), err, fs.Name())
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected argument %q", errUsage, fs.Name(), fs.Arg(0))
	}
	return nil
}

func requireConfig(fs *flagSet, path string) error {
	if path == "" {
		return fmt.Errorf("%w: %s: --config FILE is required", errUsage, fs.Name())
	}
	return nil
}
