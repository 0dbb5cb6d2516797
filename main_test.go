package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate-authz/tollgate/internal/apptest"
)

// The helpers shared with internal/app's tests.
var (
	demoDir   = apptest.DemoDir
	writeFile = apptest.WriteFile
	editFile  = apptest.EditFile
	code      = apptest.Code
	waitFor   = apptest.WaitFor
	dialGRPC  = apptest.DialGRPC
	checkKey  = apptest.CheckKey
)

type syncBuffer = apptest.SyncBuffer

const patience = apptest.Patience

func getStatus(t *testing.T, url string) int {
	t.Helper()
	st, _ := apptest.Get(t, url)
	return st
}

func TestCLI(t *testing.T) {
	noEnts := filepath.Join(t.TempDir(), "tollgate.yaml") // names an entitlements file that is not there
	writeFile(t, noEnts, "entitlements: {file: {path: missing.yaml}}\nplans: {free: {}}\n")
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, bad, "entitlements: {file: {path: e.yaml}}\nroutes:\n  - feature: nope\n")
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"no command", nil, "", 2, "", "usage: tollgate"},
		{"unknown command", []string{"frobnicate"}, "", 2, "", `tollgate: unknown command "frobnicate"`},
		{"version", []string{"version"}, "", 0, "tollgate dev", ""},
		{"hash-key", []string{"hash-key", "demo-free-key"}, "", 0, "9f8cfdb17116bf0e2a44e071454f25594cb9b8737bf331e6a2f0b30550572f29\n", ""},
		{"hash-key stdin", []string{"hash-key", "-"}, "demo-free-key\n", 0, "9f8cfdb17116bf0e2a44e071454f25594cb9b8737bf331e6a2f0b30550572f29\n", ""},
		{"hash-key nothing", []string{"hash-key"}, "", 2, "", "tollgate: hash-key: give exactly one KEY"},
		{"validate ok", []string{"validate", "--config", "examples/tollgate.yaml"}, "", 0, "examples/tollgate.yaml: ok (2 plans, 3 routes, entitlements: 3 subjects", ""},
		{"validate needs config", []string{"validate"}, "", 2, "", "tollgate: validate: --config FILE is required"},
		{"bad flag", []string{"serve", "--cofnig", "x"}, "", 2, "", "tollgate: serve: flag provided but not defined: -cofnig (see: tollgate serve --help)"},
		{"help", []string{"help"}, "", 0, "usage: tollgate <command> [flags]", ""},
		{"--help", []string{"--help"}, "", 0, "Run 'tollgate COMMAND --help'", ""},
		{"serve --help", []string{"serve", "--help"}, "", 0, "usage: tollgate serve --config FILE\n", ""},
		{"serve -h lists its flags", []string{"serve", "-h"}, "", 0, "  -config string\n", ""},
		{"help serve", []string{"help", "serve"}, "", 0, "usage: tollgate serve --config FILE\n", ""},
		{"validate --help", []string{"validate", "--help"}, "", 0, "  -connect\n", ""},
		{"check --help", []string{"check", "--help"}, "", 0, "  -raw-headers\n", ""},
		{"hash-key --help is not a key", []string{"hash-key", "--help"}, "", 0, "usage: tollgate hash-key KEY | -\n", ""},
		{"hash-key -h", []string{"hash-key", "-h"}, "", 0, "usage: tollgate hash-key", ""},
		{"entitlements --help", []string{"entitlements", "--help"}, "", 0, "tollgate entitlements delete --redis ADDR --subject S", ""},
		{"entitlements set --help", []string{"entitlements", "set", "--help"}, "", 0, "  -api-key-stdin\n", ""},
		{"version --help", []string{"version", "--help"}, "", 0, "usage: tollgate version", ""},
		{"help for nothing", []string{"help", "frobnicate"}, "", 2, "", `tollgate: help: unknown command "frobnicate"`},
		{"missing file", []string{"validate", "--config", "/nonexistent.yaml"}, "", 1, "", "tollgate: open /nonexistent.yaml: no such file or directory"},
		{"bad config", []string{"validate", "--config", bad}, "", 1, "", `bad.yaml:3: routes[0].feature: "nope" is not a feature of any plan`},
		{"bad config on serve", []string{"serve", "--config", bad}, "", 1, "", `routes[0].feature: "nope"`},
		{"missing entitlements file", []string{"validate", "--config", noEnts}, "", 1, "", noEnts + ":1: entitlements.file.path: "},
		{"missing entitlements file on serve", []string{"serve", "--config", noEnts}, "", 1, "", noEnts + ":1: entitlements.file.path: "},
		{"check bad header", []string{"check", "--config", "examples/tollgate.yaml", "-H", "novalue"}, "", 2, "", `tollgate: check: -H "novalue" is not 'name: value'`},
		{"check allow", []string{"check", "--config", "examples/tollgate.yaml", "--path", "/v1/search", "-H", "x-api-key: demo-free-key"}, "", 0, "\"name\": \"x-tollgate-plan\",\n      \"value\": \"free\"", ""},
		{"check deny", []string{"check", "--config", "examples/tollgate.yaml", "--method", "post", "--path", "/v1/chat", "-H", "X-Api-Key: demo-free-key"}, "", 0, `"plans_with_feature": [`, ""},
		{"check grpc client", []string{"check", "--config", "examples/tollgate.yaml", "--method", "POST", "--path", "/v1/chat", "-H", "content-type: application/grpc", "-H", "x-api-key: demo-free-key"}, "", 0, `"body": "feature_not_in_plan: The chat feature`, ""},
		{"check shows quota state", []string{"check", "--config", "authz/testdata/quota.yaml", "--path", "/v1/search", "-H", "x-api-key: demo-free-key"}, "", 0, `"counter": "initech/requests/`, ""},
		{"check raw headers", []string{"check", "--config", "examples/tollgate.yaml", "--raw-headers", "--path", "/v1/search", "-H", "x-api-key: demo-pastdue-key"}, "", 0, `"code": "payment_failed"`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			got := run(context.Background(), tt.args, strings.NewReader(tt.stdin), &stdout, &stderr)
			if got != tt.wantCode {
				t.Errorf("exit = %d, want %d (stderr %q)", got, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}
