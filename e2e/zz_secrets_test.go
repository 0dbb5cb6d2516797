//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Secrets sent during the run: the demo API keys, and every JWT signed.
var (
	secretsMu sync.Mutex
	secrets   = []string{"demo-free-key", "demo-pro-key", "demo-pastdue-key"}
)

func rememberSecret(s string) {
	secretsMu.Lock()
	secrets = append(secrets, s)
	secretsMu.Unlock()
}

// TestLogsNeverHoldSecrets runs last (files run in name order): it reads
// every log the suite's tollgate and Envoy processes wrote and fails if a
// raw API key or bearer token appears in any of them. It also checks that
// the logs do show the keys' hashed ids, so it cannot pass on empty logs.
func TestLogsNeverHoldSecrets(t *testing.T) {
	// Run alone, the test makes its own traffic: a key, a Bearer key, a JWT.
	e := sharedEnv(t)
	do(t, "GET", e.envoy.url("/v1/search?api_key=demo-free-key"), "x-api-key: demo-free-key")
	do(t, "GET", e.envoy.url("/v1/search"), "authorization: Bearer demo-pro-key")
	do(t, "GET", e.envoy.url("/v1/search"), "authorization: Bearer "+e.jwt.sign(map[string]any{"sub": "acme"}))
	e.tg.checks(t) // a round trip to tollgate's admin: its decision lines are written by now
	var logs []string
	err := filepath.WalkDir(workDir, func(path string, d fs.DirEntry, err error) error {
		// Only what the processes wrote: the configs and the demo
		// entitlements file (whose comments name the demo keys) are inputs.
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, sec := range snapshotSecrets() {
			if strings.Contains(string(b), sec) {
				t.Errorf("%s holds a raw secret (%.12s…)", strings.TrimPrefix(path, workDir), sec)
			}
		}
		logs = append(logs, string(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(logs, "\n")
	sum := sha256.Sum256([]byte("demo-free-key"))
	if keyID := hex.EncodeToString(sum[:])[:12]; !strings.Contains(all, `"key_id":"`+keyID+`"`) {
		t.Errorf("no log line shows the free key's id %s: the scan read no decision log", keyID)
	}
}

func snapshotSecrets() []string {
	secretsMu.Lock()
	defer secretsMu.Unlock()
	return append([]string(nil), secrets...)
}
