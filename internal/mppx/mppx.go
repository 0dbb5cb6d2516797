// Package mppx runs mppx, the Payment scheme's TypeScript SDK (npm), in
// tests: it installs a pinned client once per lockfile into the user cache
// directory and says where its script is. Tests skip without node and npm,
// or when the npm registry cannot be reached on the first run.
package mppx

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/sdktest"
)

// Client returns a directory holding src's client.mjs beside node_modules
// installed from src's package.json and package-lock.json (npm ci, scripts
// off). The install is cached, keyed by the lockfile's hash, so only the
// first run downloads; run the script with `node script` in dir.
func Client(t testing.TB, src string) (dir, script string) {
	t.Helper()
	dir, script, skip, err := sdktest.Install(src, "tollgate-mpp-client", "client.mjs", "mppx/package.json")
	if err != nil {
		t.Fatal(err)
	}
	if skip != "" {
		sdktest.Skip(t, "%s", skip)
	}
	return dir, script
}

// Tail is the last n bytes of b, for error messages.
func Tail(b []byte, n int) []byte { return sdktest.Tail(b, n) }

// Pay runs the client script (see Client) in dir against url, paying as
// the key privateKeyHex (0x…) in the token named tokenName at
// tokenVersion (its EIP-712 domain), and returns what it printed. It
// fails the test when the client exits non-zero or runs two minutes.
func Pay(t testing.TB, dir, script, url, privateKeyHex, tokenName, tokenVersion string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "URL="+url, "PRIVATE_KEY="+privateKeyHex,
		"TOKEN_NAME="+tokenName, "TOKEN_VERSION="+tokenVersion)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, Tail(out, 4000))
	}
	return out
}
