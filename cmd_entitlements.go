package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/internal/redisconn"
)

// redisEnv names the environment variable read when --redis is not given.
const redisEnv = "TOLLGATE_REDIS"

// cmdEntitlements edits records in the redis entitlement source. Every write
// is published on the invalidation channel, so running replicas drop their
// cached copies at once.
func cmdEntitlements(ctx context.Context, args []string, std stdio) error {
	stdin, stdout := std.in, std.out
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		printHelp(stdout, newFlags("entitlements", stdout).FlagSet)
		for _, sub := range []string{"set", "get", "delete"} {
			fmt.Fprintf(stdout, "\n  tollgate entitlements %s %s\n      %s\n", sub, subcommands["entitlements "+sub][0], subcommands["entitlements "+sub][1])
		}
		fmt.Fprint(stdout, "\nRun 'tollgate entitlements SUBCOMMAND --help' for its flags.\n")
		return errHelp
	}
	if len(args) == 0 {
		return fmt.Errorf("%w: entitlements: give a subcommand: set, get or delete (tollgate entitlements get --redis ADDR --subject S)", errUsage)
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "set":
		return entitlementsSet(ctx, rest, stdin, stdout)
	case "get":
		return entitlementsGet(ctx, rest, stdout)
	case "delete":
		return entitlementsDelete(ctx, rest, stdout)
	default:
		return fmt.Errorf("%w: entitlements: unknown subcommand %q (want set, get or delete)", errUsage, sub)
	}
}

// subcommands are the synopsis and summary of each entitlements
// subcommand, for their help.
var subcommands = map[string][2]string{
	"entitlements set":    {"--redis ADDR --subject S --plan P --status S [flags]", "write a subject's record (replacing it) and publish the change"},
	"entitlements get":    {"--redis ADDR --subject S", "print a subject's record as JSON"},
	"entitlements delete": {"--redis ADDR --subject S", "delete a subject's record and its API keys, and publish the change"},
}

// redisFlags are the connection flags every subcommand takes.
type redisFlags struct {
	addr, username, passwordEnv, prefix, channel string
	db                                           int
	timeout                                      time.Duration
	tls                                          redisconn.TLS
	cluster                                      bool
}

func (r *redisFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.addr, "redis", "", "Redis host:port (default $"+redisEnv+")")
	fs.StringVar(&r.username, "username", "", "Redis ACL user name")
	fs.StringVar(&r.passwordEnv, "password-env", "", "environment variable holding the Redis password")
	fs.IntVar(&r.db, "db", 0, "Redis database number")
	fs.StringVar(&r.prefix, "prefix", redissource.DefaultPrefix, "key prefix")
	fs.StringVar(&r.channel, "channel", redissource.DefaultChannel, "invalidation channel")
	fs.DurationVar(&r.timeout, "timeout", 5*time.Second, "bound on the whole command")
	fs.BoolVar(&r.cluster, "cluster", false, "--redis is a node of a Redis Cluster (as the config's redis cluster: true)")
	fs.BoolVar(&r.tls.Enabled, "tls", false, "connect with TLS (as the config's redis tls.enabled)")
	fs.StringVar(&r.tls.CAFile, "tls-ca", "", "PEM CA file for the server's certificate (default: the system roots)")
	fs.StringVar(&r.tls.CertFile, "tls-cert", "", "PEM client certificate, for a server that requires one")
	fs.StringVar(&r.tls.KeyFile, "tls-key", "", "PEM key of --tls-cert")
	fs.StringVar(&r.tls.ServerName, "tls-server-name", "", "name to check in the server's certificate (default: the host of --redis)")
}

// flagOf names the flag behind each field of redisconn.Options, for errors.
var flagOf = map[string]string{
	"address": "--redis", "password_env": "--password-env", "tls.ca_file": "--tls-ca", "tls": "--tls-cert/--tls-key",
}

// open checks the connection flags and returns a source over a new client.
// The password is read from the environment, never from a flag: flags land
// in shell history and process lists.
func (r *redisFlags) open(fs *flagSet) (*redissource.Source, func(), error) {
	if r.addr == "" {
		r.addr = strings.TrimSpace(os.Getenv(redisEnv))
	}
	if r.addr == "" {
		return nil, nil, fmt.Errorf("%w: %s: --redis ADDR is required (or set %s)", errUsage, fs.Name(), redisEnv)
	}
	if err := config.CheckHostPort(r.addr); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: --redis: %v", errUsage, fs.Name(), err)
	}
	if r.timeout <= 0 {
		return nil, nil, fmt.Errorf("%w: %s: --timeout must be positive", errUsage, fs.Name())
	}
	if r.db < 0 {
		return nil, nil, fmt.Errorf("%w: %s: --db must not be negative", errUsage, fs.Name())
	}
	if r.tls.CAFile != "" || r.tls.CertFile != "" || r.tls.KeyFile != "" || r.tls.ServerName != "" {
		r.tls.Enabled = true // any --tls-* flag means TLS
	}
	if (r.tls.CertFile == "") != (r.tls.KeyFile == "") {
		return nil, nil, fmt.Errorf("%w: %s: give --tls-cert and --tls-key together", errUsage, fs.Name())
	}
	conn, err := redisconn.Dial(redisconn.Options{
		Address: r.addr, Cluster: r.cluster, Username: r.username, PasswordEnv: r.passwordEnv, DB: r.db, TLS: r.tls,
		Timeout: r.timeout, ReadTimeout: r.timeout,
	})
	if fe := (*redisconn.FieldError)(nil); errors.As(err, &fe) && flagOf[fe.Field] != "" {
		err = fmt.Errorf("%s: %v", flagOf[fe.Field], fe.Err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	c := conn.UniversalClient
	src, err := redissource.New(redissource.Options{Client: c, Prefix: r.prefix, Channel: r.channel})
	if err != nil {
		_ = c.Close()
		return nil, nil, fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	return src, func() { _ = c.Close() }, nil
}

// listFlags collects a repeated flag.
type listFlags []string

func (l *listFlags) String() string     { return strings.Join(*l, ",") }
func (l *listFlags) Set(v string) error { *l = append(*l, v); return nil }

// quotaFlags collects repeated --quota name=N flags.
type quotaFlags map[string]int64

func (q quotaFlags) String() string { return fmt.Sprint(map[string]int64(q)) }
func (q quotaFlags) Set(v string) error {
	name, n, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("%q is not name=N", v)
	}
	limit, err := strconv.ParseInt(n, 10, 64)
	if err != nil || limit < 0 {
		return fmt.Errorf("%q: the limit is not a whole number ≥ 0", v)
	}
	if _, dup := q[name]; dup {
		return fmt.Errorf("quota %q given twice", name)
	}
	q[name] = limit
	return nil
}

func entitlementsSet(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := newFlags("entitlements set", stdout)
	var rf redisFlags
	rf.register(fs.FlagSet)
	subject := fs.String("subject", "", "subject id")
	plan := fs.String("plan", "", "plan name")
	status := fs.String("status", "", "subscription status")
	credits := fs.String("credits", "", "prepaid credit balance")
	periodStart := fs.String("period-start", "", "billing period start, RFC 3339")
	periodEnd := fs.String("period-end", "", "billing period end, RFC 3339")
	pastDueSince := fs.String("past-due-since", "", "when the subscription became past_due, RFC 3339")
	keysStdin := fs.Bool("api-key-stdin", false, "read raw API keys from stdin, one a line; only their SHA-256 is stored")
	clearKeys := fs.Bool("clear-api-keys", false, "remove every API key of the subject")
	var features, digests listFlags
	quotas := quotaFlags{}
	fs.Var(&features, "feature", "add-on feature (repeatable)")
	fs.Var(quotas, "quota", "quota override name=N (repeatable)")
	fs.Var(&digests, "api-key-sha256", "hex SHA-256 of an API key (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: entitlements set: "+format, append([]any{errUsage}, a...)...)
	}

	e := entitlement.Entitlement{Subject: *subject, Plan: *plan, Status: entitlement.Status(*status), Features: features}
	switch {
	case *subject == "":
		return bad("--subject S is required")
	case redissource.CheckSubject(*subject) != nil:
		return bad("--subject: %v", redissource.CheckSubject(*subject))
	case *plan == "":
		return bad("--plan P is required")
	case *status == "":
		return bad("--status is required (one of active, trialing, past_due, unpaid, canceled, incomplete, incomplete_expired, paused)")
	case !e.Status.Valid():
		return bad("--status %q is not a subscription status (want one of active, trialing, past_due, unpaid, canceled, incomplete, incomplete_expired, paused)", *status)
	case *clearKeys && (len(digests) > 0 || *keysStdin):
		return bad("--clear-api-keys cannot be combined with --api-key-sha256 or --api-key-stdin")
	}
	if len(quotas) > 0 {
		e.Quotas = quotas
	}
	if *credits != "" {
		n, err := strconv.ParseInt(*credits, 10, 64)
		if err != nil || n < 0 {
			return bad("--credits %q is not a whole number ≥ 0", *credits)
		}
		e.Credits = &n
	}
	for _, t := range []struct {
		flag string
		val  string
		dst  *time.Time
	}{{"period-start", *periodStart, &e.PeriodStart}, {"period-end", *periodEnd, &e.PeriodEnd}, {"past-due-since", *pastDueSince, &e.PastDueSince}} {
		if t.val == "" {
			continue
		}
		v, err := time.Parse(time.RFC3339, t.val)
		if err != nil {
			return bad("--%s %q is not an RFC 3339 time (2026-11-01T00:00:00Z)", t.flag, t.val)
		}
		*t.dst = v.UTC()
	}
	if !e.PeriodStart.IsZero() && !e.PeriodEnd.IsZero() && e.PeriodEnd.Before(e.PeriodStart) {
		return bad("--period-end is before --period-start")
	}
	keys := make([]string, 0, len(digests))
	for _, d := range digests {
		k, ok := entitlement.ParseKeyDigest(d)
		if !ok {
			return bad("--api-key-sha256 %q is not 64 hex digits (tollgate hash-key KEY prints one)", d)
		}
		keys = append(keys, k)
	}
	if *keysStdin {
		raw, err := readKeys(stdin)
		if err != nil {
			return fmt.Errorf("entitlements set: --api-key-stdin: reading stdin: %w", err)
		}
		if len(raw) == 0 {
			return bad("--api-key-stdin: no keys on stdin (one a line)")
		}
		for _, k := range raw {
			keys = append(keys, identity.HashKey(k))
		}
	}

	src, closeFn, err := rf.open(fs)
	if err != nil {
		return err
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, rf.timeout)
	defer cancel()
	if len(keys) == 0 && !*clearKeys {
		// No key flags: keep the keys the subject has, so that changing a
		// plan or status does not revoke them.
		if keys, err = src.APIKeys(ctx, e.Subject); err != nil {
			return fmt.Errorf("entitlements set: %w", err)
		}
	}
	if err := src.Put(ctx, redissource.Record{Entitlement: e, APIKeyDigests: keys}); err != nil {
		return fmt.Errorf("entitlements set: %w", err)
	}
	stored, err := src.Get(ctx, e.Subject)
	if err != nil {
		return fmt.Errorf("entitlements set: stored, but reading it back failed: %w", err)
	}
	return printJSON(stdout, stored)
}

// readKeys reads raw API keys, one a line, skipping blank lines.
func readKeys(r io.Reader) ([]string, error) {
	var keys []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if k := strings.TrimRight(sc.Text(), "\r"); k != "" {
			keys = append(keys, k)
		}
	}
	return keys, sc.Err()
}

// subjectFlags parses the flags of get and delete.
func subjectFlags(name string, args []string, stdout io.Writer) (*flagSet, *redisFlags, string, error) {
	fs := newFlags(name, stdout)
	var rf redisFlags
	rf.register(fs.FlagSet)
	subject := fs.String("subject", "", "subject id")
	if err := parseFlags(fs, args); err != nil {
		return nil, nil, "", err
	}
	if *subject == "" {
		return nil, nil, "", fmt.Errorf("%w: %s: --subject S is required", errUsage, name)
	}
	if err := redissource.CheckSubject(*subject); err != nil {
		return nil, nil, "", fmt.Errorf("%w: %s: --subject: %v", errUsage, name, err)
	}
	return fs, &rf, *subject, nil
}

func entitlementsGet(ctx context.Context, args []string, stdout io.Writer) error {
	return onSubject(ctx, "entitlements get", args, stdout, func(ctx context.Context, src *redissource.Source, subject string) (any, error) {
		return src.Get(ctx, subject)
	})
}

func entitlementsDelete(ctx context.Context, args []string, stdout io.Writer) error {
	return onSubject(ctx, "entitlements delete", args, stdout, func(ctx context.Context, src *redissource.Source, subject string) (any, error) {
		return struct {
			Subject string `json:"subject"`
			Deleted bool   `json:"deleted"`
		}{subject, true}, src.Delete(ctx, subject)
	})
}

// onSubject runs the command name (get or delete) on the subject its flags
// name, within --timeout, and prints what do returns as JSON.
func onSubject(ctx context.Context, name string, args []string, stdout io.Writer,
	do func(ctx context.Context, src *redissource.Source, subject string) (any, error)) error {
	fs, rf, subject, err := subjectFlags(name, args, stdout)
	if err != nil {
		return err
	}
	src, closeFn, err := rf.open(fs)
	if err != nil {
		return err
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, rf.timeout)
	defer cancel()
	out, err := do(ctx, src, subject)
	if errors.Is(err, entitlement.ErrNotFound) {
		return fmt.Errorf("%s: subject %q not found", name, subject)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return printJSON(stdout, out)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
