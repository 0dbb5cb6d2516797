// Package mppx runs mppx, the Payment scheme's TypeScript SDK (npm), in
// tests: it installs a pinned client once per lockfile into the user cache
// directory and says where its script is. Tests skip without node and npm,
// or when the npm registry cannot be reached on the first run.
package mppx

import (
	"github.com/tollgate-authz/tollgate/internal/sdktest"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Client returns a directory holding src's client.mjs beside node_modules
// installed from src's package.json and package-lock.json (npm ci, scripts
// off). The install is cached, keyed by the lockfile's hash, so only the
// first run downloads; run the script with `node script` in dir.
func Client(t testing.TB, src string) (dir, script string) {
	t.Helper()
	_, err1 := exec.LookPath("node")
	npm, err2 := exec.LookPath("npm")
	if err1 != nil || err2 != nil {
		sdktest.Skip(t, "node and npm are needed to run the mppx client SDK; install Node.js to run this test")
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pkg, lock, js := read("package.json"), read("package-lock.json"), read("client.mjs")
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	sum := sha256.Sum256(append(append([]byte(nil), pkg...), lock...))
	dir = filepath.Join(cache, "tollgate-mpp-client", hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "mppx", "package.json")); err != nil {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		tmp, err := os.MkdirTemp(filepath.Dir(dir), "install-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		for name, b := range map[string][]byte{"package.json": pkg, "package-lock.json": lock} {
			if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
		cmd.Dir = tmp
		if out, err := cmd.CombinedOutput(); err != nil {
			sdktest.Skip(t, "npm ci of mppx failed (is the npm registry reachable?): %v\n%s", err, Tail(out, 2000))
		}
		// Another test process may have finished first; either copy will do.
		if err := os.Rename(tmp, dir); err != nil {
			if _, statErr := os.Stat(filepath.Join(dir, "node_modules")); statErr != nil {
				t.Fatalf("caching the install: %v", err)
			}
		}
	}
	// The script must sit beside node_modules for ESM resolution; one copy
	// per content so parallel runs do not race.
	h := sha256.Sum256(js)
	script = filepath.Join(dir, "client-"+hex.EncodeToString(h[:4])+".mjs")
	if err := os.WriteFile(script, js, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, script
}

// Tail is the last n bytes of b, for error messages.
func Tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
