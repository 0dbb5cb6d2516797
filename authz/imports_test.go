package authz

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsPointDown: authz sees the cache only through the Entitlements
// interface, whose outcome type lives in entitlement (style rule 19), and it
// never links the config reader: serve hands it plain Options.
func TestImportsPointDown(t *testing.T) {
	forbidden := []string{
		"github.com/tollgate-authz/tollgate/cache",
		"github.com/tollgate-authz/tollgate/config",
	}
	for _, dep := range deps(t) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("authz depends on %s", dep)
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
