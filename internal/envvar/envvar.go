// Package envvar reads the secrets tollgate takes from the environment
// (tokens, passwords, keys), with the one rule every reader shares: config,
// to check them when it loads, and the adapters and the CLI, to read them.
package envvar

import (
	"fmt"
	"os"
	"strings"
)

// Lookup returns the value of the environment variable name with
// surrounding white space trimmed (a secret written from a file often ends
// in a newline). An unset variable, or one holding only white space, is an
// error naming the variable; no error holds its value.
func Lookup(name string) (string, error) {
	v, ok := os.LookupEnv(name)
	v = strings.TrimSpace(v)
	if !ok || v == "" {
		return "", fmt.Errorf("environment variable %s is unset or empty", name)
	}
	return v, nil
}
