package stripesource

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/sourcetest"
)

const goodMap = `customers:
  - subject: acme
    customer: cus_acme
    api_key_sha256: [` + sourcetest.DigestAcme + `]
  - subject: acme-staging
    customer: cus_acme
  - subject: initech
    customer: cus_initech
    api_key_sha256: ["sha256:` + "0F1E2D3C4B5A69788796A5B4C3D2E1F00112233445566778899AABBCCDDEEFF0" + `"]
`

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestMapLookups(t *testing.T) {
	path := filepath.Join(t.TempDir(), "customers.yaml")
	writeFile(t, path, goodMap)
	m, err := OpenMap(path, MapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key          entitlement.Key
		wantSubject  string
		wantCustomer string
	}{
		{bySubject("acme"), "acme", "cus_acme"},
		{bySubject("acme-staging"), "acme-staging", "cus_acme"},
		{entitlement.Key{Kind: entitlement.ByAPIKey, ID: sourcetest.DigestAcme}, "acme", "cus_acme"},
		{entitlement.Key{Kind: entitlement.ByAPIKey, ID: sourcetest.DigestInitech}, "initech", "cus_initech"}, // upper case and prefix normalised
		{bySubject(sourcetest.DigestAcme), "", ""},
		{entitlement.Key{Kind: entitlement.ByAPIKey, ID: "acme"}, "", ""},
		{bySubject("nobody"), "", ""},
	}
	for _, tt := range tests {
		c, ok := m.Resolve(tt.key)
		if ok != (tt.wantSubject != "") || c.Subject != tt.wantSubject || c.ID != tt.wantCustomer {
			t.Errorf("Resolve(%v %s) = %+v, %v; want %s/%s", tt.key.Kind, tt.key.ID, c, ok, tt.wantSubject, tt.wantCustomer)
		}
	}
	if got, want := m.Subjects("cus_acme"), []string{"acme", "acme-staging"}; !slices.Equal(got, want) {
		t.Errorf("Subjects = %v, want %v", got, want)
	}
	wantKeys := []entitlement.Key{bySubject("acme"), {Kind: entitlement.ByAPIKey, ID: sourcetest.DigestAcme}, bySubject("acme-staging")}
	if got := m.Keys("cus_acme"); !slices.Equal(got, wantKeys) {
		t.Errorf("Keys = %v, want %v", got, wantKeys)
	}
	if got := m.Keys("cus_unknown"); len(got) != 0 {
		t.Errorf("Keys(unknown) = %v, want none", got)
	}
}

func TestMapErrors(t *testing.T) {
	tests := []struct {
		name string
		data string
		want string
	}{
		{"empty", "  \n", "the file is empty"},
		{"unknown field", "customers:\n  - subject: a\n    customer: cus_a\n    plan: pro\n", ":4:"},
		{"no subject", "customers:\n  - customer: cus_a\n", ":2: customers[0].subject: is required"},
		{"not a customer id", "customers:\n  - subject: a\n    customer: sub_123\n", `:3: customers[0].customer: "sub_123" is not a Stripe customer id`},
		{"subject twice", "customers:\n  - subject: a\n    customer: cus_a\n  - subject: a\n    customer: cus_b\n", ":4: customers[1].subject: subject \"a\" is listed twice"},
		{"bad digest", "customers:\n  - subject: a\n    customer: cus_a\n    api_key_sha256: [nothex]\n", ":4: customers[0].api_key_sha256[0]: is not a hex SHA-256 digest"},
		{"digest shared", "customers:\n  - subject: a\n    customer: cus_a\n    api_key_sha256: [" + sourcetest.DigestAcme + "]\n  - subject: b\n    customer: cus_b\n    api_key_sha256: [" + sourcetest.DigestAcme + "]\n",
			":7: customers[1].api_key_sha256[0]: key is already held by subject \"a\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "customers.yaml")
			writeFile(t, path, tt.data)
			_, err := OpenMap(path, MapOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestMapReloadKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "customers.yaml")
	writeFile(t, path, goodMap)
	var outcomes []error
	m, err := OpenMap(path, MapOptions{OnReload: func(err error) { outcomes = append(outcomes, err) }})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "customers:\n  - subject: acme\n    customer: nope\n")
	if err := m.Reload(); err == nil {
		t.Fatal("a bad map was accepted")
	}
	if _, ok := m.Resolve(bySubject("initech")); !ok {
		t.Error("the last good map was dropped")
	}
	writeFile(t, path, "customers:\n  - subject: globex\n    customer: cus_globex\n")
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Resolve(bySubject("initech")); ok || m.Len() != 1 {
		t.Errorf("after a good reload: initech still there or Len %d != 1", m.Len())
	}
	if len(outcomes) != 2 || outcomes[0] == nil || outcomes[1] != nil {
		t.Errorf("OnReload outcomes = %v, want [error, nil]", outcomes)
	}
	if err := m.Replace([]Customer{{Subject: "x", ID: "bad"}}); err == nil || m.Len() != 1 {
		t.Errorf("Replace with a bad record: err %v, Len %d; want an error and the map kept", err, m.Len())
	}
}
