// Package sdktest decides what a test that runs a real client SDK (Node's
// x402 and mppx packages) does when it cannot: skip, or, with
// TOLLGATE_REQUIRE_SDKS set (CI sets it), fail, so that a machine without
// Node or the npm registry cannot pass for one that ran the SDKs.
package sdktest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// RequireEnv is the variable that turns the skips into failures.
const RequireEnv = "TOLLGATE_REQUIRE_SDKS"

// Skip skips t with the message, or fails it when RequireEnv is set.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("%s (%s is set: the real client SDKs must run)", msg, RequireEnv)
	}
	t.Skip(msg)
}

// Install makes a directory holding node_modules installed from src's
// package.json and package-lock.json (npm ci, scripts off) with src's
// script beside it (ESM resolves packages from the script's directory),
// and returns the directory and the script's path there. The install is
// cached in the user cache directory under name/<hash of the two files>,
// so only the first run downloads; marker, a path under node_modules,
// says an install is complete. skip is why it cannot run here (no node or
// npm, or npm ci failed: the registry unreachable); err is anything else.
func Install(src, name, script, marker string) (dir, scriptPath, skip string, err error) {
	npm, err1 := exec.LookPath("npm")
	_, err2 := exec.LookPath("node")
	if err1 != nil || err2 != nil {
		return "", "", "node and npm are needed to run the client SDK in " + src + "; install Node.js to run this test", nil
	}
	files := map[string][]byte{}
	for _, f := range []string{"package.json", "package-lock.json", script} {
		if files[f], err = os.ReadFile(filepath.Join(src, f)); err != nil {
			return "", "", "", err
		}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	sum := sha256.Sum256(append(append([]byte(nil), files["package.json"]...), files["package-lock.json"]...))
	dir = filepath.Join(cache, name, hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(filepath.Join(dir, "node_modules", marker)); err != nil {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return "", "", "", err
		}
		tmp, err := os.MkdirTemp(filepath.Dir(dir), "install-")
		if err != nil {
			return "", "", "", err
		}
		defer os.RemoveAll(tmp)
		for _, f := range []string{"package.json", "package-lock.json"} {
			if err := os.WriteFile(filepath.Join(tmp, f), files[f], 0o644); err != nil {
				return "", "", "", err
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
		cmd.Dir = tmp
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Sprintf("npm ci in %s failed (is the npm registry reachable?): %v\n%s", src, err, Tail(out, 2000)), nil
		}
		// Another test process may have finished first; either copy will do.
		if err := os.Rename(tmp, dir); err != nil {
			if _, statErr := os.Stat(filepath.Join(dir, "node_modules", marker)); statErr != nil {
				return "", "", "", fmt.Errorf("caching the install of %s: %v", src, err)
			}
		}
	}
	// One copy per content, so that runs of different versions do not race.
	h := sha256.Sum256(files[script])
	ext := filepath.Ext(script)
	scriptPath = filepath.Join(dir, strings.TrimSuffix(script, ext)+"-"+hex.EncodeToString(h[:6])+ext)
	if err := os.WriteFile(scriptPath, files[script], 0o644); err != nil {
		return "", "", "", err
	}
	return dir, scriptPath, "", nil
}

// Tail is the last n bytes of b, for error messages.
func Tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
