// Package sdktest decides what a test that runs a real client SDK (Node's
// x402 and mppx packages) does when it cannot: skip, or, with
// TOLLGATE_REQUIRE_SDKS set (CI sets it), fail, so that a machine without
// Node or the npm registry cannot pass for one that ran the SDKs.
package sdktest

import (
	"fmt"
	"os"
	"testing"
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
