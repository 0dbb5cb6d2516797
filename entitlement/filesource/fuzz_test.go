package filesource

import (
	"testing"
)

// FuzzParse: any entitlements file is loaded or refused, never a panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("subjects: [{id: a, plan: p, status: active, credits: 99999999999999999999}]\n"))
	f.Add([]byte("subjects: [{id: a, api_key_sha256: [sha256:]}]\n"))
	f.Add([]byte("subjects: {}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := parse("f.yaml", data, nil)
		if err == nil && idx == nil {
			t.Fatal("nil index without an error")
		}
	})
}
