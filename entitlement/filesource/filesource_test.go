package filesource

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
)

const digestA = "9f8cfdb17116bf0e2a44e071454f25594cb9b8737bf331e6a2f0b30550572f29"
const digestB = "1fbfd5e2a34698deb796eb78add256a067ec065519b8329b1eb85f5e2ef906d4"

var good = `subjects:
  - id: initech
    plan: free
    status: active
    api_key_sha256: [` + digestA + `]
  - id: acme
    plan: pro
    status: past_due
    features: [export]
    quotas: {requests: 5000}
    credits: 250
    period_end: 2026-12-01T00:00:00Z
    api_key_sha256: ["sha256:` + strings.ToUpper(digestB) + `"]
`

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLookup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e.yaml")
	write(t, path, good)
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key         entitlement.Key
		wantSubject string
		wantErr     error
	}{
		{entitlement.Key{Kind: entitlement.ByAPIKey, ID: digestA}, "initech", nil},
		{entitlement.Key{Kind: entitlement.ByAPIKey, ID: digestB}, "acme", nil},
		{entitlement.Key{Kind: entitlement.BySubject, ID: "acme"}, "acme", nil},
		{entitlement.Key{Kind: entitlement.BySubject, ID: digestA}, "", entitlement.ErrNotFound},
		{entitlement.Key{Kind: entitlement.ByAPIKey, ID: "acme"}, "", entitlement.ErrNotFound},
	}
	for _, tt := range tests {
		e, err := s.Lookup(context.Background(), tt.key)
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
			t.Errorf("Lookup(%v) err = %v, want %v", tt.key, err, tt.wantErr)
			continue
		}
		if got := ""; e != nil {
			got = e.Subject
			if got != tt.wantSubject {
				t.Errorf("Lookup(%v) = %s, want %s", tt.key, got, tt.wantSubject)
			}
		}
	}
	e, _ := s.Lookup(context.Background(), entitlement.Key{Kind: entitlement.BySubject, ID: "acme"})
	if e.Status != entitlement.StatusPastDue || *e.Credits != 250 || e.Quotas["requests"] != 5000 ||
		!e.HasFeature("export") || !e.PeriodEnd.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("record = %+v", e)
	}
}

func TestParseErrorsNameFileLineField(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want string
	}{
		{"bad status", "subjects:\n  - id: a\n    plan: free\n    status: actve\n", `e.yaml:4: subjects[0].status: "actve" is not a subscription status`},
		{"missing plan", "subjects:\n  - id: a\n    status: active\n", "e.yaml:2: subjects[0].plan: is required"},
		{"duplicate id", "subjects:\n  - {id: a, plan: p, status: active}\n  - {id: a, plan: p, status: active}\n", `e.yaml:3: subjects[1].id: subject "a" is listed twice`},
		{"bad digest", "subjects:\n  - id: a\n    plan: p\n    status: active\n    api_key_sha256:\n      - demo-free-key\n", "e.yaml:6: subjects[0].api_key_sha256[0]: is not a hex SHA-256 digest"},
		{"shared key", "subjects:\n  - {id: a, plan: p, status: active, api_key_sha256: [" + digestA + "]}\n  - {id: b, plan: p, status: active, api_key_sha256: [" + digestA + "]}\n", `subjects[1].api_key_sha256[0]: key is already held by subject "a"`},
		{"unknown field", "subjects:\n  - id: a\n    plna: free\n", "e.yaml:3: subjects[0].plna: unknown field; did you mean `plan`?"},
		{"negative credits", "subjects:\n  - {id: a, plan: p, status: active, credits: -1}\n", "subjects[0].credits: must not be negative"},
		{"syntax", "subjects:\n  - id: a\n   plan: [\n", "e.yaml:"},
		{"policy check", "subjects:\n  - id: a\n    plan: gold\n    status: active\n", `e.yaml:3: subjects[0].plan: no plan "gold"`},
	}
	check := func(e *entitlement.Entitlement) (string, error) {
		if e.Plan == "gold" {
			return "plan", errors.New(`no plan "gold"`)
		}
		return "", nil
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse("e.yaml", []byte(tt.doc), check)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if _, err := parse("e.yaml", []byte(" \n"), nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty file: %v, want it refused", err)
	}
	if _, err := parse("e.yaml", []byte("subjects: []\n"), nil); err != nil {
		t.Errorf("no subjects: %v, want ok", err)
	}
}

func TestBadReloadKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e.yaml")
	write(t, path, good)
	var reloads, failures atomic.Int64
	s, err := Open(path, Options{OnReload: func(err error) {
		reloads.Add(1)
		if err != nil {
			failures.Add(1)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	write(t, path, strings.Replace(good, "status: active", "status: bogus", 1))
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "subjects[0].status") {
		t.Fatalf("Reload of a bad file: %v", err)
	}
	if e, err := s.Lookup(context.Background(), entitlement.Key{Kind: entitlement.BySubject, ID: "initech"}); err != nil || e.Status != entitlement.StatusActive {
		t.Errorf("after a bad reload: %+v %v, want the last good record", e, err)
	}
	os.Remove(path)
	if err := s.Reload(); err == nil {
		t.Error("reload of a missing file: want error")
	}
	if s.Len() != 2 {
		t.Errorf("subjects = %d, want 2 kept", s.Len())
	}
	if reloads.Load() != 2 || failures.Load() != 2 {
		t.Errorf("OnReload calls = %d (%d failed), want 2 (2)", reloads.Load(), failures.Load())
	}
	if _, err := Open(path, Options{}); err == nil {
		t.Error("Open of a missing file: want error")
	}
}

func TestWatchReloadsWithoutDroppingLookups(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e.yaml")
	write(t, path, good)
	reloaded := make(chan error, 10)
	s, err := Open(path, Options{OnReload: func(err error) { reloaded <- err }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, 5*time.Millisecond)

	// Readers run throughout; not one lookup may fail.
	var failed atomic.Int64
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.Lookup(ctx, entitlement.Key{Kind: entitlement.BySubject, ID: "initech"}); err != nil {
				failed.Add(1)
			}
		}
	}()
	time.Sleep(20 * time.Millisecond) // let the watcher take its first stat
	write(t, path, strings.Replace(good, "plan: free", "plan: pro", 1)+"  - {id: newco, plan: free, status: trialing}\n")
	// A poll may catch the write half done; that reload fails and keeps the
	// old data. Wait for the one that succeeds.
	deadline := time.After(5 * time.Second)
	for ok := false; !ok; {
		select {
		case err := <-reloaded:
			ok = err == nil
		case <-deadline:
			t.Fatal("the change was not picked up")
		}
	}
	close(stop)
	<-readerDone
	if failed.Load() != 0 {
		t.Errorf("%d lookups failed during reload", failed.Load())
	}
	e, err := s.Lookup(ctx, entitlement.Key{Kind: entitlement.BySubject, ID: "initech"})
	if err != nil || e.Plan != "pro" {
		t.Errorf("after reload: %+v %v, want plan pro", e, err)
	}
	if _, err := s.Lookup(ctx, entitlement.Key{Kind: entitlement.BySubject, ID: "newco"}); err != nil {
		t.Errorf("new subject: %v", err)
	}
}
