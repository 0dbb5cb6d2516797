package stripesource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// The subset of Stripe's API objects the source reads.

type list[T any] struct {
	Object  string `json:"object"`
	Data    []T    `json:"data"`
	HasMore bool   `json:"has_more"`
}

type subscription struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Created int64  `json:"created"`
	// Up to API version 2025-02-24.acacia the period is on the subscription;
	// from 2025-03-31.basil it is on each item.
	CurrentPeriodStart int64                  `json:"current_period_start"`
	CurrentPeriodEnd   int64                  `json:"current_period_end"`
	Items              list[subscriptionItem] `json:"items"`
}

type subscriptionItem struct {
	ID                 string `json:"id"`
	Price              price  `json:"price"`
	CurrentPeriodStart int64  `json:"current_period_start"`
	CurrentPeriodEnd   int64  `json:"current_period_end"`
}

type price struct {
	ID        string            `json:"id"`
	LookupKey string            `json:"lookup_key"`
	Metadata  map[string]string `json:"metadata"`
	Product   product           `json:"product"`
}

// product is expandable: an id string, or the object when expanded.
type product struct {
	ID       string            `json:"id"`
	Metadata map[string]string `json:"metadata"`
	expanded bool
}

func (p *product) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &p.ID)
	}
	if string(b) == "null" {
		return nil
	}
	type plain product
	var v plain
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*p = product(v)
	p.expanded = true
	return nil
}

type activeEntitlement struct {
	ID        string `json:"id"`
	LookupKey string `json:"lookup_key"`
}

type customerObject struct {
	ID       string            `json:"id"`
	Deleted  bool              `json:"deleted"`
	Metadata map[string]string `json:"metadata"`
}

// apiError is a non-2xx answer from Stripe. Its message, type and code have
// been scrubbed of anything that looks like a secret key.
type apiError struct {
	method, path string
	status       int
	typ, code    string
	param        string
	message      string
}

func (e *apiError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "stripe: %s %s: status %d", e.method, e.path, e.status)
	switch e.status {
	case http.StatusUnauthorized, http.StatusForbidden:
		b.WriteString(" (the secret key was refused or lacks a permission)")
	case http.StatusTooManyRequests:
		b.WriteString(" (rate limited)")
	}
	if e.typ != "" {
		b.WriteString(" " + e.typ)
	}
	if e.code != "" {
		b.WriteString(" " + e.code)
	}
	if e.message != "" {
		b.WriteString(": " + e.message)
	}
	return b.String()
}

// missingCustomer says whether Stripe answered "no such customer": a 404,
// or a 400 resource_missing about the customer parameter of a list call.
func (e *apiError) missingCustomer() bool {
	return e.status == http.StatusNotFound ||
		e.status == http.StatusBadRequest && e.code == "resource_missing" && (e.param == "" || e.param == "customer")
}

// Stripe echoes part of a refused key in its message ("sk_test_****abcd");
// any key-shaped token is dropped before a message reaches an error.
var keyLike = regexp.MustCompile(`\b(sk|rk|pk|whsec)_[A-Za-z0-9_*]+`)

func (c *client) scrub(msg string) string {
	if c.key != "" {
		msg = strings.ReplaceAll(msg, c.key, "[redacted]")
	}
	msg = keyLike.ReplaceAllString(msg, "[redacted]")
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return msg
}

// word is what Stripe's error type and code are: snake_case identifiers.
var word = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

// scrubWord is an error type or code fit to print: an identifier that is
// not key-shaped, else "[redacted]". They come from whoever answers at the
// API base, so they are scrubbed as the message is.
func (c *client) scrubWord(s string) string {
	if s == "" || word.MatchString(s) && c.scrub(s) == s {
		return s
	}
	return "[redacted]"
}

// maxResponse bounds what is read from one Stripe answer.
const maxResponse = 4 << 20

// client speaks to Stripe's REST API with a secret key.
type client struct {
	base    string // without a trailing slash
	key     string
	version string
	http    *http.Client
	slots   chan struct{} // bounds the calls in flight
}

var errBusy = errors.New("stripe: too many calls in flight")

// get fetches path?query into out.
func (c *client) get(ctx context.Context, path string, query url.Values, out any) error {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w (%v)", errBusy, ctx.Err())
	}
	defer func() { <-c.slots }()

	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("stripe: GET %s: %v", path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Stripe-Version", c.version)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "tollgate")
	resp, err := c.http.Do(req)
	if err != nil {
		// url.Error repeats the URL; the cause alone is the useful part.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("stripe: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("stripe: GET %s: reading the answer: %w", path, err)
	}
	if len(body) > maxResponse {
		return fmt.Errorf("stripe: GET %s: answer larger than %d bytes", path, maxResponse)
	}
	if resp.StatusCode/100 != 2 {
		e := &apiError{method: http.MethodGet, path: path, status: resp.StatusCode}
		var env struct {
			Error struct {
				Type    string `json:"type"`
				Code    string `json:"code"`
				Param   string `json:"param"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(body, &env) == nil {
			e.typ, e.code = c.scrubWord(env.Error.Type), c.scrubWord(env.Error.Code)
			e.param = env.Error.Param // never printed: read by missingCustomer
			e.message = c.scrub(env.Error.Message)
		}
		return e
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("stripe: GET %s: decoding the answer: %v", path, err)
	}
	return nil
}
