package stripesource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
)

// Defaults for Options.
const (
	DefaultAPIBase         = "https://api.stripe.com"
	DefaultAPIVersion      = "2025-03-31.basil"
	DefaultTimeout         = 150 * time.Millisecond
	DefaultMaxInFlight     = 16
	DefaultPlanMetadataKey = "tollgate_plan"
)

// Page sizes and caps for Stripe list calls.
const (
	subscriptionPage     = 10
	maxSubscriptionPages = 5
	entitlementPage      = 100
	maxEntitlementPages  = 10
)

// Options configure a Source. Zero values take the defaults.
type Options struct {
	// SecretKey is a Stripe secret key (sk_…) or, better, a restricted key
	// (rk_…) with read access to Customers, Subscriptions, Products and
	// Entitlements. It is sent only in the Authorization header and never
	// appears in an error.
	SecretKey string
	// Customers maps credentials to Stripe customers. Required unless
	// SubjectMetadataKey is set.
	Customers *Map
	// SubjectMetadataKey, when set (say "tollgate_subject"), lets a subject
	// missing from Customers be found by Stripe customer search on that
	// metadata key. Search is eventually consistent (new customers show up
	// after about a minute) and costs one more call per miss.
	SubjectMetadataKey string
	// APIBase is Stripe's API root; tests point it at a fake. It must be
	// https unless the host is a loopback address.
	APIBase string
	// APIVersion is sent as the Stripe-Version header. Default DefaultAPIVersion.
	APIVersion string
	// Timeout bounds one Lookup, every Stripe call it makes included.
	// Default 150ms; the cache's own (shorter) timeout applies too.
	Timeout time.Duration
	// MaxInFlight bounds concurrent Stripe calls; more wait, until Timeout.
	MaxInFlight int
	// PlanMetadataKey names the price or product metadata key that holds
	// the tollgate plan. Default "tollgate_plan".
	PlanMetadataKey string
	// HTTPClient, when set, carries the calls (its own Timeout is best left 0).
	HTTPClient *http.Client
}

func (o *Options) defaults() {
	if o.APIBase == "" {
		o.APIBase = DefaultAPIBase
	}
	if o.APIVersion == "" {
		o.APIVersion = DefaultAPIVersion
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.PlanMetadataKey == "" {
		o.PlanMetadataKey = DefaultPlanMetadataKey
	}
	if o.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = o.MaxInFlight
		o.HTTPClient = &http.Client{Transport: t}
	}
}

// Source reads entitlements from Stripe: the subscription gives plan, status
// and period, active entitlements give features. All methods are safe for
// concurrent use.
type Source struct {
	opts    Options
	api     *client
	learned learned
}

var _ entitlement.Source = (*Source)(nil)

// New checks opts and returns a Source. It makes no call to Stripe.
func New(opts Options) (*Source, error) {
	opts.defaults()
	switch {
	case opts.SecretKey == "":
		return nil, errors.New("stripe: a secret key is required")
	case strings.ContainsAny(opts.SecretKey, " \t\r\n"):
		return nil, errors.New("stripe: the secret key contains white space")
	case opts.Customers == nil && opts.SubjectMetadataKey == "":
		return nil, errors.New("stripe: a customer map is required (or a subject metadata key to search by)")
	}
	if strings.ContainsAny(opts.SubjectMetadataKey, `'"\ []:`) {
		return nil, fmt.Errorf("stripe: subject metadata key %q must be a plain word", opts.SubjectMetadataKey)
	}
	u, err := url.Parse(opts.APIBase)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("stripe: api base %q is not an http(s) URL", opts.APIBase)
	}
	if u.Scheme == "http" && !loopback(u.Hostname()) {
		return nil, fmt.Errorf("stripe: api base %q must use https: the secret key would travel in clear", opts.APIBase)
	}
	return &Source{
		opts: opts,
		api: &client{
			base:    strings.TrimRight(opts.APIBase, "/"),
			key:     opts.SecretKey,
			version: opts.APIVersion,
			http:    opts.HTTPClient,
			slots:   make(chan struct{}, opts.MaxInFlight),
		},
		learned: learned{max: 10000},
	}, nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Lookup implements entitlement.Source. An unknown credential, or a mapped
// customer that Stripe does not know, is entitlement.ErrNotFound; a known
// customer without any subscription is StatusCanceled with no plan. Stripe
// errors, rate limits and timeouts are errors, so the cache may serve stale.
func (s *Source) Lookup(ctx context.Context, key entitlement.Key) (*entitlement.Entitlement, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	subject, customerID, err := s.resolve(ctx, key)
	if err != nil {
		return nil, err
	}

	// The two lists are independent: ask for both at once.
	type featuresResult struct {
		features []string
		err      error
	}
	fc := make(chan featuresResult, 1)
	go func() {
		f, err := s.features(ctx, customerID)
		fc <- featuresResult{f, err}
	}()
	sub, subErr := s.subscription(ctx, customerID)
	fr := <-fc

	for _, err := range []error{subErr, fr.err} {
		var ae *apiError
		if errors.As(err, &ae) && ae.missingCustomer() {
			return nil, fmt.Errorf("%w: stripe has no customer %s (subject %q)", entitlement.ErrNotFound, customerID, subject)
		}
	}
	if err := errors.Join(subErr, fr.err); err != nil {
		return nil, err
	}

	e := &entitlement.Entitlement{Subject: subject, Customer: customerID, Status: entitlement.StatusCanceled, Features: fr.features}
	if sub == nil {
		return e, nil
	}
	e.Status = entitlement.Status(sub.Status)
	plan, item := s.planOf(sub)
	if plan == "" && len(sub.Items.Data) > 0 {
		if plan, err = s.productPlan(ctx, sub.Items.Data[0].Price.Product); err != nil {
			return nil, err
		}
	}
	e.Plan = plan
	e.PeriodStart, e.PeriodEnd = periodOf(sub, item)
	return e, nil
}

// Keys lists the cache keys that can hold a record paid for by customerID:
// what the credential map says, plus subjects found by metadata search.
// Invalidate them all when a webhook says the customer changed.
func (s *Source) Keys(customerID string) []entitlement.Key {
	var keys []entitlement.Key
	if s.opts.Customers != nil {
		keys = s.opts.Customers.Keys(customerID)
	}
	for _, sub := range s.learned.subjects(customerID) {
		k := entitlement.Key{Kind: entitlement.BySubject, ID: sub}
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// Subjects lists the subjects paid for by customerID (see Keys).
func (s *Source) Subjects(customerID string) []string {
	var subs []string
	if s.opts.Customers != nil {
		subs = s.opts.Customers.Subjects(customerID)
	}
	for _, sub := range s.learned.subjects(customerID) {
		if !slices.Contains(subs, sub) {
			subs = append(subs, sub)
		}
	}
	return subs
}

// resolve maps a key to (subject, customer id).
func (s *Source) resolve(ctx context.Context, key entitlement.Key) (string, string, error) {
	if s.opts.Customers != nil {
		if c, ok := s.opts.Customers.Resolve(key); ok {
			return c.Subject, c.ID, nil
		}
	}
	if key.Kind != entitlement.BySubject || s.opts.SubjectMetadataKey == "" {
		return "", "", entitlement.ErrNotFound
	}
	id, err := s.searchCustomer(ctx, key.ID)
	if err != nil {
		return "", "", err
	}
	s.learned.add(id, key.ID)
	return key.ID, id, nil
}

// searchCustomer finds the customer whose metadata names subject.
func (s *Source) searchCustomer(ctx context.Context, subject string) (string, error) {
	// Stripe's search language quotes with ' and escapes with \; a subject
	// that needs either is not one we mint, so it cannot match.
	if subject == "" || strings.ContainsAny(subject, `'\`) {
		return "", entitlement.ErrNotFound
	}
	q := url.Values{
		"query": {fmt.Sprintf("metadata['%s']:'%s'", s.opts.SubjectMetadataKey, subject)},
		"limit": {"2"},
	}
	var res list[customerObject]
	if err := s.api.get(ctx, "/v1/customers/search", q, &res); err != nil {
		return "", err
	}
	var ids []string
	for _, c := range res.Data {
		if !c.Deleted && c.Metadata[s.opts.SubjectMetadataKey] == subject {
			ids = append(ids, c.ID)
		}
	}
	switch len(ids) {
	case 0:
		return "", entitlement.ErrNotFound
	case 1:
		return ids[0], nil
	}
	// Two customers claim one subject: granting either could be wrong.
	return "", fmt.Errorf("stripe: more than one customer has metadata %s=%q", s.opts.SubjectMetadataKey, subject)
}

// rank orders subscription states: the one that best describes what the
// customer can use comes first.
func rank(status string) int {
	switch entitlement.Status(status) {
	case entitlement.StatusActive, entitlement.StatusTrialing:
		return 0
	case entitlement.StatusPastDue:
		return 1
	case entitlement.StatusUnpaid:
		return 2
	case entitlement.StatusPaused:
		return 3
	case entitlement.StatusIncomplete:
		return 4
	}
	return 5 // canceled, incomplete_expired, and anything newer
}

// pick chooses the most relevant subscription: the best state, then the
// most recently created, then the id for a stable answer.
func pick(subs []subscription) *subscription {
	if len(subs) == 0 {
		return nil
	}
	best := slices.MinFunc(subs, func(a, b subscription) int {
		return cmp.Or(
			cmp.Compare(rank(a.Status), rank(b.Status)),
			cmp.Compare(b.Created, a.Created),
			strings.Compare(a.ID, b.ID),
		)
	})
	return &best
}

// subscription lists the customer's subscriptions (every state, newest
// first) and picks one; nil when there is none.
func (s *Source) subscription(ctx context.Context, customerID string) (*subscription, error) {
	var all []subscription
	q := url.Values{"customer": {customerID}, "status": {"all"}, "limit": {strconv.Itoa(subscriptionPage)}}
	for page := 0; page < maxSubscriptionPages; page++ {
		var res list[subscription]
		if err := s.api.get(ctx, "/v1/subscriptions", q, &res); err != nil {
			return nil, err
		}
		all = append(all, res.Data...)
		if !res.HasMore || len(res.Data) == 0 {
			break
		}
		// An active or trialing subscription cannot be beaten by an older one.
		if slices.ContainsFunc(res.Data, func(s subscription) bool { return rank(s.Status) == 0 }) {
			break
		}
		q.Set("starting_after", res.Data[len(res.Data)-1].ID)
	}
	return pick(all), nil
}

// features lists the lookup keys of the customer's active entitlements.
func (s *Source) features(ctx context.Context, customerID string) ([]string, error) {
	var out []string
	q := url.Values{"customer": {customerID}, "limit": {strconv.Itoa(entitlementPage)}}
	for page := 0; ; page++ {
		if page == maxEntitlementPages {
			// A truncated list would deny features the customer paid for.
			return nil, fmt.Errorf("stripe: customer %s has more than %d active entitlements", customerID, maxEntitlementPages*entitlementPage)
		}
		var res list[activeEntitlement]
		if err := s.api.get(ctx, "/v1/entitlements/active_entitlements", q, &res); err != nil {
			return nil, err
		}
		for _, a := range res.Data {
			if a.LookupKey != "" && !slices.Contains(out, a.LookupKey) {
				out = append(out, a.LookupKey)
			}
		}
		if !res.HasMore || len(res.Data) == 0 {
			return out, nil
		}
		q.Set("starting_after", res.Data[len(res.Data)-1].ID)
	}
}

// planOf reads the plan from the subscription's items, in order: the first
// item whose price has PlanMetadataKey in its metadata, else a lookup_key,
// wins. It returns the item that named the plan (or the first item).
func (s *Source) planOf(sub *subscription) (string, *subscriptionItem) {
	items := sub.Items.Data
	if len(items) == 0 {
		return "", nil
	}
	for i := range items {
		p := &items[i].Price
		if v := p.Metadata[s.opts.PlanMetadataKey]; v != "" {
			return v, &items[i]
		}
		if p.LookupKey != "" {
			return p.LookupKey, &items[i]
		}
		if p.Product.expanded && p.Product.Metadata[s.opts.PlanMetadataKey] != "" {
			return p.Product.Metadata[s.opts.PlanMetadataKey], &items[i]
		}
	}
	return "", &items[0]
}

// productPlan reads the plan from the product's metadata: the last resort,
// one more call, made only when no price names a plan.
func (s *Source) productPlan(ctx context.Context, p product) (string, error) {
	if p.ID == "" || strings.ContainsAny(p.ID, "/?#") {
		return "", nil
	}
	if !p.expanded {
		if err := s.api.get(ctx, "/v1/products/"+url.PathEscape(p.ID), nil, &p); err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.status == http.StatusNotFound {
				return "", nil // a deleted product names no plan
			}
			return "", err
		}
	}
	return p.Metadata[s.opts.PlanMetadataKey], nil
}

// periodOf reads the billing period from the subscription (API versions up
// to 2025-02-24.acacia) or else from the plan's item (2025-03-31.basil on).
func periodOf(sub *subscription, item *subscriptionItem) (time.Time, time.Time) {
	start, end := sub.CurrentPeriodStart, sub.CurrentPeriodEnd
	if start == 0 && end == 0 && item != nil {
		start, end = item.CurrentPeriodStart, item.CurrentPeriodEnd
	}
	return unix(start), unix(end)
}

func unix(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}
