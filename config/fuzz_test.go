package config

import (
	"os"
	"testing"
)

// FuzzParse: any bytes give a config or errors, never a panic, and every
// error line names the file.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../examples/tollgate.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("routes: [{match: {path: {pattern: /a/{b}/**}}}]\n"))
	f.Add([]byte("plans: {free: {quotas: {q: {limit: -1, period: week}}}}\n"))
	f.Add([]byte("identity: [{api_key: {header: 1}}, bearer, {jwt: null}]\n"))
	f.Add([]byte("\t- :\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.yaml", data)
		if err == nil && (c.Policy == nil || c.Chain == nil) {
			t.Fatal("a config without a policy or identity chain loaded")
		}
	})
}
