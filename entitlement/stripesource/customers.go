package stripesource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/internal/watch"
	"github.com/tollgate-authz/tollgate/internal/yamlpos"
)

// Customer ties one subject, and the API keys that identify it, to the
// Stripe customer that pays for it. Several subjects (a customer's apps, say)
// may share one Stripe customer; a subject has exactly one.
type Customer struct {
	// Subject is tollgate's id for the caller (what a JWT claim or an mTLS
	// principal names, and what goes upstream in x-tollgate-subject).
	Subject string `yaml:"subject"`
	// ID is the Stripe customer id, cus_….
	ID string `yaml:"customer"`
	// APIKeys are lower-case hex SHA-256 digests of the subject's API keys
	// (make one with `tollgate hash-key`); a "sha256:" prefix is accepted.
	APIKeys []string `yaml:"api_key_sha256"`
}

// mapDocument is the credential map file's shape.
type mapDocument struct {
	Customers []Customer `yaml:"customers"`
}

// mapIndex is immutable once built; a reload swaps in a new one.
type mapIndex struct {
	bySubject  map[string]*Customer
	byDigest   map[string]*Customer
	byCustomer map[string][]*Customer
}

// MapOptions tune a Map read from a file.
type MapOptions struct {
	// OnReload is told the outcome of every reload after the first load.
	// A changed map can move a key to another subject: purge the cache on success.
	OnReload func(err error)
}

// Map is the credential map: subject → Stripe customer, API-key digest →
// subject, and back from customer to subjects for webhook invalidation.
// Lookups read an immutable index through an atomic pointer: a reload never
// blocks them. All methods are safe for concurrent use.
type Map struct {
	path string
	opts MapOptions
	idx  *watch.Value[mapIndex]
}

// NewMap builds a map from records held in memory, for example read from
// the team's own user database. Replace swaps in new records later.
func NewMap(customers []Customer) (*Map, error) {
	idx, err := buildIndex(yamlpos.Named("customers"), customers)
	if err != nil {
		return nil, err
	}
	v, _ := watch.NewValue(func() (*mapIndex, error) { return idx, nil }, nil)
	return &Map{idx: v}, nil
}

// OpenMap reads a credential map file (YAML, or JSON, which is YAML):
//
//	customers:
//	  - subject: acme
//	    customer: cus_NffrFeUfNV2Hib
//	    api_key_sha256: [5c4ab0a5…]
//
// The first load must succeed; later reloads that fail keep the last good map.
func OpenMap(path string, opts MapOptions) (*Map, error) {
	m := &Map{path: path, opts: opts}
	idx, err := watch.NewValue(m.load, opts.OnReload, path)
	if err != nil {
		return nil, err
	}
	m.idx = idx
	return m, nil
}

// Replace swaps in a new set of records. On error the old map stays in force.
func (m *Map) Replace(customers []Customer) error {
	idx, err := buildIndex(yamlpos.Named("customers"), customers)
	if err != nil {
		return err
	}
	m.idx.Store(idx)
	return nil
}

// Reload reads the file again. On any error the previous map stays in force
// and the error names the file, line and field.
func (m *Map) Reload() error {
	if m.path == "" {
		return errors.New("stripe customer map: not read from a file")
	}
	return m.idx.Reload()
}

// Watch reloads the file whenever it changes, until ctx ends.
func (m *Map) Watch(ctx context.Context, every time.Duration) {
	if m.path != "" {
		m.idx.Watch(ctx, every)
	}
}

// Resolve finds the subject and Stripe customer a key names.
func (m *Map) Resolve(key entitlement.Key) (Customer, bool) {
	idx := m.idx.Load()
	var c *Customer
	switch key.Kind {
	case entitlement.BySubject:
		c = idx.bySubject[key.ID]
	case entitlement.ByAPIKey:
		c = idx.byDigest[key.ID]
	}
	if c == nil {
		return Customer{}, false
	}
	return *c, true
}

// Subjects lists the subjects paid for by a Stripe customer, in map order.
func (m *Map) Subjects(customerID string) []string {
	cs := m.idx.Load().byCustomer[customerID]
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Subject)
	}
	return out
}

// Keys lists every cache key that can hold a record paid for by a Stripe
// customer: each subject's BySubject key and each of its API-key digests.
// Invalidating them all drops the customer's cached entitlements.
func (m *Map) Keys(customerID string) []entitlement.Key {
	var keys []entitlement.Key
	for _, c := range m.idx.Load().byCustomer[customerID] {
		keys = append(keys, entitlement.Key{Kind: entitlement.BySubject, ID: c.Subject})
		for _, d := range c.APIKeys {
			keys = append(keys, entitlement.Key{Kind: entitlement.ByAPIKey, ID: d})
		}
	}
	return keys
}

// Len is the number of subjects in the map.
func (m *Map) Len() int { return len(m.idx.Load().bySubject) }

func (m *Map) load() (*mapIndex, error) {
	data, err := os.ReadFile(m.path)
	if err != nil {
		return nil, fmt.Errorf("stripe customer map: %w", err)
	}
	return parseMap(m.path, data)
}

// parseMap decodes and validates a credential map file. name is used in errors.
func parseMap(name string, data []byte) (*mapIndex, error) {
	// An empty file is more likely a half-written file than a wish to lock
	// everyone out: Decode refuses it. "customers: []" says so on purpose.
	var doc mapDocument
	yd, err := yamlpos.Decode(name, data, &doc, `write "customers: []" for no customers`)
	if err != nil {
		return nil, err
	}
	return buildIndex(yd, doc.Customers)
}

// buildIndex validates records and indexes them. Errors name the line when
// the records were read from YAML, otherwise only the record's position.
func buildIndex(yd *yamlpos.Doc, customers []Customer) (*mapIndex, error) {
	fail := yd.Errorf
	idx := &mapIndex{
		bySubject:  make(map[string]*Customer, len(customers)),
		byDigest:   make(map[string]*Customer, len(customers)),
		byCustomer: make(map[string][]*Customer, len(customers)),
	}
	var errs []error
	for i := range customers {
		in := customers[i]
		at := fmt.Sprintf("customers[%d]", i)
		if in.Subject == "" {
			errs = append(errs, fail(at+".subject", "is required"))
			continue
		}
		if _, dup := idx.bySubject[in.Subject]; dup {
			errs = append(errs, fail(at+".subject", "subject %q is listed twice", in.Subject))
			continue
		}
		if !strings.HasPrefix(in.ID, "cus_") || strings.ContainsAny(in.ID, " \t\r\n/?&#") {
			errs = append(errs, fail(at+".customer", "%q is not a Stripe customer id (cus_…)", in.ID))
			continue
		}
		c := &Customer{Subject: in.Subject, ID: in.ID, APIKeys: make([]string, 0, len(in.APIKeys))}
		for j, k := range in.APIKeys {
			kp := fmt.Sprintf("%s.api_key_sha256[%d]", at, j)
			d, ok := entitlement.ParseKeyDigest(k)
			if !ok {
				errs = append(errs, fail(kp, "is not a hex SHA-256 digest (make one with `tollgate hash-key`)"))
				continue
			}
			if other, dup := idx.byDigest[d]; dup {
				errs = append(errs, fail(kp, "key is already held by subject %q", other.Subject))
				continue
			}
			idx.byDigest[d] = c
			c.APIKeys = append(c.APIKeys, d)
		}
		idx.bySubject[c.Subject] = c
		idx.byCustomer[c.ID] = append(idx.byCustomer[c.ID], c)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return idx, nil
}

// learned remembers customers found by metadata search, so that a webhook
// for them can still be mapped back to their subject. It is bounded: when
// full it starts over, which at worst leaves a record to expire by TTL.
type learned struct {
	mu  sync.Mutex
	max int
	m   map[string][]string // customer id → subjects
}

func (l *learned) add(customerID, subject string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil || len(l.m) >= l.max {
		l.m = make(map[string][]string)
	}
	if !slices.Contains(l.m[customerID], subject) {
		l.m[customerID] = append(l.m[customerID], subject)
	}
}

func (l *learned) subjects(customerID string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.m[customerID])
}
