package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/filesource"
	"github.com/tollgate-authz/tollgate/internal/app"
	"github.com/tollgate-authz/tollgate/internal/apptest"
	"github.com/tollgate-authz/tollgate/internal/docstest"
	"github.com/tollgate-authz/tollgate/internal/testcerts"
	tgusage "github.com/tollgate-authz/tollgate/usage"
)

// TestDocBlocks holds every fenced block of README.md and docs/*.md to
// what it claims to be (internal/docstest lists the kinds): a block with no
// annotation fails, naming FILE:LINE; configs are built as `tollgate
// validate` builds them; commands name real subcommands, flags, make
// targets and admin endpoints, and the offline ones run. Envoy fragments
// are run through Envoy in e2e (TestDocEnvoyFragments).
func TestDocBlocks(t *testing.T) {
	blocks, skipped, err := docstest.Read(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range skipped {
		t.Logf("%s: no <!-- test: --> annotation yet; skipped", s)
	}
	d := &docChecker{top: t, lastCheck: map[string]string{}}
	kinds := map[string]int{}
	for _, b := range blocks {
		kinds[b.Kind]++
		t.Run(b.Where(), func(t *testing.T) {
			if err := d.check(t, b); err != nil {
				t.Errorf("%s: %v", b.Where(), err)
			}
		})
	}
	t.Logf("%d blocks: %v", len(blocks), kinds)
}

// docChecker checks blocks in document order: a check-output block
// compares with the last `tollgate check` its file ran.
type docChecker struct {
	top       *testing.T
	lastCheck map[string]string // file → the output of its last tollgate check
	adminAddr string            // the demo server's admin listener, once started
	token     string            // its admin token, $TOLLGATE_ADMIN_TOKEN in commands
}

func (d *docChecker) check(t *testing.T, b docstest.Block) error {
	switch b.Kind {
	case "":
		return fmt.Errorf("a ```%s block with no <!-- test: KIND --> comment on the line before it (internal/docstest lists the kinds)", b.Info)
	case "tollgate-config":
		return validateConfig(t, b.Text)
	case "config-fragment":
		// As shown, and with its commented settings (# key: value) on.
		var errs []error
		for _, text := range slices.Compact([]string{b.Text, uncomment(b.Text)}) {
			merged, err := mergeFragment(text)
			if err == nil {
				err = validateConfig(t, merged)
			}
			if err != nil && text != b.Text {
				err = fmt.Errorf("with its commented settings on: %w", err)
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	case "entitlements":
		path := filepath.Join(t.TempDir(), "entitlements.yaml")
		if err := os.WriteFile(path, []byte(b.Text), 0o600); err != nil {
			return err
		}
		_, err := filesource.Open(path, filesource.Options{})
		return err
	case "stripe-customers":
		return validateConfig(t, "entitlements:\n  source: stripe\n  stripe:\n    secret_key_env: STRIPE_SECRET_KEY\n    customers: customers.yaml\n",
			"customers.yaml", b.Text)
	case "envoy-fragment":
		return checkEnvoyFragment(b)
	case "envoy-gateway":
		// deploy TestEnvoyGatewayDocs decodes it into Envoy Gateway's types.
		if !strings.HasPrefix(b.Text, "extAuth:") {
			return errors.New("an envoy-gateway block starts with extAuth: (deploy TestEnvoyGatewayDocs looks for it so)")
		}
		var v map[string]any
		return yaml.Unmarshal([]byte(b.Text), &v)
	case "istio-mesh":
		return checkIstioMesh(b.Text)
	case "command":
		return d.commands(t, b, false)
	case "console":
		return d.commands(t, b, true)
	case "json":
		return d.json(b)
	case "output":
		return nil
	case "none":
		if b.Arg == "" {
			return errors.New("<!-- test: none (REASON) -->: say why the block is not a config or a command")
		}
		return nil
	}
	return fmt.Errorf("unknown kind %q (internal/docstest lists the kinds)", b.Kind)
}

// baseConfig is what a config fragment is merged into: a file source and
// two plans, enough for a fragment about any one part to build.
const baseConfig = `
entitlements:
  file: {path: entitlements.yaml}
plans:
  free: {features: [search]}
  pro: {features: [search, chat, export]}
routes:
  - {name: search, match: {path: {prefix: /v1/search}}, feature: search}
`

// mergeFragment merges a config fragment into baseConfig: mappings merge,
// the fragment's values (lists included) replace the base's. A fragment
// that names another entitlement source drops the base's file source.
func mergeFragment(fragment string) (string, error) {
	var base, frag map[string]any
	if err := yaml.Unmarshal([]byte(baseConfig), &base); err != nil {
		return "", err
	}
	if err := yaml.Unmarshal([]byte(fragment), &frag); err != nil {
		return "", fmt.Errorf("not YAML: %v", err)
	}
	if e, ok := frag["entitlements"].(map[string]any); ok {
		if src, ok := e["source"].(string); ok && src != "file" {
			delete(base["entitlements"].(map[string]any), "file")
		}
	}
	out, err := yaml.Marshal(merge(base, frag))
	return string(out), err
}

func merge(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	for k, v := range over {
		bm, ok1 := out[k].(map[string]any)
		om, ok2 := v.(map[string]any)
		if ok1 && ok2 {
			out[k] = merge(bm, om)
			continue
		}
		out[k] = v
	}
	return out
}

// commentedSetting is a setting shown commented out, with its default.
var commentedSetting = regexp.MustCompile(`(?m)^(\s*)# ([a-z_]+: .*)$`)

// uncomment turns a fragment's commented settings on.
func uncomment(text string) string { return commentedSetting.ReplaceAllString(text, "$1$2") }

// envName finds the environment variables a config names (token_env,
// secret_key_env, password_env, key_env, headers_env, secret_env …).
var envName = regexp.MustCompile(`(?m)\b\w*_env:\s*([A-Za-z_][A-Za-z0-9_]*)`)

// validateConfig builds a config as `tollgate validate` does (config.Load,
// then app.New without connecting) in a temp dir that holds what a doc's
// config names: an entitlements file with one subject, a Stripe customer
// map, a CA bundle for /etc/tollgate/*.pem, a /var/lib/tollgate/ to write
// to, and every environment variable it names, set. extra is more files,
// name then content.
func validateConfig(t *testing.T, text string, extra ...string) error {
	dir := t.TempDir()
	text = strings.NewReplacer("/etc/tollgate/", dir+"/etc/tollgate/", "/var/lib/tollgate/", dir+"/var/lib/tollgate/").Replace(text)
	for _, sub := range []string{"etc/tollgate", "var/lib/tollgate"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	ca := testcerts.Issue(t, 1, nil, true, "docs-ca")
	for _, m := range regexp.MustCompile(dir+`/etc/tollgate/[\w.-]+\.pem`).FindAllString(text, -1) {
		ca.WriteCert(t, m)
	}
	var doc struct {
		Plans map[string]any `yaml:"plans"`
	}
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		return fmt.Errorf("not YAML: %v", err)
	}
	plan := "none"
	if names := slices.Sorted(maps.Keys(doc.Plans)); len(names) > 0 {
		plan = names[0]
	}
	files := append([]string{
		"tollgate.yaml", text,
		"entitlements.yaml", "subjects:\n  - {id: docs, plan: " + plan + ", status: active}\n",
		"stripe-customers.yaml", "customers:\n  - {subject: docs, customer: cus_docs}\n",
	}, extra...)
	for i := 0; i < len(files); i += 2 {
		if err := os.WriteFile(filepath.Join(dir, files[i]), []byte(files[i+1]), 0o600); err != nil {
			return err
		}
	}
	for _, m := range envName.FindAllStringSubmatch(text, -1) {
		v := "docs-test-secret-0123456789abcdef0123456789" // ≥ 32 bytes, as metering.key_env needs
		if strings.Contains(m[1], "HEADERS") {
			v = "api-key=docs-test"
		}
		t.Setenv(m[1], v)
	}
	cfg, err := config.Load(filepath.Join(dir, "tollgate.yaml"))
	if err != nil {
		return fmt.Errorf("%v\nthe config, as validated:\n%s", err, text)
	}
	a, err := app.New(cfg, app.Options{Lazy: true})
	if err != nil {
		return fmt.Errorf("%v\nthe config, as validated:\n%s", err, text)
	}
	a.Close()
	return nil
}

// envoyPlaces are where an envoy-fragment goes in envoy.yaml (e2e
// TestDocEnvoyFragments), and whether it is a list.
var envoyPlaces = map[string]bool{"hcm": false, "http_filters": true, "route": false, "cluster": false, "clusters": false}

// checkEnvoyFragment checks what can be without Envoy: the place is one e2e
// knows, and the fragment is YAML of the right shape.
func checkEnvoyFragment(b docstest.Block) error {
	list, ok := envoyPlaces[b.Arg]
	if !ok {
		return fmt.Errorf("envoy-fragment %q: want one of hcm, http_filters, route, cluster, clusters", b.Arg)
	}
	var v any
	if err := yaml.Unmarshal([]byte(docstest.EnvoyText(b.Text)), &v); err != nil {
		return fmt.Errorf("not YAML: %v", err)
	}
	if _, isList := v.([]any); isList != list {
		return fmt.Errorf("envoy-fragment %s: a list is %v, want %v", b.Arg, isList, list)
	}
	return nil
}

// checkIstioMesh: every setting the block shows is the one
// deploy/istio/mesh-config.yaml has (which deploy's tests decode).
func checkIstioMesh(text string) error {
	data, err := os.ReadFile("deploy/istio/mesh-config.yaml")
	if err != nil {
		return err
	}
	var cm struct {
		Data struct {
			Mesh string `yaml:"mesh"`
		} `yaml:"data"`
	}
	if err := yaml.Unmarshal(data, &cm); err != nil {
		return err
	}
	var shown, file map[string]any
	if err := yaml.Unmarshal([]byte(text), &shown); err != nil {
		return fmt.Errorf("not YAML: %v", err)
	}
	if err := yaml.Unmarshal([]byte(cm.Data.Mesh), &file); err != nil {
		return err
	}
	if !reflect.DeepEqual(shown, file) {
		return fmt.Errorf("differs from deploy/istio/mesh-config.yaml's mesh:\n%v\nwant\n%v", shown, file)
	}
	return nil
}

// json decodes a JSON block strictly as the type its annotation names.
func (d *docChecker) json(b docstest.Block) error {
	strict := func(v any) error {
		dec := json.NewDecoder(strings.NewReader(b.Text))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return err
		}
		if dec.More() {
			return errors.New("more than one JSON value")
		}
		return nil
	}
	switch b.Arg {
	case "any":
		var v any
		return strict(&v)
	case "record":
		var j entitlement.JSON
		if err := strict(&j); err != nil {
			return err
		}
		_, err := entitlement.DecodeJSON([]byte(b.Text))
		return err
	case "usage-event":
		var e tgusage.Event
		return strict(&e)
	case "check-output":
		var c checkOutput
		if err := strict(&c); err != nil {
			return err
		}
		last, ok := d.lastCheck[b.File]
		if !ok {
			return errors.New("json check-output: no tollgate check command before it in this file")
		}
		// Decision ids are new for each decision.
		ids := regexp.MustCompile(`[0-9a-f]{32}`)
		var got, want any
		if err := json.Unmarshal([]byte(ids.ReplaceAllString(last, "ID")), &got); err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(ids.ReplaceAllString(b.Text, "ID")), &want); err != nil {
			return err
		}
		if !reflect.DeepEqual(got, want) {
			return fmt.Errorf("tollgate check prints\n%s\nnot what the doc shows", last)
		}
		return nil
	}
	return fmt.Errorf("json %q: want any, record, usage-event or check-output", b.Arg)
}

// commands checks each command line of a block; in a console block only
// the lines that start with "$ ".
func (d *docChecker) commands(t *testing.T, b docstest.Block, console bool) error {
	var errs []error
	for _, c := range docstest.ShellLines(b.Text, console) {
		for _, stage := range c.Stages {
			if err := d.command(t, b, stage, c.Comment); err != nil {
				errs = append(errs, fmt.Errorf("%s:%d: %s: %w", b.File, b.Line+c.Line, strings.Join(stage, " "), err))
			}
		}
	}
	return errors.Join(errs...)
}

// unchecked are programs the docs run that nothing here can check, beyond
// their being named on purpose.
var unchecked = []string{"grep", "export", "kubectl", "docker", "kind", "stripe", "head", "yq", "promtool", "echo", "cat", "jq"}

func (d *docChecker) command(t *testing.T, b docstest.Block, words []string, comment string) error {
	for len(words) > 0 && regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`).MatchString(words[0]) {
		words = words[1:] // VAR=value before the command
	}
	if len(words) == 0 {
		return nil
	}
	prog, args := words[0], words[1:]
	switch {
	case prog == "make":
		targets, err := makeTargets()
		if err != nil {
			return err
		}
		for _, a := range args {
			if !strings.HasPrefix(a, "-") && !strings.Contains(a, "=") && !slices.Contains(targets, a) {
				return fmt.Errorf("the Makefile has no target %q", a)
			}
		}
		return nil
	case prog == "tollgate" || strings.HasSuffix(prog, "bin/tollgate"):
		return d.tollgate(t, b, args)
	case prog == "go":
		if len(args) == 0 || !slices.Contains([]string{"build", "run", "test", "install", "vet"}, args[0]) {
			return fmt.Errorf("go %v: want build, run, test, install or vet", args)
		}
		for _, a := range args[1:] {
			if p := strings.TrimSuffix(a, "/..."); strings.HasPrefix(a, ".") {
				if _, err := os.Stat(p); err != nil {
					return err
				}
			}
		}
		return nil
	case prog == "curl":
		return d.curl(t, args, comment)
	case prog == "envoy" || strings.HasSuffix(prog, "bin/envoy"):
		for i, a := range args {
			if a == "-c" && i+1 < len(args) {
				if _, err := os.Stat(args[i+1]); err != nil {
					return err
				}
			}
		}
		return nil
	case prog == "helm":
		if len(args) >= 3 && args[0] == "install" && strings.HasPrefix(args[2], "deploy/") {
			if _, err := os.Stat(filepath.Join(args[2], "Chart.yaml")); err != nil {
				return err
			}
		}
		return nil
	case slices.Contains(unchecked, prog):
		return nil
	}
	return fmt.Errorf("%s: a program this test does not know; teach it (docs_test.go) or mark the block", prog)
}

// makeTargets are the Makefile's targets.
func makeTargets() ([]string, error) {
	data, err := os.ReadFile("Makefile")
	if err != nil {
		return nil, err
	}
	var ts []string
	for _, m := range regexp.MustCompile(`(?m)^([A-Za-z0-9_.-]+)\s*:([^=]|$)`).FindAllStringSubmatch(string(data), -1) {
		ts = append(ts, m[1])
	}
	return ts, nil
}

// tollgate runs a tollgate command line: check and validate (when their
// config exists), hash-key, version and help for real; the others (serve,
// entitlements, usage, which need a server or Redis) up to their flags
// only, by asking for their help after them, which parses every flag
// before it with the command's own flag set.
func (d *docChecker) tollgate(t *testing.T, b docstest.Block, args []string) error {
	if len(args) == 0 {
		return errors.New("no command")
	}
	real := false
	switch args[0] {
	case "check", "validate":
		for i, a := range args {
			if a == "--config" && i+1 < len(args) {
				_, err := os.Stat(args[i+1])
				real = err == nil
			}
		}
	case "hash-key", "version", "help":
		real = true
	}
	if !real {
		args = append(slices.Clone(args), "--help")
	}
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if code := run(ctx, args, strings.NewReader("a-key-from-stdin\n"), &out, &errOut); code != 0 {
		return fmt.Errorf("tollgate %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	if real && args[0] == "check" {
		d.lastCheck[b.File] = out.String()
	}
	return nil
}

// curl checks a curl command line. Requests to the demo's admin listener
// (port 9090) are sent to a running demo server and must find an endpoint;
// requests to the demo's Envoy (port 8080) are decided with tollgate check,
// and a status (→ 402) or code the comment names must be the decision's.
func (d *docChecker) curl(t *testing.T, args []string, comment string) error {
	method, body, target := "", "", ""
	var headers []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch a {
		case "-X", "--request":
			method = next()
		case "-H", "--header":
			headers = append(headers, next())
		case "-d", "--data", "--data-raw":
			body = next()
		case "-s", "-i", "-si", "-is", "-S", "-f", "-v", "-k", "--fail", "--silent":
		default:
			if strings.HasPrefix(a, "-") {
				return fmt.Errorf("curl flag %s: teach docs_test.go", a)
			}
			if target != "" {
				return fmt.Errorf("two URLs: %s and %s", target, a)
			}
			target = a
		}
	}
	if method == "" {
		method = "GET"
		if body != "" {
			method = "POST"
		}
	}
	if !strings.Contains(target, "://") {
		target = "http://" + target
	}
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	local := u.Hostname() == "localhost" || u.Hostname() == "127.0.0.1"
	switch {
	case local && u.Port() == "9090":
		return d.admin(t, method, u.RequestURI(), headers, body)
	case local && u.Port() == "8080":
		if strings.Contains(comment, "ext_authz is disabled") {
			return nil // Envoy answers it without tollgate
		}
		cargs := []string{"check", "--config", "examples/tollgate.yaml", "--method", method, "--path", u.RequestURI()}
		for _, h := range headers {
			cargs = append(cargs, "-H", h)
		}
		var out, errOut bytes.Buffer
		if code := run(context.Background(), cargs, strings.NewReader(""), &out, &errOut); code != 0 {
			return fmt.Errorf("tollgate %s: exit %d: %s", strings.Join(cargs, " "), code, errOut.String())
		}
		var got checkOutput
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			return err
		}
		if m := regexp.MustCompile(`→\s*(\d{3})`).FindStringSubmatch(comment); m != nil && m[1] != fmt.Sprint(got.Status) {
			return fmt.Errorf("the doc says %s, tollgate decides %d %s", m[1], got.Status, got.Code)
		}
		if m := regexp.MustCompile(`→\s*\d{3}[^_]*?\b([a-z]+(?:_[a-z]+)+)\b`).FindStringSubmatch(comment); m != nil && m[1] != got.Code {
			return fmt.Errorf("the doc says %s, tollgate decides %d %s", m[1], got.Status, got.Code)
		}
	}
	return nil
}

// admin sends a request to the demo server's admin listener, started on
// first use with an admin token, and wants an endpoint for it (not 404 or
// 405). $TOLLGATE_ADMIN_TOKEN in a header is that token.
func (d *docChecker) admin(t *testing.T, method, uri string, headers []string, body string) error {
	if d.adminAddr == "" {
		if err := d.startDemo(); err != nil {
			return err
		}
	}
	req, err := http.NewRequest(method, "http://"+d.adminAddr+uri, strings.NewReader(body))
	if err != nil {
		return err
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return fmt.Errorf("header %q is not name: value", h)
		}
		req.Header.Set(name, os.Expand(strings.TrimSpace(value), func(v string) string {
			if v == "TOLLGATE_ADMIN_TOKEN" {
				return d.token
			}
			return "$" + v
		}))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed || resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("%s %s: %s from the demo server's admin listener", method, uri, resp.Status)
	}
	return nil
}

// startDemo serves the demo config (apptest.DemoDir, with an admin token)
// for the rest of TestDocBlocks.
func (d *docChecker) startDemo() error {
	t := d.top
	d.token = "docs-test-admin-token-0123456789"
	t.Setenv("TOLLGATE_TEST_ADMIN_TOKEN", d.token)
	dir := apptest.DemoDir(t, "127.0.0.1:0")
	cfg, err := config.Load(filepath.Join(dir, "tollgate.yaml"))
	if err != nil {
		return err
	}
	a, err := app.New(cfg, app.Options{})
	if err != nil {
		return err
	}
	addrs, err := a.Listen()
	if err != nil {
		a.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		a.Close()
	})
	d.adminAddr = addrs.Admin
	apptest.WaitFor(t, func() bool {
		resp, err := http.Get("http://" + d.adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return nil
}

// TestDocLinks: every relative link in the docs points at a file that
// exists and, with a #fragment into a Markdown file, at a heading it has.
func TestDocLinks(t *testing.T) {
	files, _ := filepath.Glob("docs/*.md")
	files = append(files, "README.md", "SECURITY.md", "CHANGELOG.md", "BENCHMARKS.md", "deploy/README.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(data), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, frag, _ := strings.Cut(target, "#")
			if path == "" {
				path = f
			} else {
				path = filepath.Join(filepath.Dir(f), path)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s: link %s: %v", f, target, err)
				continue
			}
			if frag == "" || !strings.HasSuffix(path, ".md") {
				continue
			}
			md, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(docstest.Anchors(string(md)), frag) {
				t.Errorf("%s: link %s: %s has no heading #%s", f, target, path, frag)
			}
		}
	}
}
