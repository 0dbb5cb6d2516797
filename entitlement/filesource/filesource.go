// Package filesource is the embedded entitlement source: a YAML file of subjects,
// reloaded when it changes. Lookups read an immutable index through an atomic
// pointer, so a reload never blocks or drops a request, and a bad edit keeps
// the last good index while the error names the file, line and field.
package filesource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/watch"
	"github.com/tollgate-authz/tollgate/internal/yamlpos"
)

// Document is the file's shape.
type Document struct {
	Subjects []Subject `yaml:"subjects"`
}

// Subject is one record as written in the file.
type Subject struct {
	ID       string           `yaml:"id"`
	Customer string           `yaml:"customer"` // the billing system's id, for usage events
	Plan     string           `yaml:"plan"`
	Status   string           `yaml:"status"`
	APIKeys  []string         `yaml:"api_key_sha256"`
	Features []string         `yaml:"features"`
	Quotas   map[string]int64 `yaml:"quotas"`
	Credits  *int64           `yaml:"credits"`
	// Times are RFC 3339.
	PeriodStart  time.Time `yaml:"period_start"`
	PeriodEnd    time.Time `yaml:"period_end"`
	PastDueSince time.Time `yaml:"past_due_since"`
}

// Options tune a Source.
type Options struct {
	// Check, when set, vets each record against the rest of the config (for
	// example that its plan exists). Its error is reported against the
	// subject's line; the path it returns after ": " is not needed.
	Check func(e *entitlement.Entitlement) (field string, err error)
	// OnReload is told the outcome of every reload after the first load.
	OnReload func(err error)
}

type index struct {
	bySubject map[string]*entitlement.Entitlement
	byKey     map[string]*entitlement.Entitlement
}

// Source serves entitlements from a YAML file.
type Source struct {
	path string
	opts Options
	idx  *watch.Value[index]
}

var _ entitlement.Source = (*Source)(nil)

// Open loads path. The first load must succeed: there is no last good data yet.
func Open(path string, opts Options) (*Source, error) {
	s := &Source{path: path, opts: opts}
	idx, err := watch.NewValue(s.load, opts.OnReload, path)
	if err != nil {
		return nil, err
	}
	s.idx = idx
	return s, nil
}

// Lookup implements entitlement.Source. It never blocks on a reload.
func (s *Source) Lookup(_ context.Context, key entitlement.Key) (*entitlement.Entitlement, error) {
	idx := s.idx.Load()
	var e *entitlement.Entitlement
	switch key.Kind {
	case entitlement.BySubject:
		e = idx.bySubject[key.ID]
	case entitlement.ByAPIKey:
		e = idx.byKey[key.ID]
	}
	if e == nil {
		return nil, entitlement.ErrNotFound
	}
	return e, nil
}

// Len is the number of subjects loaded.
func (s *Source) Len() int { return len(s.idx.Load().bySubject) }

// Reload reads the file again. On any error the previous data stays in force
// and the error, which names file, line and field, is returned.
func (s *Source) Reload() error { return s.idx.Reload() }

// Watch reloads the file whenever it changes, until ctx ends.
func (s *Source) Watch(ctx context.Context, every time.Duration) { s.idx.Watch(ctx, every) }

func (s *Source) load() (*index, error) {
	data, err := os.ReadFile(s.path)
	if err != nil {
		return nil, fmt.Errorf("entitlements: %w", err)
	}
	return parse(s.path, data, s.opts.Check)
}

// parse decodes and validates an entitlements document. name is used in errors.
func parse(name string, data []byte, check func(*entitlement.Entitlement) (string, error)) (*index, error) {
	// An empty file is far more likely a write caught half way, or a botched
	// deploy, than a wish to lock every customer out: Decode refuses it.
	// ("subjects: []" says "no subjects" on purpose.)
	var doc Document
	yd, err := yamlpos.Decode(name, data, &doc, `write "subjects: []" for no subjects`)
	if err != nil {
		return nil, err
	}
	fail := yd.Errorf

	idx := &index{
		bySubject: make(map[string]*entitlement.Entitlement, len(doc.Subjects)),
		byKey:     make(map[string]*entitlement.Entitlement, len(doc.Subjects)),
	}
	var errs []error
	for i, sub := range doc.Subjects {
		at := fmt.Sprintf("subjects[%d]", i)
		if sub.ID == "" {
			errs = append(errs, fail(at+".id", "is required"))
			continue
		}
		if _, dup := idx.bySubject[sub.ID]; dup {
			errs = append(errs, fail(at+".id", "subject %q is listed twice", sub.ID))
			continue
		}
		if sub.Plan == "" {
			errs = append(errs, fail(at+".plan", "is required"))
		}
		st := entitlement.Status(sub.Status)
		if !st.Valid() {
			errs = append(errs, fail(at+".status", "%q is not a subscription status (want one of active, trialing, past_due, unpaid, canceled, incomplete, incomplete_expired, paused)", sub.Status))
		}
		if sub.Credits != nil && *sub.Credits < 0 {
			errs = append(errs, fail(at+".credits", "must not be negative"))
		}
		for q, n := range sub.Quotas {
			if n < 0 {
				errs = append(errs, fail(at+".quotas."+q, "must not be negative"))
			}
		}
		e := &entitlement.Entitlement{
			Subject:      sub.ID,
			Customer:     sub.Customer,
			Plan:         sub.Plan,
			Status:       st,
			Features:     sub.Features,
			Quotas:       sub.Quotas,
			Credits:      sub.Credits,
			PeriodStart:  sub.PeriodStart,
			PeriodEnd:    sub.PeriodEnd,
			PastDueSince: sub.PastDueSince,
		}
		if check != nil && sub.Plan != "" {
			if field, err := check(e); err != nil {
				errs = append(errs, fail(at+"."+field, "%v", err))
			}
		}
		idx.bySubject[sub.ID] = e
		for j, k := range sub.APIKeys {
			kp := fmt.Sprintf("%s.api_key_sha256[%d]", at, j)
			d, ok := entitlement.ParseKeyDigest(k)
			if !ok {
				errs = append(errs, fail(kp, "is not a hex SHA-256 digest (make one with `tollgate hash-key`)"))
				continue
			}
			if other, dup := idx.byKey[d]; dup {
				errs = append(errs, fail(kp, "key is already held by subject %q", other.Subject))
				continue
			}
			idx.byKey[d] = e
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return idx, nil
}
