package watch

import (
	"context"
	"fmt"
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
	v.apply(t, err)
	return err
}

// apply keeps t if it loaded, and reports the outcome.
func (v *Value[T]) apply(t *T, err error) {
	if err == nil {
		v.cur.Store(t)
	}
	if v.onReload != nil {
		v.onReload(err)
	}
}

// reloadSettled is Reload for a file that has just settled. A load that
// overlaps a new write (a file's stamp differs after it from before it) may
// have read the file half written: it is dropped, and the watch reloads
// once the new write settles.
func (v *Value[T]) reloadSettled() {
	v.mu.Lock()
	defer v.mu.Unlock()
	before := v.stamps()
	t, err := v.load()
	if v.stamps() == before {
		v.apply(t, err)
	}
}

// stamps are the files' stamps, as one comparable string.
func (v *Value[T]) stamps() string { return stampsOf(v.paths) }

func stampsOf(paths []string) string {
	var b []byte
	for _, p := range paths {
		st := statOf(p)
		b = fmt.Appendf(b, "%d/%d/%v;", st.mod.UnixNano(), st.size, st.ok)
	}
	return string(b)
}

// Unchanged notes the files' stamps now and returns a function that reports
// whether they are still the same. A caller that loads a file itself (not
// through Value) calls it after the load: false means a write overlapped
// the load, which may have read the file half written, so the load is to be
// dropped; File reports the new write once it settles.
func Unchanged(paths ...string) func() bool {
	before := stampsOf(paths)
	return func() bool { return stampsOf(paths) == before }
}

// Watch reloads whenever one of the files changes and settles (see File),
// until ctx ends.
func (v *Value[T]) Watch(ctx context.Context, every time.Duration) {
	var wg sync.WaitGroup
	for _, p := range v.paths {
		if p == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			File(ctx, p, every, v.reloadSettled)
		}()
	}
	wg.Wait()
}
