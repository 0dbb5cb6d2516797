package policy

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsPointDown keeps policy pure (style rule 19): it decides from
// values it is handed, so it links no quota store, Redis client, cache,
// config reader or gRPC.
func TestImportsPointDown(t *testing.T) {
	forbidden := []string{
		"github.com/tollgate-authz/tollgate/quota",
		"github.com/tollgate-authz/tollgate/cache",
		"github.com/tollgate-authz/tollgate/config",
		"github.com/tollgate-authz/tollgate/authz",
		"github.com/tollgate-authz/tollgate/metrics",
		"github.com/redis/go-redis",
		"google.golang.org/grpc",
		"github.com/envoyproxy",
	}
	for _, dep := range deps(t) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("policy depends on %s", dep)
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
