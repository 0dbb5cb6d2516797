package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsPointDown holds style rule 19: imports point down only, and a
// package links nothing it does not need. Each row names a package and what
// it must never depend on, directly or through another package.
func TestImportsPointDown(t *testing.T) {
	const mod = "github.com/tollgate-authz/tollgate/"
	tests := []struct {
		pkg       string
		direct    bool // only the package's own imports, not what they import
		forbidden []string
		why       string
	}{
		{"config", false, []string{mod + "authz", "google.golang.org/grpc", "github.com/envoyproxy"},
			"reading the config must not link the server; serve builds the authz runtime from the loaded values"},
		{"policy", false, []string{mod + "quota", mod + "cache", mod + "config", mod + "authz", mod + "metrics",
			"github.com/redis/go-redis", "google.golang.org/grpc", "github.com/envoyproxy"},
			"policy is pure: it decides from values it is handed"},
		{"authz", false, []string{mod + "cache", mod + "config"},
			"authz sees the cache through its Entitlements interface and takes plain Options"},
		{"authz", false, []string{"go.opentelemetry.io"},
			"authz traces through its Tracer interface: internal/app links OpenTelemetry, and only a server with tracing on pays for it"},
		{".", true, []string{mod + "metrics", mod + "cache", mod + "quota", mod + "admin", mod + "internal/tlsreload",
			mod + "internal/authzconfig", mod + "internal/overload", mod + "entitlement/filesource", mod + "entitlement/httpsource",
			mod + "entitlement/stripesource", "github.com/redis/go-redis", "github.com/prometheus", "google.golang.org/grpc"},
			"the command line only parses flags and prints: internal/app builds and runs the server"},
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			args := []string{"list", "-deps", "-f", "{{.ImportPath}}", "./" + tt.pkg}
			if tt.direct {
				args = []string{"list", "-f", `{{join .Imports "\n"}}`, "./" + tt.pkg}
			}
			out, err := exec.Command(goBin, args...).Output()
			if err != nil {
				t.Fatalf("go list -deps ./%s: %v", tt.pkg, err)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, f := range tt.forbidden {
					if dep == f || strings.HasPrefix(dep, f+"/") {
						t.Errorf("%s depends on %s: %s", tt.pkg, dep, tt.why)
					}
				}
			}
		})
	}
}
