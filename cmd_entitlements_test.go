package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/internal/redistest"
)

const (
	entDigestA = "5c4ab0a5e1a8a9b5f7b2a0ad0f4b0c53f3a5e51f8f1c0e0b2c3d4e5f60718293"
	entDigestB = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0"
)

// entitlementsCmd runs `tollgate entitlements args...` and returns stdout.
func entitlementsCmd(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := cmdEntitlements(context.Background(), args, stdio{in: strings.NewReader(stdin), out: &out, errOut: io.Discard})
	if err != nil && strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	return out.String(), err
}

// storedJSON is what set and get print.
type storedJSON struct {
	Subject      string           `json:"subject"`
	Plan         string           `json:"plan"`
	Status       string           `json:"status"`
	Features     []string         `json:"features"`
	Quotas       map[string]int64 `json:"quotas"`
	Credits      *int64           `json:"credits"`
	PeriodStart  string           `json:"period_start"`
	PeriodEnd    string           `json:"period_end"`
	PastDueSince string           `json:"past_due_since"`
	APIKeySHA256 []string         `json:"api_key_sha256"`
}

func parseStored(t *testing.T, out string) storedJSON {
	t.Helper()
	var s storedJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("output is not a record: %v\n%s", err, out)
	}
	return s
}

func TestEntitlementsCommand(t *testing.T) {
	srv := redistest.Start(t)
	r := []string{"--redis", srv.Addr()}
	with := func(args ...string) []string {
		return append(slices.Clone(args[:1]), append(slices.Clone(r), args[1:]...)...)
	}

	type want struct {
		usage   bool   // the error wraps errUsage (exit 2)
		err     string // the error contains this; "" for success
		out     string // stdout contains this
		subject string // stdout is this subject's record
	}
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  want
	}{
		{"set every field", "", with("set", "--subject", "acme", "--plan", "pro", "--status", "past_due",
			"--feature", "sso", "--feature", "export", "--quota", "requests=5000", "--credits", "250",
			"--period-start", "2026-11-01T00:00:00Z", "--period-end", "2026-12-01T01:00:00+01:00",
			"--past-due-since", "2026-11-20T08:30:00Z", "--api-key-sha256", strings.ToUpper(entDigestA)),
			want{subject: "acme"}},
		{"get what set stored", "", with("get", "--subject", "acme"), want{subject: "acme"}},
		{"delete", "", with("delete", "--subject", "acme"), want{out: `"deleted": true`}},
		{"get after delete", "", with("get", "--subject", "acme"), want{err: `entitlements get: subject "acme" not found`}},
		{"delete after delete", "", with("delete", "--subject", "acme"), want{err: `entitlements delete: subject "acme" not found`}},

		{"no subcommand", "", nil, want{usage: true, err: "give a subcommand"}},
		{"unknown subcommand", "", []string{"list"}, want{usage: true, err: `unknown subcommand "list"`}},
		{"unknown flag", "", with("get", "--subjet", "acme"), want{usage: true, err: "entitlements get: flag provided but not defined: -subjet"}},
		{"stray argument", "", with("get", "--subject", "acme", "extra"), want{usage: true, err: `unexpected argument "extra"`}},
		{"missing subject", "", with("set", "--plan", "pro", "--status", "active"), want{usage: true, err: "--subject S is required"}},
		{"missing subject on get", "", with("get"), want{usage: true, err: "--subject S is required"}},
		{"missing plan", "", with("set", "--subject", "acme", "--status", "active"), want{usage: true, err: "--plan P is required"}},
		{"missing status", "", with("set", "--subject", "acme", "--plan", "pro"), want{usage: true, err: "--status is required"}},
		{"bad status", "", with("set", "--subject", "acme", "--plan", "pro", "--status", "gold"), want{usage: true, err: `--status "gold" is not a subscription status`}},
		{"bad digest", "", with("set", "--subject", "acme", "--plan", "pro", "--status", "active", "--api-key-sha256", "abc123"), want{usage: true, err: `--api-key-sha256 "abc123" is not 64 hex digits`}},
		{"bad quota", "", with("set", "--subject", "acme", "--plan", "pro", "--status", "active", "--quota", "requests=-1"), want{usage: true, err: `invalid value "requests=-1" for flag -quota`}},
		{"bad credits", "", with("set", "--subject", "acme", "--plan", "pro", "--status", "active", "--credits", "lots"), want{usage: true, err: `--credits "lots"`}},
		{"bad time", "", with("set", "--subject", "acme", "--plan", "pro", "--status", "active", "--period-end", "2026-12-01"), want{usage: true, err: "--period-end"}},
		{"period backwards", "", with("set", "--subject", "acme", "--plan", "pro", "--status", "active",
			"--period-start", "2026-12-01T00:00:00Z", "--period-end", "2026-11-01T00:00:00Z"), want{usage: true, err: "--period-end is before --period-start"}},
		{"empty stdin", "\n\n", with("set", "--subject", "acme", "--plan", "pro", "--status", "active", "--api-key-stdin"), want{usage: true, err: "no keys on stdin"}},
		{"clear and set keys", "", with("set", "--subject", "acme", "--plan", "pro", "--status", "active", "--clear-api-keys", "--api-key-sha256", entDigestA),
			want{usage: true, err: "cannot be combined"}},
		{"password env unset", "", with("get", "--subject", "acme", "--password-env", "TOLLGATE_TEST_NO_SUCH_VAR"),
			want{usage: true, err: "TOLLGATE_TEST_NO_SUCH_VAR is unset or empty"}},
		{"no redis", "", []string{"get", "--subject", "acme"}, want{usage: true, err: "--redis ADDR is required (or set TOLLGATE_REDIS)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TOLLGATE_REDIS", "")
			out, err := entitlementsCmd(t, tt.stdin, tt.args...)
			if tt.want.err == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tt.want.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.want.err)
				}
				if got := errors.Is(err, errUsage); got != tt.want.usage {
					t.Errorf("usage error = %v, want %v (%v)", got, tt.want.usage, err)
				}
				if out != "" {
					t.Errorf("printed %q on error", out)
				}
			}
			if tt.want.out != "" && !strings.Contains(out, tt.want.out) {
				t.Errorf("stdout = %s, want it to contain %s", out, tt.want.out)
			}
			if tt.want.subject != "" {
				got := parseStored(t, out)
				if got.Subject != "acme" || got.Plan != "pro" || got.Status != "past_due" ||
					!slices.Equal(got.Features, []string{"sso", "export"}) || got.Quotas["requests"] != 5000 ||
					got.Credits == nil || *got.Credits != 250 ||
					got.PeriodStart != "2026-11-01T00:00:00Z" || got.PeriodEnd != "2026-12-01T00:00:00Z" ||
					got.PastDueSince != "2026-11-20T08:30:00Z" || !slices.Equal(got.APIKeySHA256, []string{entDigestA}) {
					t.Errorf("stored record:\n%s", out)
				}
			}
		})
	}
}

// TestEntitlementsSetKeepsKeys: changing a plan or status without key flags
// must not revoke the subject's keys; --clear-api-keys does.
func TestEntitlementsSetKeepsKeys(t *testing.T) {
	srv := redistest.Start(t)
	t.Setenv("TOLLGATE_REDIS", srv.Addr()) // and --redis may come from the environment
	set := func(args ...string) storedJSON {
		t.Helper()
		out, err := entitlementsCmd(t, "", append([]string{"set", "--subject", "acme", "--plan", "pro"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return parseStored(t, out)
	}
	set("--status", "active", "--api-key-sha256", entDigestA, "--api-key-sha256", entDigestB)
	if got := set("--status", "past_due"); !slices.Equal(got.APIKeySHA256, []string{entDigestB, entDigestA}) {
		t.Errorf("keys after a status change = %v, want both kept", got.APIKeySHA256)
	}
	if got := set("--status", "past_due", "--api-key-sha256", entDigestB); !slices.Equal(got.APIKeySHA256, []string{entDigestB}) {
		t.Errorf("keys after giving one = %v, want only it", got.APIKeySHA256)
	}
	if got := set("--status", "canceled", "--clear-api-keys"); len(got.APIKeySHA256) != 0 {
		t.Errorf("keys after --clear-api-keys = %v", got.APIKeySHA256)
	}
	src, err := redissource.New(redissource.Options{Client: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Lookup(context.Background(), entitlement.Key{Kind: entitlement.ByAPIKey, ID: entDigestB}); !errors.Is(err, entitlement.ErrNotFound) {
		t.Errorf("a cleared key still resolves: %v", err)
	}
}

// TestEntitlementsAPIKeyStdin: raw keys from stdin are stored only as
// digests: no key name or value in Redis holds them.
func TestEntitlementsAPIKeyStdin(t *testing.T) {
	srv := redistest.Start(t)
	raw := []string{"sk_live_5f2Qx9bWmZ", "sk_live_second_KEY"}
	out, err := entitlementsCmd(t, raw[0]+"\r\n\n"+raw[1], "set", "--redis", srv.Addr(), "--prefix", "t:",
		"--subject", "acme", "--plan", "pro", "--status", "active", "--api-key-stdin")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{identity.HashKey(raw[0]), identity.HashKey(raw[1])}
	slices.Sort(want)
	if got := parseStored(t, out).APIKeySHA256; !slices.Equal(got, want) {
		t.Errorf("digests = %v, want %v", got, want)
	}
	for _, k := range raw {
		if strings.Contains(out, k) {
			t.Errorf("output holds the raw key %q", k)
		}
	}

	ctx := context.Background()
	c := srv.Client()
	var values []string
	iter := c.Scan(ctx, 0, "*", 0).Iterator()
	n := 0
	for iter.Next(ctx) {
		key := iter.Val()
		n++
		values = append(values, key)
		switch typ := c.Type(ctx, key).Val(); typ {
		case "string":
			values = append(values, c.Get(ctx, key).Val())
		case "set":
			values = append(values, c.SMembers(ctx, key).Val()...)
		default:
			t.Errorf("unexpected %s at %s", typ, key)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 4 { // record, key set, two index entries
		t.Errorf("%d keys stored, want 4: %v", n, values)
	}
	for _, v := range values {
		for _, k := range raw {
			if strings.Contains(v, k) {
				t.Errorf("Redis holds the raw key %q in %q", k, v)
			}
		}
	}

	src, err := redissource.New(redissource.Options{Client: c, Prefix: "t:"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := src.Lookup(ctx, entitlement.Key{Kind: entitlement.ByAPIKey, ID: identity.HashKey(raw[1])})
	if err != nil || e.Subject != "acme" {
		t.Errorf("lookup by the key's digest: %v, %v", e, err)
	}
}

// TestEntitlementsPublishes: set and delete announce the subject on the
// channel, so running replicas drop their cached copies.
func TestEntitlementsPublishes(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	ps := srv.Client().Subscribe(ctx, "inv")
	defer ps.Close()
	if _, err := ps.ReceiveTimeout(ctx, 10*time.Second); err != nil { // the subscribe confirmation
		t.Fatal(err)
	}
	next := func() map[string]any {
		t.Helper()
		msg, err := ps.ReceiveTimeout(ctx, 10*time.Second)
		if err != nil {
			t.Fatalf("no message: %v", err)
		}
		m, ok := msg.(*redis.Message)
		if !ok {
			t.Fatalf("got %T, want a message", msg)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(m.Payload), &v); err != nil {
			t.Fatalf("message %q: %v", m.Payload, err)
		}
		return v
	}
	common := []string{"--redis", srv.Addr(), "--channel", "inv"}

	if _, err := entitlementsCmd(t, "", append([]string{"set"}, append(common, "--subject", "acme", "--plan", "pro", "--status", "active", "--api-key-sha256", entDigestA)...)...); err != nil {
		t.Fatal(err)
	}
	if got := next(); got["subject"] != "acme" || !slices.Equal(toStrings(got["api_key_sha256"]), []string{entDigestA}) {
		t.Errorf("set published %v", got)
	}
	if _, err := entitlementsCmd(t, "", append([]string{"delete"}, append(common, "--subject", "acme")...)...); err != nil {
		t.Fatal(err)
	}
	if got := next(); got["subject"] != "acme" {
		t.Errorf("delete published %v", got)
	}
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// TestEntitlementsRedisDown: an unreachable Redis, or one that accepts
// connections and never answers, is a plain error (exit 1), one line, that
// names the command; a stalled one is ended by --timeout.
func TestEntitlementsRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	stalled := stalledServer(t)
	for _, target := range []struct {
		name, addr string
		timedOut   bool // the error says the command timed out
	}{
		{"killed", srv.Addr(), false},
		{"stalled", stalled, true},
	} {
		for _, args := range [][]string{
			{"get", "--subject", "acme"},
			{"delete", "--subject", "acme"},
			{"set", "--subject", "acme", "--plan", "pro", "--status", "active"},
		} {
			t.Run(target.name+" "+args[0], func(t *testing.T) {
				done := make(chan error, 1)
				go func() {
					var out bytes.Buffer
					done <- cmdEntitlements(context.Background(), append(args, "--redis", target.addr, "--timeout", "200ms"), stdio{in: strings.NewReader(""), out: &out, errOut: io.Discard})
				}()
				var err error
				select {
				case err = <-done:
				case <-time.After(time.Minute): // far past --timeout, however loaded the machine
					t.Fatal("still waiting for Redis: --timeout was not applied")
				}
				if err == nil || errors.Is(err, errUsage) {
					t.Fatalf("err = %v, want a plain error", err)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				if !strings.HasPrefix(err.Error(), "entitlements "+args[0]+": ") {
					t.Errorf("error %q does not name the command", err)
				}
				if timedOut := strings.Contains(err.Error(), "deadline exceeded") || strings.Contains(err.Error(), "i/o timeout"); target.timedOut && !timedOut {
					t.Errorf("error %q does not say it timed out", err)
				}
			})
		}
	}
}

// stalledServer is a TCP server that accepts connections, reads what it is
// sent and never answers, until the test ends.
func stalledServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c)
		}
	}()
	return lis.Addr().String()
}

// TestEntitlementsRedisAddressHoldsNoPassword: a Redis URL with a password,
// in --redis or in TOLLGATE_REDIS, is refused (exit 2) without printing it.
func TestEntitlementsRedisAddressHoldsNoPassword(t *testing.T) {
	const secret = "Sup3rS3cretRedisPass"
	srv := redistest.Start(t)
	url := "redis://default:" + secret + "@" + srv.Addr()
	for _, tt := range []struct {
		name string
		args []string
		env  string
	}{
		{"flag", []string{"entitlements", "get", "--subject", "acme", "--redis", url}, ""},
		{"environment", []string{"entitlements", "delete", "--subject", "acme"}, url},
		{"password without a scheme", []string{"entitlements", "get", "--subject", "acme", "--redis", ":" + secret + "@" + srv.Addr()}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(redisEnv, tt.env)
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr %q", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), "--redis: ") || !strings.Contains(stderr.String(), "is not host:port") {
				t.Errorf("stderr %q does not say what is wrong with --redis", stderr.String())
			}
			if out := stdout.String() + stderr.String(); strings.Contains(out, secret) {
				t.Errorf("the password is printed: %q", out)
			}
		})
	}
}
