package watch

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Value is data loaded from files and reloaded when they change. Readers
// get the current value through an atomic pointer and never wait for a
// reload; a reload that fails keeps the last good value.
type Value[T any] struct {
	cur      atomic.Pointer[T]
	mu       sync.Mutex // serialises reloads
	paths    []string
	load     func() (*T, error)
	onReload func(error)
}

// NewValue loads once with load; this first load must succeed, since there
// is no last good value yet. onReload (may be nil) is told the outcome of
// every later reload. paths are the files Watch polls.
func NewValue[T any](load func() (*T, error), onReload func(error), paths ...string) (*Value[T], error) {
	v := &Value[T]{paths: paths, load: load, onReload: onReload}
	t, err := load()
	if err != nil {
		return nil, err
	}
	v.cur.Store(t)
	return v, nil
}

// Load returns the current value.
func (v *Value[T]) Load() *T { return v.cur.Load() }

// Store replaces the value, for data that arrives other than from the files.
func (v *Value[T]) Store(t *T) {
	v.mu.Lock()
	v.cur.Store(t)
	v.mu.Unlock()
}

// Reload loads again. On error the current value stays, and the error is
// returned and reported.
func (v *Value[T]) Reload() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	t, err := v.load()
	if err == nil {
		v.cur.Store(t)
	}
	if v.onReload != nil {
		v.onReload(err)
	}
	return err
}

// Watch reloads whenever one of the files changes, until ctx ends.
func (v *Value[T]) Watch(ctx context.Context, every time.Duration) {
	var wg sync.WaitGroup
	for _, p := range v.paths {
		if p == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			File(ctx, p, every, func() { _ = v.Reload() })
		}()
	}
	wg.Wait()
}
