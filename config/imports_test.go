package config

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsPointDown: reading the config must not link the server (style
// rule 19). The authz runtime is built by the caller from the loaded values.
func TestImportsPointDown(t *testing.T) {
	forbidden := []string{
		"github.com/tollgate-authz/tollgate/authz",
		"google.golang.org/grpc",
		"github.com/envoyproxy",
	}
	for _, dep := range deps(t) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("config depends on %s", dep)
			}
		}
	}
}

// deps lists every package this one links, as `go list -deps` reports it.
func deps(t *testing.T) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	return strings.Fields(string(out))
}
