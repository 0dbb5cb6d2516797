package stripesource

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testKey = "sk_test_51FakeSecretKeyNeverLogged0123456789"

// fakeItem is one subscription item: a price, maybe a per-item period.
type fakeItem struct {
	LookupKey  string
	PriceMeta  map[string]string
	Product    string
	Start, End int64
}

// fakeSub is one subscription. Start/End, when set, are written on the
// subscription as API versions before 2025-03-31.basil do.
type fakeSub struct {
	ID         string
	Status     string
	Created    int64
	Start, End int64
	Items      []fakeItem
}

// fakeCustomer is what the fake knows about one customer.
type fakeCustomer struct {
	Subs     []fakeSub
	Features []string
	Metadata map[string]string
}

// fakeFailure is a canned error answer for a path.
type fakeFailure struct {
	status int
	typ    string
	code   string
	param  string
	msg    string
}

// fakeStripe is a stateful stand-in for the Stripe endpoints the source
// calls. Tests change its state between lookups.
type fakeStripe struct {
	srv *httptest.Server

	mu        sync.Mutex
	customers map[string]*fakeCustomer
	products  map[string]map[string]string // product id → metadata
	fail      map[string]fakeFailure       // path → answer
	delay     time.Duration
	hold      chan struct{} // when not nil, calls wait for it to close (or their client to go)
	pageLimit int           // when > 0, caps every list page
	calls     map[string]int
	versions  []string // Stripe-Version of each authorised call

	inFlight, maxInFlight atomic.Int64
}

func newFake(t *testing.T) *fakeStripe {
	t.Helper()
	f := &fakeStripe{
		customers: map[string]*fakeCustomer{},
		products:  map[string]map[string]string{},
		fail:      map[string]fakeFailure{},
		calls:     map[string]int{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// set creates or changes a customer under the lock.
func (f *fakeStripe) set(id string, change func(c *fakeCustomer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.customers[id]
	if c == nil {
		c = &fakeCustomer{}
		f.customers[id] = c
	}
	change(c)
}

func (f *fakeStripe) setFail(path string, ff fakeFailure) {
	f.mu.Lock()
	f.fail[path] = ff
	f.mu.Unlock()
}

func (f *fakeStripe) setDelay(d time.Duration) {
	f.mu.Lock()
	f.delay = d
	f.mu.Unlock()
}

// stall makes every call wait until release is called or its client gives
// up, and release is called at the end of the test in any case.
func (f *fakeStripe) stall(t *testing.T) (release func()) {
	hold := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release)
	f.mu.Lock()
	f.hold = hold
	f.mu.Unlock()
	return release
}

func (f *fakeStripe) callCount(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[path]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func stripeError(w http.ResponseWriter, ff fakeFailure) {
	e := map[string]any{"type": ff.typ, "message": ff.msg}
	if ff.code != "" {
		e["code"] = ff.code
	}
	if ff.param != "" {
		e["param"] = ff.param
	}
	writeJSON(w, ff.status, map[string]any{"error": e})
}

func (f *fakeStripe) serve(w http.ResponseWriter, r *http.Request) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxInFlight.Load()
		if n <= m || f.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}

	if r.Header.Get("Authorization") != "Bearer "+testKey {
		// Stripe masks most of a refused key; the fake echoes all of it
		// to prove the source scrubs it.
		stripeError(w, fakeFailure{status: 401, typ: "invalid_request_error",
			msg: "Invalid API Key provided: " + strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")})
		return
	}
	if r.Method != http.MethodGet || r.Header.Get("Stripe-Version") == "" {
		stripeError(w, fakeFailure{status: 400, typ: "invalid_request_error", msg: "bad request"})
		return
	}

	f.mu.Lock()
	f.calls[r.URL.Path]++
	f.versions = append(f.versions, r.Header.Get("Stripe-Version"))
	ff, failing := f.fail[r.URL.Path]
	delay, hold := f.delay, f.hold
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if failing {
		stripeError(w, ff)
		return
	}

	q := r.URL.Query()
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == "/v1/subscriptions":
		c, ok := f.customerFor(w, q.Get("customer"))
		if !ok {
			return
		}
		if q.Get("status") != "all" {
			stripeError(w, fakeFailure{status: 400, typ: "invalid_request_error", msg: "want status=all"})
			return
		}
		subs := slices.Clone(c.Subs)
		slices.SortFunc(subs, func(a, b fakeSub) int { return cmp.Compare(b.Created, a.Created) })
		objs := make([]map[string]any, 0, len(subs))
		for _, s := range subs {
			objs = append(objs, subscriptionJSON(q.Get("customer"), s))
		}
		f.page(w, r, objs)
	case r.URL.Path == "/v1/entitlements/active_entitlements":
		c, ok := f.customerFor(w, q.Get("customer"))
		if !ok {
			return
		}
		objs := make([]map[string]any, 0, len(c.Features))
		for i, lk := range c.Features {
			objs = append(objs, map[string]any{
				"id": fmt.Sprintf("ent_test_%d", i), "object": "entitlements.active_entitlement",
				"feature": "feat_test_" + lk, "livemode": false, "lookup_key": lk,
			})
		}
		f.page(w, r, objs)
	case strings.HasPrefix(r.URL.Path, "/v1/products/"):
		id := strings.TrimPrefix(r.URL.Path, "/v1/products/")
		md, ok := f.products[id]
		if !ok {
			stripeError(w, fakeFailure{status: 404, typ: "invalid_request_error", code: "resource_missing", param: "id", msg: "No such product: '" + id + "'"})
			return
		}
		writeJSON(w, 200, map[string]any{"id": id, "object": "product", "metadata": md})
	case r.URL.Path == "/v1/customers/search":
		m := searchRe.FindStringSubmatch(q.Get("query"))
		if m == nil {
			stripeError(w, fakeFailure{status: 400, typ: "invalid_request_error", msg: "bad query"})
			return
		}
		var data []map[string]any
		for _, id := range slices.Sorted(maps.Keys(f.customers)) {
			if md := f.customers[id].Metadata; md != nil && md[m[1]] == m[2] {
				data = append(data, map[string]any{"id": id, "object": "customer", "metadata": md})
			}
		}
		writeJSON(w, 200, map[string]any{"object": "search_result", "data": data, "has_more": false, "url": "/v1/customers/search"})
	default:
		stripeError(w, fakeFailure{status: 404, typ: "invalid_request_error", msg: "Unrecognized request URL"})
	}
}

var searchRe = regexp.MustCompile(`^metadata\['([^']+)'\]:'([^']*)'$`)

// customerFor answers Stripe's "No such customer" when id is unknown.
func (f *fakeStripe) customerFor(w http.ResponseWriter, id string) (*fakeCustomer, bool) {
	c, ok := f.customers[id]
	if !ok {
		stripeError(w, fakeFailure{status: 404, typ: "invalid_request_error", code: "resource_missing", param: "customer", msg: "No such customer: '" + id + "'"})
	}
	return c, ok
}

// page writes one page of a Stripe list, honouring limit and starting_after.
func (f *fakeStripe) page(w http.ResponseWriter, r *http.Request, objs []map[string]any) {
	q := r.URL.Query()
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 || limit > 100 {
		limit = 10
	}
	if f.pageLimit > 0 && limit > f.pageLimit {
		limit = f.pageLimit
	}
	if after := q.Get("starting_after"); after != "" {
		i := slices.IndexFunc(objs, func(o map[string]any) bool { return o["id"] == after })
		if i < 0 {
			stripeError(w, fakeFailure{status: 400, typ: "invalid_request_error", code: "resource_missing", param: "starting_after", msg: "no such object"})
			return
		}
		objs = objs[i+1:]
	}
	more := len(objs) > limit
	if more {
		objs = objs[:limit]
	}
	writeJSON(w, 200, map[string]any{"object": "list", "data": objs, "has_more": more, "url": r.URL.Path})
}

func subscriptionJSON(customer string, s fakeSub) map[string]any {
	items := make([]map[string]any, 0, len(s.Items))
	for i, it := range s.Items {
		var lk any
		if it.LookupKey != "" {
			lk = it.LookupKey
		}
		md := it.PriceMeta
		if md == nil {
			md = map[string]string{}
		}
		prod := cmp.Or(it.Product, "prod_"+s.ID)
		item := map[string]any{
			"id": fmt.Sprintf("si_%s_%d", s.ID, i), "object": "subscription_item",
			"price": map[string]any{"id": fmt.Sprintf("price_%s_%d", s.ID, i), "object": "price", "lookup_key": lk, "metadata": md, "product": prod},
		}
		if it.Start != 0 || it.End != 0 {
			item["current_period_start"], item["current_period_end"] = it.Start, it.End
		}
		items = append(items, item)
	}
	obj := map[string]any{
		"id": s.ID, "object": "subscription", "customer": customer, "status": s.Status, "created": s.Created,
		"items": map[string]any{"object": "list", "data": items, "has_more": false},
	}
	if s.Start != 0 || s.End != 0 {
		obj["current_period_start"], obj["current_period_end"] = s.Start, s.End
	}
	return obj
}
